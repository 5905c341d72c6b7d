"""Host-written text on the operator's terminal: `clean` and the rich cells built on it."""

from __future__ import annotations

import time

import pytest

from mqfleet.cli.render import fleet
from mqfleet.cli.render.terminal import clean
from mqfleet.fleet_picture import HostPicture
from mqfleet.wire.replies import Worker


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x1b[31mred\x1b[0m", "red"),
        ("\x1b]0;title\x07after", "after"),
        ("\x1b]52;c;ZXZpbA==\x1b\\after", "after"),
        ("\x9b2Jafter", "after"),
        ("bell\x07 nul\x00 del\x7f c1\x85", "bell nul del c1"),
        ("rtl\u202eevil", "rtlevil"),
        ("tab\there", "tab here"),
        ("two\nlines", "two lines"),
        ("[bold]markup[/]", "[bold]markup[/]"),
    ],
)
def test_clean_removes_escape_sequences_and_control_characters_and_keeps_the_text(text: str, shown: str) -> None:
    assert clean(text) == shown


def test_clean_keeps_newlines_when_asked() -> None:
    assert clean("a\n\x1b[2Jb", newlines=True) == "a\nb"


def _rendered(renderable: object) -> str:
    console = fleet.make_console(record=True, width=200)
    console.print(renderable)
    return console.export_text()


def test_a_workers_table_of_hostile_adverts_renders_without_markup_errors_or_escapes() -> None:
    workers = [Worker(id="h", online=True, draining=False, slots=1, slots_used=0, last_seen_ts=time.time(),
                      advert={"os": "\x1b[2J[bold", "cpu_cores": "[/]", "ram_gib": "lots", "torch": "[red]x",
                              "gpus": [{"name": "[/", "vram_gib": "24"}, "not a gpu"]},
                      advert_error="latest advert refused")]
    text = _rendered(fleet.workers_table(workers, {}, time.time()))
    assert "\x1b" not in text and "[bold" in text and "lots" in text and "advert refused" in text


def test_the_dashboard_survives_events_and_progress_of_the_wrong_types() -> None:
    frame = fleet.dashboard(
        hosts={"h": HostPicture(state="\x1b[2Jonline", slots="[/")},
        jobs={"j": {"id": "j", "name": "[b]j", "status": "running", "host": "h", "progress": {"progress": "x",
                                                                                           "epoch": "[/"}}},
        events=[{"job_id": "j", "to": "running", "ts": "soon", "reason": "\x1b]0;t\x07r"}],
        now=time.time(),
    )
    text = _rendered(frame)
    assert "\x1b" not in text and "[b]j" in text

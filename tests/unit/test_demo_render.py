"""What `mqfleet demo` prints, rendered at 80 columns: every job name whole (folded, never cut), the tables
within the width, one line per status change where no live table can be drawn, and the agents' environment
without the operator token or the store's keys."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from mqfleet import defaults
from mqfleet.lifecycle import JobStatus
from mqfleet.local import demo
from mqfleet.local.demo import DemoJob, plain_env, progress_table, results_table, status_changes
from mqfleet.manifest.load import load_manifest
from mqfleet.wire.replies import ArtifactRecord
from mqfleet.wire.requests import JobRow

WIDTH = 80


def demo_jobs(status: str = "running") -> list[DemoJob]:
    """The demo manifest's jobs (their real names, sweeps included) as the demo follows them."""
    manifest = load_manifest(demo.DEMO_MANIFEST)
    return [DemoJob(JobRow(id=j.id, name=j.name, status=JobStatus.PENDING if j.require_cuda else JobStatus(status), model=j.model,
                           mode=j.mode, host=None if j.require_cuda else "gbt-only", artifact="ab" * 32,
                           progress={"progress": 0.42}), j.require_cuda)
            for j in manifest.jobs]


def render(renderable: object, *, terminal: bool = False) -> str:
    console = Console(width=WIDTH, file=io.StringIO(), force_terminal=terminal, color_system=None)
    console.print(renderable)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(out, str)
    return out


def job_column(text: str) -> str:
    """The first column's cells, top to bottom, joined: a folded name reads whole again."""
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("job "))
    width = lines[header].index("model/mode")
    return "".join(line[:width].strip() for line in lines[header + 2:])


@pytest.mark.parametrize("table", ["live", "results"])
def test_at_80_columns_every_job_name_is_shown_whole_and_no_line_is_wider(table: str) -> None:
    jobs = demo_jobs("completed" if table == "results" else "running")
    assert max(len(j.row.name) for j in jobs) >= 40  # the sweep's names: half the width
    artifacts = {j.row.id: ArtifactRecord(job_id=j.row.id, key="k", sha256="ab" * 32, size=1,
                                          metrics={"accuracy": 0.9123}) for j in jobs}
    text = render(progress_table(jobs) if table == "live" else results_table(jobs, artifacts))
    assert all(len(line) <= WIDTH for line in text.splitlines()), text
    assert "…" not in text, text
    names = job_column(text)
    position = 0
    for job in jobs:  # in order, each whole
        found = names.find(job.row.name, position)
        assert found >= 0, (job.row.name, text)
        position = found + len(job.row.name)
    if table == "results":
        assert "acc 0.912" in text and "abababab" in text
    else:
        assert "42%" in text


def test_the_results_title_starts_a_line_of_its_own() -> None:
    text = render(results_table(demo_jobs("completed"), {}))
    assert text.splitlines()[0].rstrip() == "mqfleet demo: results"


def test_without_a_terminal_each_change_of_status_is_one_line() -> None:
    said: dict[str, str] = {}
    first = list(status_changes(demo_jobs("running"), said))
    assert len(first) == len(demo_jobs()) and "gbt-random: running on gbt-only" in first
    assert list(status_changes(demo_jobs("running"), said)) == []
    done = list(status_changes(demo_jobs("completed"), said))
    assert done and all(line.endswith("completed on gbt-only") for line in done)
    assert "mlp-gpu: pending" not in done  # unchanged: said once, not again


def test_the_demos_processes_start_without_the_callers_secrets_or_broker() -> None:
    caller = {"PATH": "/usr/bin", "HOME": "/root", defaults.ENV_OPERATOR_TOKEN: "t", defaults.ENV_S3_ACCESS_KEY: "a",
              defaults.ENV_S3_SECRET_KEY: "s", "PGPASSWORD": "p", defaults.ENV_BROKER: "mqtt://elsewhere",
              defaults.ENV_KEY: "/home/me/key.pem"}
    assert plain_env(caller) == {"PATH": "/usr/bin", "HOME": "/root"}

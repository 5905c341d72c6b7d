"""What one sender can make the coordinator hold: remembered replies per client, and the typed advert."""

from __future__ import annotations

import re

import pytest

from mqfleet.agent.capability import detect_advert
from mqfleet.coordinator.sql.postgres import open_state
from mqfleet.errors import BadRequestError
from mqfleet.wire.advert import MAX_TEXT, Advert, parse_advert
from mqfleet.wire.topics import encode

T0 = 1_800_000_000.0


def test_remembered_replies_are_capped_per_client_and_the_oldest_go_first(state_target: str) -> None:
    db = open_state(state_target)
    for i in range(30):
        db.remember_reply(f"agent/h/renew/r{i:03d}", encode({"ok": True, "i": i}), T0 + i, keep=10)
    db.remember_reply("agent/other/renew/x", encode({"ok": True}), T0, keep=10)
    # h's ten newest remain; another client sharing a name prefix ("h" vs "hx") is untouched.
    db.remember_reply("agent/hx/renew/y", encode({"ok": True}), T0, keep=10)
    kept = [i for i in range(30) if db.remembered_reply(f"agent/h/renew/r{i:03d}") is not None]
    assert kept == list(range(20, 30))
    assert db.remembered_reply("agent/other/renew/x") is not None
    assert db.remembered_reply("agent/hx/renew/y") is not None
    db.close()


def test_a_senders_remembered_replies_stay_within_the_slack_across_restarts(state_target: str) -> None:
    # keep 500: pruned back to the newest 500 once a sender passes 510 (keep // 50 of slack); the count
    # lives in memory, so a restarted coordinator reads it from the table again.
    def held() -> int:
        return sum(db.remembered_reply(f"agent/h/renew/r{i:04d}") is not None for i in range(1200))

    db = open_state(state_target)
    for i in range(700):
        db.remember_reply(f"agent/h/renew/r{i:04d}", encode({"ok": True, "i": i}), T0 + i, keep=500)
        db.remember_reply(f"agent/h/renew/r{i:04d}", encode({"ok": True, "again": i}), T0 + i, keep=500)
    assert 500 <= held() <= 510
    assert db.remembered_reply("agent/h/renew/r0699") == {"ok": True, "i": 699}  # the first reply wins
    db.close()
    db = open_state(state_target)
    for i in range(700, 1200):
        db.remember_reply(f"agent/h/renew/r{i:04d}", encode({"ok": True, "i": i}), T0 + i, keep=500)
    assert 500 <= held() <= 510
    assert all(db.remembered_reply(f"agent/h/renew/r{i:04d}") is not None for i in range(700, 1200))
    db.close()


def test_a_real_agents_advert_parses_and_round_trips_to_the_same_json() -> None:
    wire = detect_advert("host-a", slots=2, labels=["fast"]).to_wire()
    advert = parse_advert("host-a", wire)
    assert advert.to_wire() == {**wire, "gpus": wire["gpus"], "labels": ["fast"]}


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("ram_gib", "lots", "ram_gib"),
        ("ram_gib", float("nan"), "ram_gib"),
        ("cpu_cores", "[bold]8", "cpu_cores"),
        ("cpu_cores", True, "cpu_cores"),
        ("slots", 0, "slots"),
        ("cuda", "yes", "cuda"),
        ("gpus", [{"index": 0, "vram_gib": "24"}], "gpus[0].vram_gib"),
        ("gpus", "all of them", "gpus"),
        ("labels", [1, 2], "labels[0]"),
        ("hostname", "x" * (MAX_TEXT + 1), "hostname"),
        ("arch", ["aarch64"], "arch"),
        ("arch", "a" * (MAX_TEXT + 1), "arch"),
        ("os_family", 7, "os_family"),
    ],
)
def test_an_advert_field_of_the_wrong_type_is_refused_naming_the_field(field: str, value: object, named: str) -> None:
    wire = {**detect_advert("host-a").to_wire(), field: value}
    with pytest.raises(BadRequestError, match=re.escape(f"'{named}'")):
        parse_advert("host-a", wire)


def test_the_advert_host_comes_from_the_topic_and_unknown_extras_are_bounded() -> None:
    wire = {**detect_advert("host-a").to_wire(), "host": "host-b", "new_field": "v", "nested": {"a": 1}}
    advert = parse_advert("host-a", wire).to_wire()
    assert advert["host"] == "host-a"
    assert advert["new_field"] == "v" and "nested" not in advert


def test_gpu_entries_keep_free_memory_and_small_unknown_fields() -> None:
    wire = {**detect_advert("host-a").to_wire(), "cuda": True,
            "gpus": [{"index": 0, "name": "A100", "uuid": "GPU-1", "vram_gib": 80.0, "vram_free_gib": 79, "mig": False}]}
    gpu = parse_advert("host-a", wire).to_wire()["gpus"][0]
    assert gpu == {"index": 0, "name": "A100", "uuid": "GPU-1", "vram_gib": 80.0, "vram_free_gib": 79.0, "mig": False}


def test_the_advert_the_agent_builds_is_the_one_the_coordinator_reads_back() -> None:
    advert = detect_advert("host-a", slots=2, labels=["fast"])
    assert Advert.from_wire(advert.to_wire()) == advert
    assert parse_advert("host-b", advert.to_wire()).host == "host-b"
    wire = advert.to_wire()
    del wire["host"]
    with pytest.raises(BadRequestError, match="'host' is missing"):
        Advert.from_wire(wire)

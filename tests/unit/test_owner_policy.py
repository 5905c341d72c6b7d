"""The owner policy's keys, checks and sources: the manifest's `[[hosts]]` keys, the agent's `agent.toml` (refused
whole, each problem at its key), the built-in defaults, and the policy and availability an advert carries
(mqfleet/wire/owner.py, mqfleet/agent/config_file.py, mqfleet/wire/advert.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mqfleet.agent.config_file import read_agent_file
from mqfleet.errors import BadRequestError, ConfigurationError, ManifestError
from mqfleet.manifest.load import parse_manifest
from mqfleet.wire.advert import parse_advert
from mqfleet.wire.owner import Availability, OwnerPolicy, WhenBusy, policy_from_table

ROOT = Path(__file__).resolve().parents[2]
HEAD = '[fleet]\nmax_attempts = 1\n[trainers.ok]\ncommand = ["python", "x.py"]\n[[jobs]]\nmodel = "ok"\n'


def test_the_built_in_defaults_are_gentle_and_fill_only_what_nobody_set() -> None:
    resolved = OwnerPolicy().resolved("Europe/Berlin")
    assert (resolved.on_yield, resolved.nice, resolved.ionice, resolved.timezone) == \
        ("checkpoint", 10, "best-effort:7", "Europe/Berlin")
    assert resolved.hours is None and resolved.when_busy is None and resolved.max_memory_gib is None
    busy = OwnerPolicy(when_busy=WhenBusy(cpu_percent=40)).resolved("UTC").when_busy
    assert busy == WhenBusy(cpu_percent=40, busy_s=30, calm_s=300)


def test_the_agents_keys_win_key_by_key_over_the_manifests_when_busy_included() -> None:
    mine = OwnerPolicy(nice=0, when_busy=WhenBusy(calm_s=60))
    theirs = OwnerPolicy(nice=15, on_yield="finish", when_busy=WhenBusy(cpu_percent=30, calm_s=600))
    merged = mine.over(theirs)
    assert (merged.nice, merged.on_yield) == (0, "finish"), "nice = 0 is a setting, not an absence"
    assert merged.when_busy == WhenBusy(cpu_percent=30, calm_s=60)


def test_a_manifest_hosts_entry_takes_the_owner_keys_and_refuses_bad_ones_at_their_place() -> None:
    good = parse_manifest(HEAD + '[[hosts]]\nid = "lab"\nhours = ["22:00-07:00"]\ntimezone = "Europe/Berlin"\n'
                                 'when_busy = { cpu_percent = 50, calm_s = 120 }\non_yield = "finish"\n'
                                 'max_memory_gib = 8\n', "m.toml")
    owner = good.hosts["lab"].owner
    assert owner == OwnerPolicy(hours=["22:00-07:00"], timezone="Europe/Berlin", on_yield="finish",
                                max_memory_gib=8.0, when_busy=WhenBusy(cpu_percent=50.0, calm_s=120.0))
    with pytest.raises(ManifestError) as caught:
        parse_manifest(HEAD + '[[hosts]]\nid = "lab"\nhours = ["22:00-07:00", "06:00-08:00"]\ntimezone = "Mars/Olympus"\n'
                              'on_yield = "later"\nionice = "loud"\nwhen_busy = { gpu = 3 }\n', "m.toml")
    problems = {p.place: p.message for p in caught.value.problems}
    assert "overlaps hosts[0].hours[0]" in problems["hosts[0].hours[1]"]
    assert "not a time zone" in problems["hosts[0].timezone"]
    assert "not one of checkpoint, finish, kill" in problems["hosts[0].on_yield"]
    assert "best-effort:7" in problems["hosts[0].ionice"]
    assert "unknown key" in problems["hosts[0].when_busy.gpu"]
    with pytest.raises(ManifestError) as caught:
        parse_manifest(HEAD.replace('model = "ok"', 'model = "ok"\nmax_memory_gib = 0'), "m.toml")
    assert [p.place for p in caught.value.problems] == ["jobs[0].max_memory_gib"]


def test_the_jobs_memory_limit_goes_into_its_spec_only_when_set() -> None:
    plain = parse_manifest(HEAD, "m.toml").jobs[0]
    capped = parse_manifest(HEAD.replace('model = "ok"', 'model = "ok"\nmax_memory_gib = 2.5'), "m.toml").jobs[0]
    assert "max_memory_gib" not in plain.to_dict()
    assert capped.to_dict()["max_memory_gib"] == 2.5 and capped.id == plain.id, "a limit, not a different job"


def test_an_agent_toml_is_read_whole_or_refused_with_every_problem(tmp_path: Path) -> None:
    example = read_agent_file(ROOT / "examples" / "agent.toml")
    assert example.policy.hours and example.policy.on_yield == "checkpoint"
    bad = tmp_path / "agent.toml"
    bad.write_text('hours = ["8:00-9:00", "08:30-10:00"]\nnice = -5\nowner_grop = "x"\n[when_busy]\ncpu_percent = 140\n')
    with pytest.raises(ConfigurationError) as caught:
        read_agent_file(bad)
    text = str(caught.value)
    assert "4 problem(s)" in text and "owner_grop: unknown key" in text and "hours[1]" in text
    assert "nice: -5 is out of range" in text and "when_busy.cpu_percent" in text
    bad.write_text("hours = [")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        read_agent_file(bad)


def test_a_policy_that_never_allows_work_is_told_apart() -> None:
    assert OwnerPolicy(hours=[]).never_allows_work() == "hours = [] lists no window, so this host never takes work"
    assert OwnerPolicy(hours=["22:00-07:00"]).never_allows_work() is None
    _, problems = policy_from_table({"when_busy": {"calm_s": 5}})
    assert problems[0].message.startswith("sets neither cpu_percent nor gpu_percent")


def test_an_advert_carries_the_policy_and_availability_and_a_bad_one_is_refused_naming_the_field() -> None:
    advert = parse_advert("lab", {"owner_policy": {"hours": ["22:00-07:00"], "timezone": "Europe/Berlin", "nice": 10},
                                  "availability": {"state": "outside_hours", "reason": "outside hours until 22:00"}})
    assert advert.owner_policy == OwnerPolicy(hours=["22:00-07:00"], timezone="Europe/Berlin", nice=10)
    assert advert.availability == Availability("outside_hours", "outside hours until 22:00")
    wire = advert.to_wire()
    assert wire["owner_policy"] == {"hours": ["22:00-07:00"], "timezone": "Europe/Berlin", "nice": 10}
    assert "owner_policy" not in parse_advert("old", {"cuda": False}).to_wire(), "an older agent's advert keeps its shape"
    for bad, field in (({"owner_policy": {"hours": ["25:00-26:00"]}}, "owner_policy.hours[0]"),
                       ({"owner_policy": {"nice": "low"}}, "owner_policy.nice"),
                       ({"availability": {"state": "x" * 100}}, "availability")):
        with pytest.raises(BadRequestError, match=field.replace("[", r"\[").replace("]", r"\]")):
            parse_advert("lab", bad)
    # a zone this machine does not know is the agent's business: its hours were judged there
    assert OwnerPolicy.from_wire({"timezone": "America/Nuuk"}, "p").timezone == "America/Nuuk"

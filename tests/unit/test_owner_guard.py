"""The agent's owner guard with an injected clock: hours turning the host on and off, the owner's pause (its
end, its mode, kept across a restart), the policy in force from the agent's own settings over the manifest's
defaults, and the hysteresis of `when_busy` (agent/policy.py, agent/busy.py)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from mqfleet.agent.busy import BusyState, Sample
from mqfleet.agent.policy import PAUSE_FILE, OwnerGuard
from mqfleet.wire.owner import Availability, OwnerPolicy, WhenBusy

UTC = dt.timezone.utc
#: Wednesday 2024-05-08 12:00 UTC
NOON = dt.datetime(2024, 5, 8, 12, 0, tzinfo=UTC).timestamp()


@pytest.fixture(autouse=True)
def _host_in_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's own zone, which pauses are told in: the same on every machine that runs this."""
    monkeypatch.setenv("TZ", "UTC")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def guard(tmp_path: Path, own: OwnerPolicy, clock: Clock, changes: list[tuple[Availability, str]]) -> OwnerGuard:
    return OwnerGuard(own, state_dir=tmp_path, fleet_pids=lambda: [], clock=clock,
                      on_change=lambda availability, on_yield: changes.append((availability, on_yield)))


def test_a_host_outside_its_hours_turns_available_at_the_window_and_back_at_its_end(tmp_path: Path) -> None:
    clock, changes = Clock(NOON), list[tuple[Availability, str]]()
    g = guard(tmp_path, OwnerPolicy(hours=["12:30-13:00"], timezone="UTC"), clock, changes)
    assert g.availability.reason == "outside hours until 12:30 (UTC)"
    clock.now = NOON + 29 * 60
    g.look()
    assert changes == [], "nothing changed yet"
    clock.now = NOON + 30 * 60
    assert g.look().is_available
    clock.now = NOON + 60 * 60
    closed = g.look()
    assert closed.state == "outside_hours" and [a.state for a, _ in changes] == ["available", "outside_hours"]
    assert changes[-1][1] == "checkpoint", "the default on_yield"


def test_the_agents_own_policy_wins_and_the_manifests_defaults_fill_what_it_leaves_unset(tmp_path: Path) -> None:
    clock, changes = Clock(NOON), list[tuple[Availability, str]]()
    g = guard(tmp_path, OwnerPolicy(on_yield="kill", nice=5), clock, changes)
    assert (g.policy.on_yield, g.policy.nice, g.policy.ionice) == ("kill", 5, "best-effort:7")
    defaults = OwnerPolicy(on_yield="finish", nice=19, hours=["00:00-01:00"], timezone="UTC", max_memory_gib=4.0)
    assert g.set_defaults(defaults)
    assert (g.policy.on_yield, g.policy.nice, g.policy.hours, g.policy.max_memory_gib) == ("kill", 5, ["00:00-01:00"], 4.0)
    assert g.availability.state == "outside_hours" and changes[-1][1] == "kill"
    assert not g.set_defaults(defaults), "the same defaults again change nothing"
    assert g.set_defaults(None) and g.availability.is_available


def test_a_pause_lasts_until_its_end_and_says_so(tmp_path: Path) -> None:
    clock, changes = Clock(NOON), list[tuple[Availability, str]]()
    g = guard(tmp_path, OwnerPolicy(), clock, changes)
    paused = g.pause(None, 2 * 3600)
    assert (paused.state, paused.reason) == ("paused", "paused by owner until 14:00")
    assert paused.until_ts == NOON + 7200
    clock.now = NOON + 7199
    assert g.look().state == "paused"
    clock.now = NOON + 7200
    assert g.look().is_available
    assert not (tmp_path / PAUSE_FILE).exists(), "an ended pause is forgotten"


@pytest.mark.parametrize(("mode", "on_yield", "expected"), [
    (None, "checkpoint", "checkpoint"), (None, "finish", "finish"), ("now", "finish", "checkpoint"),
    ("now", "kill", "kill"), ("after_current", "checkpoint", "finish"),
])
def test_what_a_pause_does_to_running_jobs(tmp_path: Path, mode: str | None, on_yield: str, expected: str) -> None:
    changes: list[tuple[Availability, str]] = []
    g = guard(tmp_path, OwnerPolicy(on_yield=on_yield), Clock(NOON), changes)
    g.pause(mode, None)
    assert changes == [(g.availability, expected)]
    assert g.availability.reason.startswith("paused by owner")


def test_a_pause_is_kept_across_an_agent_restart_and_resume_ends_it(tmp_path: Path) -> None:
    clock = Clock(NOON)
    guard(tmp_path, OwnerPolicy(), clock, []).pause("after_current", 600)
    restarted = guard(tmp_path, OwnerPolicy(), clock, [])
    assert restarted.availability.reason == "paused by owner until 12:10 (running jobs finish)"
    restarted.resume()
    assert restarted.availability.is_available
    assert guard(tmp_path, OwnerPolicy(), clock, []).availability.is_available


def test_when_busy_yields_only_after_busy_s_above_and_comes_back_only_after_calm_s_below() -> None:
    state = BusyState(WhenBusy(cpu_percent=50, busy_s=3, calm_s=10))
    hot, cold = Sample(80, None), Sample(5, None)
    assert not state.update(hot, 0) and not state.update(hot, 2)
    assert not state.update(cold, 2.5) and not state.update(hot, 3) and not state.update(hot, 5.9), "a dip starts it again"
    assert state.update(hot, 6)
    assert state.reason() == "yielding: owner busy (CPU 80% > 50% outside the fleet)"
    assert state.update(cold, 7) and state.update(cold, 16.9)
    assert state.update(hot, 17) and state.update(cold, 18), "a burst during the calm starts the calm again"
    assert state.update(cold, 27.9) and not state.update(cold, 28)


def test_a_gpu_share_counts_where_nvml_measures_it() -> None:
    state = BusyState(WhenBusy(gpu_percent=30, busy_s=0, calm_s=0))
    assert not state.update(Sample(0, None), 0), "no NVML: no GPU share"
    assert state.update(Sample(0, 45), 1)
    assert state.reason() == "yielding: owner busy (GPU 45% > 30% outside the fleet)"

"""The short chaos soak: a real persistent mosquitto, the coordinator and four agents under every kind of fault.

About a minute of faults and drain; the 10-minute, 20-agent run is `make soak` (docs/RELIABILITY.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mqfleet.local.broker import LocalBroker
from mqfleet.local.postgres import LocalPostgres
from mqfleet.soak.fleet import SoakConfig
from mqfleet.soak.runner import run_soak
from tests.fixtures.common import require_real_part


@pytest.mark.timeout(360)
def test_short_soak_completes_every_job_exactly_once_with_no_orphans_under_injected_faults(tmp_path: Path) -> None:
    require_real_part(LocalBroker.available(), "mosquitto")
    config = SoakConfig(duration_s=45, agents=4, jobs=40, seed=7, work_dir=tmp_path / "soak", drain_timeout_s=150)

    report: dict[str, Any] = run_soak(config).to_json()

    # Timing bounds are reported by the soak, not asserted here: a shared machine's stall is no bug.
    failed = [name for name, held in report["invariants"].items() if not held and not name.startswith("host death")]
    assert not failed, f"invariants broken: {failed}; problems: {report['problems']}"
    assert report["jobs"] == {"total": 40, "by_status": {"completed": 40}, "completed": 40, "lost": 0, "duplicated": 0}
    assert report["artifacts"] == {"verified": 40, "bad": 0}
    assert report["orphans"] == {"at_end": 0, "after_agent_kill": 0, "stale_trainers": 0}
    assert report["sqlite_integrity_check"] == "ok"
    # The run really was chaotic: faults of most kinds hit, and they cost attempts.
    assert sum(report["faults_injected"].values()) >= 6, report["fault_log"]
    assert len(report["faults_injected"]) >= 5, report["fault_log"]
    assert sum(n for cause, n in report["attempts_by_cause"].items() if cause != "completed") >= 1
    # The soak trainer checkpoints: attempts given a checkpoint resumed (or say why not), never from a later one.
    resumes = report["checkpoint_resumes"]
    assert resumes["resumed"] + resumes["started_fresh"] == resumes["given_a_checkpoint"] <= resumes["later_attempts"]
    assert resumes["backwards"] == []


@pytest.mark.timeout(420)
def test_short_soak_with_two_coordinators_on_postgresql_holds_every_invariant(tmp_path: Path) -> None:
    """The same faults, coordinator kills among them (the leader or the follower), with the state on
    PostgreSQL and two coordinators behind the shared subscription (docs/SCALING.md)."""
    require_real_part(LocalBroker.available(), "mosquitto")
    require_real_part(LocalPostgres.available(), "PostgreSQL (Debian's postgresql) and psycopg")
    # seed 20 shuffles coordinator_kill first: a kill -9 of the leader or the follower while every agent works
    config = SoakConfig(duration_s=45, agents=4, jobs=40, seed=20, work_dir=tmp_path / "soak", drain_timeout_s=150,
                        coordinators=2, db="postgresql")

    report: dict[str, Any] = run_soak(config).to_json()

    failed = [name for name, held in report["invariants"].items() if not held and not name.startswith("host death")]
    assert not failed, f"invariants broken: {failed}; problems: {report['problems']}"
    assert report["jobs"] == {"total": 40, "by_status": {"completed": 40}, "completed": 40, "lost": 0, "duplicated": 0}
    assert report["artifacts"] == {"verified": 40, "bad": 0}
    assert "PostgreSQL integrity_check ok" in report["invariants"]
    assert report["faults_injected"].get("coordinator_kill", 0) >= 1, report["fault_log"]
    assert sum(report["faults_injected"].values()) >= 5, report["fault_log"]

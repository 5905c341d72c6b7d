"""What the coordinator makes of owner policies, on a real SQLite file with injected time: a host its owner took
back claims nothing and `why_waiting` says why; the manifest's hours are judged by the coordinator for an agent
that states none; a preemption is free and no failure; an `oom` retry prefers a host with more memory, without
hiding any job the small host may run (docs/INTERNALS.md, "How a claim picks a job")."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mqfleet.lifecycle import Cause
from mqfleet.manifest.types import FleetSettings, HostPolicy, HyperParam, JobSpec, Manifest, TrainerSpec
from mqfleet.wire.owner import OwnerPolicy
from tests.fixtures.state import CoordinatorState as Database

#: Wednesday 2024-05-08 12:00 UTC
T0 = dt.datetime(2024, 5, 8, 12, 0, tzinfo=dt.timezone.utc).timestamp()


def job_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def job(name: str, **kw: Any) -> JobSpec:
    return JobSpec(id=job_id(name), name=name, model="gbt", mode="m", hyper={}, **kw)


def manifest(*jobs: JobSpec, hosts: dict[str, HostPolicy] | None = None, **fleet: Any) -> Manifest:
    trainer = TrainerSpec("gbt", "xgboost", (), {"n": HyperParam("n", "int", 1)})
    return Manifest(fleet=FleetSettings(**fleet), trainers={"gbt": trainer}, hosts=hosts or {}, jobs=tuple(jobs))


def online(db: Database, host: str, **advert: Any) -> None:
    db.record_advert(host, {"host": host, "cuda": False, "ram_gib": 16, "gpus": [], "slots": 1, **advert}, T0)
    db.record_presence(host, True, T0)


def reasons(db: Database, name: str, now: float = T0) -> dict[str | None, str]:
    return {w.host: w.reason for w in db.why_waiting(job_id(name), now)}


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "state.db")
    yield database
    database.close()


def test_a_host_its_owner_took_back_claims_nothing_and_why_waiting_names_the_reason(db: Database) -> None:
    db.apply_manifest(manifest(job("only-lab", allowed_hosts=("lab",))), T0)
    online(db, "lab", availability={"state": "paused", "reason": "paused by owner until 14:00"})
    assert db.claim("lab", T0) is None
    assert reasons(db, "only-lab")["lab"] == "paused by owner until 14:00"
    assert [w.owner_wait for w in db.hosts()] == ["paused by owner until 14:00"]
    online(db, "lab", availability={"state": "available", "reason": ""})
    assert db.claim("lab", T0) is not None
    assert [w.owner_wait for w in db.hosts()] == [None]


def test_the_manifests_hours_keep_an_agent_that_states_none_from_claiming_outside_them(db: Database) -> None:
    hours = {"old": HostPolicy("old", owner=OwnerPolicy(hours=["13:00-14:00"], timezone="UTC"))}
    db.apply_manifest(manifest(job("a"), hosts=hours), T0)
    online(db, "old")  # an agent from before owner policies: no policy, no availability in its advert
    assert db.claim("old", T0) is None
    assert reasons(db, "a")["old"] == ("outside hours until 13:00 (UTC) (the manifest's hours, judged by the "
                                       "coordinator)")
    assert db.claim("old", T0 + 3600) is not None, "inside the window the coordinator lets it claim"


def test_an_agent_that_states_its_own_hours_is_trusted_for_them(db: Database) -> None:
    hours = {"new": HostPolicy("new", owner=OwnerPolicy(hours=["13:00-14:00"], timezone="UTC"))}
    db.apply_manifest(manifest(job("a"), hosts=hours), T0)
    # its owner allowed every hour in agent.toml, which wins over the manifest's defaults
    online(db, "new", owner_policy={"hours": ["00:00-24:00"], "timezone": "UTC"}, availability={"state": "available"})
    assert db.claim("new", T0) is not None


def test_three_preemptions_of_a_max_attempts_1_job_cost_nothing_and_quarantine_no_host(db: Database) -> None:
    db.apply_manifest(manifest(job("a"), job("b"), max_attempts=1, quarantine_after=2, retry_backoff_s=60), T0)
    online(db, "lab", slots=2)
    for i in range(3):
        grants = [db.claim("lab", T0 + i), db.claim("lab", T0 + i)]
        for grant in grants:
            assert grant is not None, "a preempted job is claimable at once, with no back-off"
            db.fail(grant.job.id, grant.lease_id, "lab", Cause.PREEMPTED, exit_code=-15, output_tail="",
                    error="preempted: paused by owner", now=T0 + i)
    for name in ("a", "b"):
        row = db.job(job_id(name))
        assert (row.status, row.attempts_charged, row.attempts_started) == ("pending", 0, 3)
        assert row.error is None, "a hand-back is no error"
    assert not any(w.quarantined for w in db.hosts())


def test_an_oom_retry_waits_for_a_host_with_more_memory_and_why_waiting_says_so(db: Database) -> None:
    db.apply_manifest(manifest(job("big", max_memory_gib=1.0)), T0)
    online(db, "small", owner_policy={"max_memory_gib": 0.25})
    grant = db.claim("small", T0)
    assert grant is not None
    online(db, "mid", owner_policy={"max_memory_gib": 0.25})
    online(db, "large", owner_policy={"max_memory_gib": 2.0})
    db.fail(grant.job.id, grant.lease_id, "small", Cause.OOM, exit_code=-9, output_tail="", error="out of memory", now=T0)
    with db.transaction() as c:
        row = c.execute("SELECT failed_hosts FROM jobs WHERE id = ?", (job_id("big"),)).fetchone()
        assert row is not None
        failed = json.loads(row[0])
    assert failed == ["#oom:0.250", "small"]
    assert db.claim("small", T0) is None and db.claim("mid", T0) is None, "neither gives the job more memory"
    why = reasons(db, "big")
    assert why["mid"] == ("an attempt ran out of memory under 0.25 GiB and this host gives a job 0.25 GiB; its retry "
                          "prefers large (2 GiB)")
    grant = db.claim("large", T0)
    assert grant is not None and grant.job.name == "big"


def test_an_oom_retry_runs_on_a_small_host_again_when_no_bigger_one_takes_work(db: Database) -> None:
    db.apply_manifest(manifest(job("big")), T0)
    online(db, "small", owner_policy={"max_memory_gib": 0.25})
    grant = db.claim("small", T0)
    assert grant is not None
    db.fail(grant.job.id, grant.lease_id, "small", Cause.OOM, exit_code=-9, output_tail="", error="oom", now=T0)
    assert db.claim("small", T0) is not None


def test_jobs_that_ran_out_of_memory_never_hide_a_job_the_small_host_may_run(db: Database) -> None:
    hungry = [job(f"hungry{i}", priority=10, max_memory_gib=4.0) for i in range(6)]
    db.apply_manifest(manifest(*hungry, job("plain")), T0)
    online(db, "small", owner_policy={"max_memory_gib": 0.5})
    online(db, "large", ram_gib=64)
    db.record_presence("large", False, T0)  # away while the small host runs the hungry jobs out of memory
    for _ in hungry:
        grant = db.claim("small", T0)
        assert grant is not None and grant.job.name.startswith("hungry")
        db.fail(grant.job.id, grant.lease_id, "small", Cause.OOM, exit_code=-9, output_tail="", error="oom", now=T0)
        db.record_presence("large", True, T0)  # back: every later claim of small holds the OOM'd jobs for it
    grant = db.claim("small", T0)
    assert grant is not None and grant.job.name == "plain", "six better-ranked OOM'd jobs did not hide it"

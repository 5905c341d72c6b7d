"""Retry back-off, the hosts a retry avoids, host quarantine and dependents that can never run, on a real
SQLite file with injected time (docs/RELIABILITY.md, "Jobs that misbehave")."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mqfleet.coordinator.tables.leases import Completion
from mqfleet.lifecycle import Cause
from mqfleet.manifest.types import FleetSettings, HyperParam, JobSpec, Manifest, TrainerSpec
from tests.fixtures.state import CoordinatorState as Database

T0 = 1_800_000_000.0


def job_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def job(name: str, *, after: tuple[str, ...] = (), **kw: Any) -> JobSpec:
    return JobSpec(id=job_id(name), name=name, model="gbt", mode="m", hyper={}, after=tuple(job_id(a) for a in after), **kw)


def manifest(*jobs: JobSpec, **fleet: Any) -> Manifest:
    trainer = TrainerSpec("gbt", "xgboost", (), {"n": HyperParam("n", "int", 1)})
    return Manifest(fleet=FleetSettings(**fleet), trainers={"gbt": trainer}, hosts={}, jobs=tuple(jobs))


def online(db: Database, *hosts: str, now: float = T0) -> None:
    for host in hosts:
        db.record_advert(host, {"host": host, "cuda": False, "ram_gib": 16, "gpus": [], "slots": 1}, now)
        db.record_presence(host, True, now)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "state.db")
    yield database
    database.close()


def fail_once(db: Database, host: str, now: float, cause: Cause = Cause.APP) -> str:
    grant = db.claim(host, now)
    assert grant is not None, f"{host} got nothing at {now - T0:+}"
    db.fail(grant.job.id, grant.lease_id, host, cause, exit_code=1, output_tail="", error="boom", now=now)
    return str(grant.job.name)


def job_reasons(db: Database, name: str, now: float) -> list[str]:
    return [w.reason for w in db.why_waiting(job_id(name), now) if w.host is None]


def test_a_failed_job_is_not_claimable_until_its_back_off_has_passed_and_why_waiting_says_how_long(db: Database) -> None:
    db.apply_manifest(manifest(job("a"), retry_backoff_s=10), T0)
    online(db, "h")
    fail_once(db, "h", T0)
    assert db.claim("h", T0 + 9) is None
    assert job_reasons(db, "a", T0 + 4) == ["retry back-off: claimable in 6 s (after a failed attempt on h)"]
    assert db.job(job_id("a")).retry_after_ts == T0 + 10
    fail_once(db, "h", T0 + 10)
    assert db.claim("h", T0 + 29) is None, "the second back-off is twice the first"
    assert db.claim("h", T0 + 30) is not None


def test_a_shutdown_hand_back_costs_no_back_off(db: Database) -> None:
    db.apply_manifest(manifest(job("a"), retry_backoff_s=10), T0)
    online(db, "h")
    fail_once(db, "h", T0, Cause.SHUTDOWN)
    assert db.claim("h", T0) is not None


def test_a_retry_prefers_a_host_that_has_not_failed_the_job_while_one_is_online(db: Database) -> None:
    db.apply_manifest(manifest(job("a")), T0)
    online(db, "h1", "h2")
    fail_once(db, "h1", T0)
    assert db.claim("h1", T0 + 1) is None
    why = {w.host: w.reason for w in db.why_waiting(job_id("a"), T0 + 1)}
    assert "its retry prefers h2" in why["h1"] and why["h2"].startswith("eligible"), why
    assert db.claim("h2", T0 + 1).job.name == "a"  # type: ignore[union-attr]


def test_jobs_that_failed_on_the_same_hosts_in_any_order_share_one_set_and_name_their_latest_failure(
    db: Database,
) -> None:
    db.apply_manifest(manifest(job("a"), job("b"), retry_backoff_s=10, max_attempts=5), T0)
    online(db, "h1", "h2")
    assert [fail_once(db, "h2", T0), fail_once(db, "h1", T0)] == ["a", "b"]
    # each retry prefers the host that has not failed it
    assert [fail_once(db, "h1", T0 + 20), fail_once(db, "h2", T0 + 20)] == ["a", "b"]
    assert [r[0] for r in db.state.read("SELECT DISTINCT failed_hosts FROM jobs")] == ['["h1", "h2"]']
    assert job_reasons(db, "a", T0 + 21) == ["retry back-off: claimable in 19 s (after a failed attempt on h1)"]
    assert job_reasons(db, "b", T0 + 21) == ["retry back-off: claimable in 19 s (after a failed attempt on h2)"]


def test_a_host_that_failed_the_job_runs_it_again_when_no_other_host_could(db: Database) -> None:
    db.apply_manifest(manifest(job("a")), T0)
    online(db, "h1", "h2")
    fail_once(db, "h1", T0)
    db.record_presence("h2", False, T0 + 1)
    assert db.claim("h1", T0 + 1) is not None


def test_consecutive_failures_over_several_jobs_quarantine_a_host_until_it_is_undrained(db: Database) -> None:
    db.apply_manifest(manifest(job("a"), job("b"), job("c"), job("d"), quarantine_after=3, max_attempts=1), T0)
    online(db, "h")
    names = [fail_once(db, "h", T0 + i, cause) for i, cause in enumerate((Cause.APP, Cause.TIMEOUT, Cause.STALLED))]
    assert db.claim("h", T0 + 5) is None
    host = db.hosts()[0]
    assert host.quarantined is True and host.quarantine is not None
    assert host.quarantine.jobs == names
    assert "3 consecutive failed attempts (app, stalled, timeout)" in host.quarantine.reason
    events = db.take_host_events()
    assert [(e.kind, e.host) for e in events] == [("host_quarantined", "h")]
    assert any("quarantined after 3 consecutive" in w.reason for w in db.why_waiting(job_id("d"), T0 + 5))

    assert db.set_draining("h", False, T0 + 6) is True
    assert db.hosts()[0].quarantined is False
    assert [e.kind for e in db.take_host_events()] == ["host_released"]
    assert db.claim("h", T0 + 7).job.name == "d"  # type: ignore[union-attr]


def test_the_host_counts_of_the_status_agree_with_the_host_records(db: Database) -> None:
    # The retained coordinator status counts hosts by SQL; `workers` builds each record: they must agree.
    db.apply_manifest(manifest(job("a"), job("b"), job("c"), job("d"), quarantine_after=3, max_attempts=1), T0)
    online(db, "h", "g", "k")
    for i, cause in enumerate((Cause.APP, Cause.TIMEOUT, Cause.STALLED)):
        fail_once(db, "h", T0 + i, cause)
    db.set_draining("g", True, T0 + 4)
    db.record_presence("k", False, T0 + 5)
    records = db.hosts()
    expected = (len(records), sum(w.online for w in records), sum(w.draining for w in records),
                sum(w.quarantined for w in records))
    assert tuple(db.hosts_table.counts()) == expected == (3, 2, 1, 1)


def test_one_job_failing_again_and_again_does_not_quarantine_its_host(db: Database) -> None:
    db.apply_manifest(manifest(job("a"), quarantine_after=2, max_attempts=5), T0)
    online(db, "h")
    fail_once(db, "h", T0)
    fail_once(db, "h", T0 + 1)
    assert db.hosts()[0].quarantined is False


def test_a_completion_ends_the_failure_streak(db: Database) -> None:
    db.apply_manifest(manifest(job("a"), job("b"), job("c"), quarantine_after=2, max_attempts=1), T0)
    online(db, "h")
    fail_once(db, "h", T0)
    grant = db.claim("h", T0 + 1)
    assert grant is not None
    art = Completion(sha256="ab" * 32, size=1, key="k")
    db.complete(grant.job.id, grant.lease_id, "h", art, T0 + 2)
    fail_once(db, "h", T0 + 3)
    assert db.hosts()[0].quarantined is False


def test_a_job_whose_dependency_failed_says_it_can_never_run(db: Database) -> None:
    db.apply_manifest(manifest(job("a"), job("b", after=("a",)), max_attempts=1), T0)
    online(db, "h")
    fail_once(db, "h", T0)
    assert job_reasons(db, "b", T0 + 1) == ["dependency never satisfied: a (failed)"]
    assert db.job(job_id("b")).unsatisfied == "dependency never satisfied: a (failed)"
    assert db.job(job_id("b")).status == "pending"


def test_cancel_unsatisfiable_cancels_dependents_transitively_and_a_requeue_makes_them_wait_again(db: Database) -> None:
    jobs = (job("a"), job("b", after=("a",)), job("c", after=("b",)), job("x"))
    db.apply_manifest(manifest(*jobs, max_attempts=1, cancel_unsatisfiable=True), T0)
    online(db, "h")
    fail_once(db, "h", T0)
    assert [(j.name, j.status) for j in db.jobs()] == [
        ("a", "failed"), ("b", "cancelled"), ("c", "cancelled"), ("x", "pending")]
    assert db.job(job_id("b")).error == "dependency never satisfied: a (failed)"
    assert db.job(job_id("c")).error == "dependency never satisfied: b (cancelled)"

    db.requeue(job_id("a"), T0 + 1)
    assert [(j.name, j.status) for j in db.jobs()][:3] == [("a", "pending"), ("b", "pending"), ("c", "pending")]
    assert job_reasons(db, "b", T0 + 1) == ["dependency 'a' not completed (pending)"]
    assert db.job(job_id("b")).error is None


def test_turning_cancel_unsatisfiable_on_by_reload_cancels_what_already_waits_for_ever(db: Database) -> None:
    jobs = (job("a"), job("b", after=("a",)))
    db.apply_manifest(manifest(*jobs, max_attempts=1), T0)
    online(db, "h")
    fail_once(db, "h", T0)
    assert db.job(job_id("b")).status == "pending"
    db.apply_manifest(manifest(*jobs, max_attempts=1, cancel_unsatisfiable=True), T0 + 1)
    assert db.job(job_id("b")).status == "cancelled"


def test_job_rows_carry_their_limits(db: Database) -> None:
    db.apply_manifest(manifest(job("a", timeout_s=5.0, stall_s=2.5), job("b")), T0)
    rows = {j.name: j for j in db.jobs()}
    assert (rows["a"].timeout_s, rows["a"].stall_s) == (5.0, 2.5)
    assert (rows["b"].timeout_s, rows["b"].stall_s) == (None, None)


def test_a_job_in_its_back_off_is_not_offered_to_idle_hosts_until_it_passes(db: Database) -> None:
    db.apply_manifest(manifest(job("a"), retry_backoff_s=10), T0)
    online(db, "h")
    fail_once(db, "h", T0)
    assert db.catalog.claimable_specs([job_id("a")], T0 + 5) == []
    assert [s.name for s in db.catalog.claimable_specs([job_id("a")], T0 + 10)] == ["a"]
    assert db.leases.backoffs_ended(T0 + 5, T0 + 10) == [job_id("a")]

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from mqfleet.coordinator.tables.claim_walk import BEST_OPEN, BEST_OPEN_AND_LIMITED
from mqfleet.coordinator.tables.leases import Completion, TakenLease
from mqfleet.coordinator.tables.rows import JOB_SELECT, job_json, job_row
from mqfleet.errors import AmbiguousError, BadRequestError, IllegalTransitionError, LeaseLostError, NotFoundError
from mqfleet.lifecycle import Cause, JobStatus
from mqfleet.manifest.types import FleetSettings, HostPolicy, HyperParam, JobSpec, Manifest, TrainerSpec
from mqfleet.wire.replies import ArtifactRecord, LeaseDetail, WaitReason
from mqfleet.wire.requests import Grant, TrainerRef
from mqfleet.wire.topics import encode
from tests.fixtures.state import CoordinatorState, is_postgres

T0 = 1_800_000_000.0
SHA = "ab" * 32
ART = Completion(sha256=SHA, size=123, key=f"artifacts/{'ab' * 32}.tar.zst", metrics={"rmse": 0.5})


def job_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def job(name: str, *, model: str = "gbt", after: tuple[str, ...] = (), **kw: Any) -> JobSpec:
    """A JobSpec whose id is derived from its name; `after` names jobs by name."""
    return JobSpec(id=job_id(name), name=name, model=model, mode="realistic", hyper={"n_estimators": 10},
                   after=tuple(job_id(a) for a in after), **kw)


def manifest(*jobs: JobSpec, hosts: tuple[HostPolicy, ...] = (), **fleet: Any) -> Manifest:
    fleet.setdefault("lease_s", 90.0)
    fleet.setdefault("grace_s", 10.0)
    models = {j.model for j in jobs} | {"gbt"}
    hyper = {"n_estimators": HyperParam("n_estimators", "int", 200, min=1)}
    trainers = {m: TrainerSpec(name=m, builtin="xgboost", command=(), hyper=hyper) for m in models}
    return Manifest(fleet=FleetSettings(**fleet), trainers=trainers, hosts={h.id: h for h in hosts}, jobs=tuple(jobs))


def advert(host: str, *, cuda: bool = False, vram: tuple[float, ...] = (), ram_gib: float = 16, **kw: Any) -> dict[str, Any]:
    gpus = [{"index": i, "name": "gpu", "uuid": f"{host}-{i}", "vram_gib": v} for i, v in enumerate(vram)]
    return {"host": host, "hostname": host, "os": "linux", "python": "3.11", "cpu_cores": 4, "ram_gib": ram_gib,
            "cuda": cuda, "gpus": gpus, "torch": "2.13.0", "git_commit": None, "agent_version": "0", "slots": 1,
            "labels": [], "ts": T0, **kw}


def bring_online(db: CoordinatorState, host: str, now: float = T0, **kw: Any) -> None:
    db.record_advert(host, advert(host, **kw), now)
    db.record_presence(host, True, now)


@pytest.fixture
def db(state_target: str) -> Iterator[CoordinatorState]:
    database = CoordinatorState(state_target)
    yield database
    database.close()


def claimed(db: CoordinatorState, host: str, now: float = T0) -> Grant:
    grant = db.claim(host, now)
    assert grant is not None, f"{host} got nothing"
    return grant


# --- the file --------------------------------------------------------------------------


def test_new_database_uses_wal_and_passes_integrity_check(db: CoordinatorState, state_target: str) -> None:
    assert db.journal_mode() == ("postgresql" if is_postgres(state_target) else "wal")
    assert db.integrity_check() == "ok"


def test_counts_has_all_six_statuses(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a"), job("b")), T0)
    assert db.counts() == {"pending": 2, "claimed": 0, "running": 0, "completed": 0, "failed": 0, "cancelled": 0}


def test_state_survives_reopening_the_file(state_target: str) -> None:
    first = CoordinatorState(state_target)
    first.apply_manifest(manifest(job("a")), T0)
    bring_online(first, "h")
    grant = claimed(first, "h")
    first.close()
    second = CoordinatorState(state_target)
    assert second.lease(job_id("a")).lease_id == grant.lease_id  # type: ignore[union-attr]
    assert second.take_changes() == []
    second.close()


# --- manifest --------------------------------------------------------------------------


def test_apply_manifest_adds_new_jobs_as_pending(db: CoordinatorState) -> None:
    summary = db.apply_manifest(manifest(job("a"), job("b")), T0)
    assert summary == {"added": [job_id("a"), job_id("b")], "kept": [], "changed": [], "orphaned": []}
    row = db.job(job_id("a"))
    assert (row.status, row.host, row.attempts, row.max_attempts, row.in_manifest) == ("pending", None, 0, 3, True)
    assert (row.artifact, row.error, row.progress, row.lease_expires_ts) == (None, None, None, None)


def test_reload_with_the_same_manifest_is_idempotent(db: CoordinatorState) -> None:
    m = manifest(job("a"), job("b"))
    db.apply_manifest(m, T0)
    bring_online(db, "h")
    claimed(db, "h")
    before = db.jobs()
    db.take_changes()
    assert db.apply_manifest(m, T0 + 5) == {"added": [], "kept": [job_id("a"), job_id("b")], "changed": [], "orphaned": []}
    assert db.jobs() == before
    assert db.take_changes() == []


def test_reload_keeps_status_updates_priority_and_orphans_removed_jobs(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a"), job("b")), T0)
    bring_online(db, "h")
    claimed(db, "h")
    summary = db.apply_manifest(manifest(job("a", priority=7), job("c")), T0 + 1)
    assert summary == {"added": [job_id("c")], "kept": [job_id("a")], "changed": [job_id("a")], "orphaned": [job_id("b")]}
    a, b = db.job(job_id("a")), db.job(job_id("b"))
    assert (a.status, a.priority, a.in_manifest) == ("claimed", 7, True)
    assert (b.status, b.in_manifest) == ("pending", False)
    db.apply_manifest(manifest(job("a"), job("b")), T0 + 2)
    assert db.job(job_id("b")).in_manifest is True


def test_orphaned_pending_job_is_not_claimed_and_says_why(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("gone")), T0)
    db.apply_manifest(manifest(), T0)
    bring_online(db, "h")
    assert db.claim("h", T0) is None
    assert WaitReason(host=None, reason="not in the manifest any more") in db.why_waiting(job_id("gone"), T0)


def test_orphaned_job_can_still_be_cancelled(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("gone")), T0)
    db.apply_manifest(manifest(), T0)
    assert db.cancel(job_id("gone"), T0) is None
    assert db.job(job_id("gone")).status == "cancelled"


# --- claim -----------------------------------------------------------------------------


def test_claim_grants_lease_with_spec_trainer_attempt_and_expiry(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a")), T0)
    bring_online(db, "h")
    grant = claimed(db, "h", T0 + 1)
    assert grant.job.id == job_id("a")
    assert (grant.job.status, grant.job.host) == ("claimed", "h")
    assert grant.spec == job("a").to_dict()
    assert grant.trainer == TrainerRef(name="gbt", builtin="xgboost", command=[], outputs=[],
                                       argv=["{python}", "-m", "mqfleet.trainers.xgboost"],
                                       hyper={"n_estimators": {"type": "int", "default": 200, "min": 1, "max": None,
                                                               "choices": []}})
    assert (grant.attempt, grant.lease_s, grant.expires_ts, grant.gpus) == (1, 90.0, T0 + 91, [])
    assert len(grant.lease_id) == 32
    assert db.lease(job_id("a")) == LeaseDetail(lease_id=grant.lease_id, host="h", expires_ts=T0 + 91, attempt=1, gpus=[])
    assert grant.job.lease_expires_ts == T0 + 91


def test_claim_returns_none_for_unknown_offline_or_draining_host(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a")), T0)
    assert db.claim("stranger", T0) is None
    bring_online(db, "h")
    db.record_presence("h", False, T0)
    assert db.claim("h", T0) is None
    db.record_presence("h", True, T0)
    db.set_draining("h", True, T0)
    assert db.claim("h", T0) is None
    db.set_draining("h", False, T0)
    assert db.claim("h", T0) is not None


def test_claim_returns_none_when_nothing_is_pending(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a")), T0)
    bring_online(db, "h", slots=5)
    claimed(db, "h")
    assert db.claim("h", T0) is None


def test_claim_fills_the_manifest_slots_not_the_advert_slots(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a"), job("b"), job("c"), hosts=(HostPolicy(id="h", slots=2),)), T0)
    bring_online(db, "h", slots=8)
    claimed(db, "h")
    claimed(db, "h")
    assert db.claim("h", T0) is None
    assert [(h.id, h.slots, h.slots_used, len(h.jobs)) for h in db.hosts()] == [("h", 2, 2, 2)]


def test_unlisted_host_uses_the_slots_of_its_advert(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a"), job("b"), job("c")), T0)
    bring_online(db, "h", slots=2)
    claimed(db, "h")
    claimed(db, "h")
    assert db.claim("h", T0) is None


def test_two_hosts_never_hold_the_same_job(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a"), job("b")), T0)
    bring_online(db, "h1")
    bring_online(db, "h2")
    bring_online(db, "h3")
    ids = [claimed(db, "h1").job.id, claimed(db, "h2").job.id]
    assert sorted(ids) == sorted([job_id("a"), job_id("b")])
    assert db.claim("h3", T0) is None


def test_concurrent_claims_from_two_connections_never_share_a_job(state_target: str) -> None:
    m = manifest(*(job(f"j{i}") for i in range(40)))
    dbs = [CoordinatorState(state_target) for _ in range(2)]
    for d in dbs:
        d.apply_manifest(m, T0)
    hosts = [f"h{i}" for i in range(8)]
    for h in hosts:
        bring_online(dbs[0], h, slots=10)
    got: list[str] = []
    errors: list[BaseException] = []

    def worker(d: CoordinatorState, mine: list[str]) -> None:
        try:
            for h in mine:
                while (grant := d.claim(h, T0)) is not None:
                    got.append(grant.job.id)
        except BaseException as e:  # surfaced below; a thread cannot fail the test itself
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(dbs[i % 2], hosts[i::4])) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for d in dbs:
        d.close()
    assert not errors
    assert len(got) == len(set(got)) == 40


def test_claim_takes_priority_then_age(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("old"), job("new"), job("urgent", priority=3)), T0)
    bring_online(db, "h", slots=3)
    assert [claimed(db, "h").job.name for _ in range(3)] == ["urgent", "old", "new"]


def test_claim_skips_jobs_the_host_may_not_run(db: CoordinatorState) -> None:
    jobs = [job("big", min_ram_gib=64), job("gpu", require_cuda=True), job("mlp", model="mlp"), job("elsewhere", allowed_hosts=("x",)), job("ok")]
    db.apply_manifest(manifest(*jobs, hosts=(HostPolicy(id="h", deny_jobs=("mlp",)),)), T0)
    bring_online(db, "h")
    assert claimed(db, "h").job.name == "ok"


def test_claim_walks_past_many_jobs_the_host_may_not_run(db: CoordinatorState) -> None:
    denied = [job(f"mlp{i}", model="mlp", priority=1) for i in range(100)]
    db.apply_manifest(manifest(*denied, job("ok"), hosts=(HostPolicy(id="h", deny_jobs=("mlp",)),)), T0)
    bring_online(db, "h")
    assert claimed(db, "h").job.name == "ok"


def test_prefer_cuda_job_goes_to_cuda_host_while_one_is_online(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("likes-gpu", prefer_cuda=True), job("plain")), T0)
    bring_online(db, "cpu")
    bring_online(db, "gpu", cuda=True, vram=(24.0,))
    assert claimed(db, "cpu").job.name == "plain"
    assert db.claim("cpu", T0) is None
    grant = claimed(db, "gpu")
    assert (grant.job.name, grant.gpus) == ("likes-gpu", [0])


def test_prefer_cuda_job_runs_on_cpu_when_no_cuda_host_is_online(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("likes-gpu", prefer_cuda=True)), T0)
    bring_online(db, "cpu")
    bring_online(db, "gpu", cuda=True, vram=(24.0,))
    db.record_presence("gpu", False, T0)
    grant = claimed(db, "cpu")
    assert (grant.job.name, grant.gpus) == ("likes-gpu", [])


def test_cuda_host_takes_prefer_cuda_job_first_among_equal_priority(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("plain"), job("likes-gpu", prefer_cuda=True)), T0)
    bring_online(db, "gpu", cuda=True, vram=(24.0,))
    assert claimed(db, "gpu").job.name == "likes-gpu"


def test_claim_gives_each_cuda_job_the_least_loaded_big_enough_gpu(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(*(job(f"g{i}", require_cuda=True, min_vram_gib=16) for i in range(3))), T0)
    bring_online(db, "gpu", cuda=True, vram=(8.0, 24.0, 24.0), slots=3)
    assert [claimed(db, "gpu").gpus for _ in range(3)] == [[1], [2], [1]]


def test_claim_queries_walk_indexes_instead_of_sorting_or_scanning_the_table(
    db: CoordinatorState, state_target: str
) -> None:
    if is_postgres(state_target):
        pytest.skip("SQLite's query plan; PostgreSQL's planner picks by table statistics")
    # the first page, in rank order for hosts without and with CUDA
    for order, index in (("priority DESC, seq", "jobs_claim"), ("priority DESC, prefer_cuda DESC, seq", "jobs_claim_cuda")):
        plan = db.state.conn.execute(
            f"EXPLAIN QUERY PLAN SELECT seq, spec FROM jobs t WHERE status = 'pending' AND blocked = 0 "
            f"AND NOT EXISTS (SELECT 1 FROM retries r WHERE r.job_id = t.id AND r.not_before_ts > 1) ORDER BY {order}"
        ).fetchall()
        text = " ".join(str(r[-1]) for r in plan)
        assert f"USING INDEX {index} " in text and "TEMP B-TREE" not in text, text
    # the best job of every set: seeks only
    for query, params in ((BEST_OPEN, (T0,)), (BEST_OPEN_AND_LIMITED, (T0, T0, "h"))):
        plan = db.state.conn.execute(f"EXPLAIN QUERY PLAN {query}", params).fetchall()
        text = " ".join(str(r[-1]) for r in plan)
        assert "USING COVERING INDEX jobs_claim_key" in text and "TEMP B-TREE" not in text, text
        assert "SCAN j " not in text and "SCAN jobs" not in text and "SCAN t " not in text, text


def test_the_dependents_look_up_after_each_completion_uses_the_deps_index(db: CoordinatorState, state_target: str) -> None:
    if is_postgres(state_target):
        pytest.skip("SQLite's query plan; PostgreSQL's planner picks by table statistics")
    plan = db.state.conn.execute("EXPLAIN QUERY PLAN SELECT job_id FROM deps WHERE after_id = ?", ("x",)).fetchall()
    text = " ".join(str(r[-1]) for r in plan)
    assert "USING INDEX deps_after" in text or "USING COVERING INDEX deps_after" in text, text


# --- dependencies ------------------------------------------------------------------------


def test_job_waits_for_its_dependency_to_complete(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("first"), job("second", after=("first",), priority=9)), T0)
    bring_online(db, "h", slots=2)
    grant = claimed(db, "h")
    assert grant.job.name == "first"
    assert db.claim("h", T0) is None
    assert db.why_waiting(job_id("second"), T0)[0] == WaitReason(host=None, reason="dependency 'first' not completed (claimed)")
    db.complete(job_id("first"), grant.lease_id, "h", ART, T0 + 1)
    assert claimed(db, "h").job.name == "second"


def test_requeued_dependency_blocks_its_pending_dependents_again(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("first"), job("second", after=("first",))), T0)
    bring_online(db, "h")
    grant = claimed(db, "h")
    db.fail(job_id("first"), grant.lease_id, "h", Cause.APP, exit_code=1, output_tail="", error="", now=T0)
    db.cancel(job_id("first"), T0)
    db.requeue(job_id("first"), T0)
    assert claimed(db, "h").job.name == "first"


# --- renew, leases ------------------------------------------------------------------------


def test_first_renew_moves_claimed_to_running_and_extends_lease_and_keeps_progress(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a")), T0)
    bring_online(db, "h")
    grant = claimed(db, "h")
    assert db.renew(job_id("a"), grant.lease_id, "h", T0 + 30, {"progress": 0.4}) == T0 + 120
    row = db.job(job_id("a"))
    assert (row.status, row.progress, row.lease_expires_ts) == ("running", {"progress": 0.4}, T0 + 120)
    assert db.renew(job_id("a"), grant.lease_id, "h", T0 + 60) == T0 + 150
    assert db.job(job_id("a")).progress == {"progress": 0.4}


def test_a_renewal_says_whether_the_progress_changed_so_the_same_progress_is_not_republished(
    db: CoordinatorState,
) -> None:
    db.apply_manifest(manifest(job("a")), T0)
    bring_online(db, "h")
    grant = claimed(db, "h")
    renew = functools.partial(db.leases.renew, job_id("a"), grant.lease_id, "h", lease_s=90)
    assert renew(T0 + 1, {"epoch": 1}).progressed
    again = renew(T0 + 2, {"epoch": 1})
    assert (again.progressed, again.expires_ts) == (False, T0 + 92)
    assert not renew(T0 + 3, None).progressed
    assert renew(T0 + 4, {"epoch": 2}).progressed
    assert db.job(job_id("a")).progress == {"epoch": 2}


def test_a_job_rows_json_for_listings_is_exactly_its_typed_rows_wire_form(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a", timeout_s=60.0), job("b", after=("a",)), job("c")), T0)
    bring_online(db, "h")
    grant = claimed(db, "h")
    db.renew(job_id("a"), grant.lease_id, "h", T0 + 1, {"loss": 0.5, "metrics": {"rmse": [1, 2]}})
    db.cancel(job_id("a"), T0 + 2)
    rows = db.state.read(f"{JOB_SELECT} ORDER BY j.seq")
    assert [job_row(r).name for r in rows] == ["a", "b", "c"]
    for r in rows:
        assert job_json(r) == job_row(r).to_wire()
        assert encode(job_json(r)) == encode(job_row(r).to_wire())


def test_renew_with_a_stale_lease_or_from_the_wrong_host_is_lease_lost(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a")), T0)
    bring_online(db, "h")
    bring_online(db, "other")
    grant = claimed(db, "h")
    with pytest.raises(LeaseLostError):
        db.renew(job_id("a"), "0" * 32, "h", T0)
    with pytest.raises(LeaseLostError):
        db.renew(job_id("a"), grant.lease_id, "other", T0)
    with pytest.raises(LeaseLostError):
        db.check_lease(job_id("a"), grant.lease_id, "other")
    db.check_lease(job_id("a"), grant.lease_id, "h")
    with pytest.raises(NotFoundError):
        db.renew("f" * 64, grant.lease_id, "h", T0)


def test_old_lease_is_lost_after_the_job_is_claimed_again(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a")), T0)
    bring_online(db, "h")
    first = claimed(db, "h")
    db.expire_leases(T0 + 90)
    second = claimed(db, "h", T0 + 91)
    assert second.attempt == 2
    with pytest.raises(LeaseLostError):
        db.renew(job_id("a"), first.lease_id, "h", T0 + 92)
    with pytest.raises(LeaseLostError):
        db.complete(job_id("a"), first.lease_id, "h", ART, T0 + 92)


def test_expired_lease_returns_job_to_pending_with_attempt_incremented(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a")), T0)
    bring_online(db, "h")
    grant = claimed(db, "h")
    assert db.expire_leases(T0 + 89.9) == []
    assert db.expire_leases(T0 + 90) == [job_id("a")]
    row = db.job(job_id("a"))
    assert (row.status, row.attempts, row.host, db.lease(job_id("a"))) == ("pending", 1, None, None)
    assert "lease expired on h" in (row.error or "")
    [attempt] = db.attempts(job_id("a"))
    assert (attempt.cause, attempt.ended_ts, attempt.lease_id) == ("lost", T0 + 90, grant.lease_id)


def test_expired_lease_on_the_last_attempt_fails_the_job(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a"), max_attempts=2), T0)
    bring_online(db, "h")
    now = T0
    for _ in range(2):
        claimed(db, "h", now)
        now += 100
        db.expire_leases(now)
    row = db.job(job_id("a"))
    assert (row.status, row.attempts, row.max_attempts, row.host) == ("failed", 2, 2, "h")
    assert db.claim("h", now) is None


def test_shutdown_handback_never_counts_against_attempts(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a"), max_attempts=1), T0)
    bring_online(db, "h")
    for n in range(1, 4):
        grant = claimed(db, "h")
        assert grant.attempt == n
        status = db.fail(job_id("a"), grant.lease_id, "h", Cause.SHUTDOWN, exit_code=None, output_tail="", error="", now=T0)
        assert status is JobStatus.PENDING
    assert db.job(job_id("a")).attempts == 0
    assert [a.cause for a in db.attempts(job_id("a"))] == ["shutdown"] * 3


def test_app_failure_counts_and_records_exit_code_and_output_tail(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a"), max_attempts=2), T0)
    bring_online(db, "h")
    grant = claimed(db, "h")
    status = db.fail(job_id("a"), grant.lease_id, "h", Cause.APP, exit_code=3, output_tail="Traceback ...", error="", now=T0 + 5)
    assert status is JobStatus.PENDING
    assert (db.job(job_id("a")).attempts, db.job(job_id("a")).error) == (1, "exit code 3")
    grant = claimed(db, "h", T0 + 6)
    assert db.fail(job_id("a"), grant.lease_id, "h", Cause.APP, exit_code=1, output_tail="", error="oom", now=T0 + 7) is JobStatus.FAILED
    first, second = db.attempts(job_id("a"))
    assert (first.number, first.host, first.cause, first.exit_code, first.output_tail) == (1, "h", "app", 3, "Traceback ...")
    assert (second.number, second.error, second.started_ts, second.ended_ts) == (2, "oom", T0 + 6, T0 + 7)
    with pytest.raises(LeaseLostError):
        db.fail(job_id("a"), grant.lease_id, "h", Cause.APP, exit_code=1, output_tail="", error="", now=T0 + 8)


# --- presence ---------------------------------------------------------------------------


def test_offline_host_leases_shrink_to_the_grace(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a"), job("b")), T0)
    bring_online(db, "h", slots=2)
    bring_online(db, "other")
    claimed(db, "h")
    claimed(db, "h")
    assert sorted(db.record_presence("h", False, T0 + 20)) == sorted([job_id("a"), job_id("b")])
    assert db.lease(job_id("a")).expires_ts == T0 + 30  # type: ignore[union-attr]
    assert db.record_presence("other", False, T0 + 20) == []
    assert sorted(db.expire_leases(T0 + 30)) == sorted([job_id("a"), job_id("b")])


def test_offline_never_lengthens_a_lease(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a"), lease_s=5), T0)
    bring_online(db, "h")
    claimed(db, "h")
    db.record_presence("h", False, T0)
    assert db.lease(job_id("a")).expires_ts == T0 + 5  # type: ignore[union-attr]


def test_host_back_inside_the_grace_keeps_its_job_by_renewing(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a")), T0)
    bring_online(db, "h")
    grant = claimed(db, "h")
    db.record_presence("h", False, T0 + 20)
    db.record_presence("h", True, T0 + 25)
    assert db.renew(job_id("a"), grant.lease_id, "h", T0 + 26) == T0 + 116
    assert db.expire_leases(T0 + 31) == []
    assert db.job(job_id("a")).status == "running"


def test_resume_leases_gives_every_lease_a_full_term_after_a_coordinator_outage(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a")), T0)
    bring_online(db, "h")
    claimed(db, "h")
    assert db.resume_leases(T0 + 500) == [job_id("a")]
    assert db.expire_leases(T0 + 500) == []
    assert db.lease(job_id("a")).expires_ts == T0 + 590  # type: ignore[union-attr]


# --- cancel, requeue, complete ------------------------------------------------------------


def test_cancel_pending_job_ends_no_lease(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a")), T0)
    assert db.cancel(job_id("a"), T0) is None
    assert db.job(job_id("a")).status == "cancelled"
    assert db.attempts(job_id("a")) == []


def test_cancel_running_job_ends_the_attempt_as_cancelled_and_names_the_lease(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a")), T0)
    bring_online(db, "h")
    grant = claimed(db, "h")
    db.renew(job_id("a"), grant.lease_id, "h", T0 + 1)
    assert db.cancel(job_id("a"), T0 + 2) == TakenLease(host="h", lease_id=grant.lease_id)
    assert (db.job(job_id("a")).status, db.lease(job_id("a"))) == ("cancelled", None)
    assert db.attempts(job_id("a"))[0].cause == "cancelled"
    with pytest.raises(LeaseLostError):
        db.renew(job_id("a"), grant.lease_id, "h", T0 + 3)
    assert db.hosts()[0].slots_used == 0


def test_cancel_of_a_terminal_job_is_an_illegal_transition(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a")), T0)
    db.cancel(job_id("a"), T0)
    with pytest.raises(IllegalTransitionError):
        db.cancel(job_id("a"), T0)
    with pytest.raises(NotFoundError):
        db.cancel("0" * 64, T0)


def test_requeue_gives_a_failed_job_a_fresh_budget(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a"), max_attempts=1), T0)
    bring_online(db, "h")
    grant = claimed(db, "h")
    db.fail(job_id("a"), grant.lease_id, "h", Cause.APP, exit_code=1, output_tail="", error="boom", now=T0)
    assert db.job(job_id("a")).status == "failed"
    row = db.requeue(job_id("a"), T0 + 1)
    assert (row.status, row.attempts, row.error, row.host) == ("pending", 0, None, None)
    assert claimed(db, "h", T0 + 2).attempt == 2


def test_requeue_refuses_pending_running_and_completed_jobs(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a"), job("b")), T0)
    bring_online(db, "h")
    with pytest.raises(IllegalTransitionError):
        db.requeue(job_id("b"), T0)
    grant = claimed(db, "h")
    with pytest.raises(IllegalTransitionError):
        db.requeue(job_id("a"), T0)
    db.complete(job_id("a"), grant.lease_id, "h", ART, T0)
    with pytest.raises(IllegalTransitionError):
        db.requeue(job_id("a"), T0)


def test_exactly_one_completion_is_recorded_per_job(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a")), T0)
    bring_online(db, "h")
    grant = claimed(db, "h")
    row = db.complete(job_id("a"), grant.lease_id, "h", ART, T0 + 9)
    assert (row.status, row.artifact, row.host, row.error) == ("completed", ART.sha256, "h", None)
    with pytest.raises(LeaseLostError):
        db.complete(job_id("a"), grant.lease_id, "h", ART, T0 + 10)
    assert db.is_artifact_verified(SHA)
    assert db.artifacts() == [ArtifactRecord(sha256=ART.sha256, size=123, key=ART.key, job_id=job_id("a"), name="a",
                                             model="gbt", mode="realistic", host="h", metrics={"rmse": 0.5},
                                             created_ts=T0 + 9)]
    assert db.attempts(job_id("a"))[0].outcome == "completed"
    assert db.counts()["completed"] == 1


def test_bit_identical_artifacts_of_two_jobs_share_one_object(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a"), job("b")), T0)
    bring_online(db, "h")
    for name in ("a", "b"):
        db.complete(job_id(name), claimed(db, "h").lease_id, "h", ART, T0)
    assert [a.job_id for a in db.artifacts()] == [job_id("a"), job_id("b")]
    stored = db.artifact(SHA)
    assert stored is not None and stored.size == 123
    assert not db.is_artifact_verified("cd" * 32)


# --- why_waiting ---------------------------------------------------------------------------


def test_why_waiting_says_no_host_is_online(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a")), T0)
    assert db.why_waiting(job_id("a"), T0) == [WaitReason(host=None, reason="no host online")]


def test_why_waiting_gives_one_reason_per_online_host(db: CoordinatorState) -> None:
    policy = HostPolicy(id="pi", deny_jobs=("gbt",))
    db.apply_manifest(manifest(job("a", require_cuda=True, min_vram_gib=24), job("b"), hosts=(policy,)), T0)
    bring_online(db, "busy")
    bring_online(db, "small", cuda=True, vram=(8.0,))
    bring_online(db, "pi")
    bring_online(db, "gone")
    db.record_presence("gone", False, T0)
    claimed(db, "busy")
    assert db.why_waiting(job_id("a"), T0) == [
        WaitReason(host="busy", reason="all 1 slot busy; needs CUDA; host has none; needs 24 GiB VRAM; host has 0"),
        WaitReason(host="pi", reason="policy deny_jobs matches 'gbt'; needs CUDA; host has none; needs 24 GiB VRAM; host has 0"),
        WaitReason(host="small", reason="needs 24 GiB VRAM; host has 8"),
    ]


def test_why_waiting_names_the_cuda_host_a_prefer_cuda_job_waits_for(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("g1", prefer_cuda=True), job("g2", prefer_cuda=True)), T0)
    bring_online(db, "cpu")
    bring_online(db, "gpu-box", cuda=True, vram=(24.0,))
    assert claimed(db, "gpu-box").job.name == "g1"
    assert db.claim("cpu", T0) is None
    assert db.why_waiting(job_id("g2"), T0) == [
        WaitReason(host="cpu", reason="waits for a CUDA host (gpu-box is online)"),
        WaitReason(host="gpu-box", reason="all 1 slot busy"),
    ]


def test_why_waiting_calls_an_idle_capable_host_eligible_and_says_what_its_next_claim_takes(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a"), job("b"), job("c"), job("d", after=("a",))), T0)
    bring_online(db, "h")
    assert db.why_waiting(job_id("a"), T0) == [WaitReason(host="h", reason="eligible; its next claim takes this job")]
    assert db.why_waiting(job_id("c"), T0) == [
        WaitReason(host="h", reason="eligible; 2 better-ranked jobs this host can run come first")]
    assert db.why_waiting(job_id("d"), T0) == [
        WaitReason(host=None, reason="dependency 'a' not completed (pending)"),
        WaitReason(host="h", reason="eligible by policy and capability once the job's own wait above ends")]


def test_why_waiting_is_empty_for_a_job_that_is_not_pending(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a")), T0)
    bring_online(db, "h")
    claimed(db, "h")
    assert db.why_waiting(job_id("a"), T0) == []


# --- lookups ---------------------------------------------------------------------------


def test_resolve_job_by_full_id_unique_prefix_or_name(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("gbt-realistic"), job("other")), T0)
    full = job_id("gbt-realistic")
    assert db.resolve_job(full) == full
    assert db.resolve_job(full[:8]) == full
    assert db.resolve_job("gbt-realistic") == full


def test_resolve_job_lists_the_candidates_of_an_ambiguous_prefix(db: CoordinatorState) -> None:
    jobs = [job(f"j{i}") for i in range(40)]
    db.apply_manifest(manifest(*jobs), T0)
    by_first: dict[str, list[JobSpec]] = {}
    for j in jobs:
        by_first.setdefault(j.id[0], []).append(j)
    prefix, group = next((k, v) for k, v in by_first.items() if len(v) > 1)
    with pytest.raises(AmbiguousError) as info:
        db.resolve_job(prefix)
    assert all(f"{j.name} ({j.id[:12]})" in str(info.value) for j in group)
    assert sorted(info.value.candidates) == sorted((j.id, j.name) for j in group)
    with pytest.raises(NotFoundError):
        db.resolve_job("no-such-job")
    with pytest.raises(NotFoundError):
        db.resolve_job("")


def test_resolve_job_prefers_the_manifest_job_when_an_orphan_shares_its_name(db: CoordinatorState) -> None:
    old = JobSpec(id="1" * 64, name="gbt", model="gbt", mode="m", hyper={})
    new = JobSpec(id="2" * 64, name="gbt", model="gbt", mode="m", hyper={"depth": 3})
    db.apply_manifest(manifest(old), T0)
    db.apply_manifest(manifest(new), T0)
    assert db.resolve_job("gbt") == new.id


def test_jobs_filters_by_status_and_refuses_an_unknown_one(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a"), job("b")), T0)
    db.cancel(job_id("b"), T0)
    assert [j.name for j in db.jobs()] == ["a", "b"]
    assert [j.name for j in db.jobs("cancelled")] == ["b"]
    with pytest.raises(BadRequestError):
        db.jobs("sleeping")
    with pytest.raises(NotFoundError):
        db.job("0" * 64)


# --- request memory -----------------------------------------------------------------------


def test_remembered_reply_survives_a_restart_and_is_pruned_when_old(state_target: str) -> None:
    first = CoordinatorState(state_target)
    assert first.state.remembered_reply("agent/h/claim/r1") is None
    first.state.remember_reply("agent/h/claim/r1", encode({"ok": True, "job": None}), T0)
    first.state.remember_reply("agent/h/claim/r2", encode({"ok": True, "job": None}), T0 + 100)
    first.close()
    second = CoordinatorState(state_target)
    assert second.state.remembered_reply("agent/h/claim/r1") == {"ok": True, "job": None}
    assert second.state.prune_replies(T0 + 50) == 1
    assert second.state.remembered_reply("agent/h/claim/r1") is None
    assert second.state.remembered_reply("agent/h/claim/r2") is not None
    second.close()


# --- transactions and change events ---------------------------------------------------------


def test_changes_are_handed_out_once_after_commit_oldest_first(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a")), T0)
    bring_online(db, "h")
    grant = claimed(db, "h", T0 + 1)
    db.renew(job_id("a"), grant.lease_id, "h", T0 + 2)
    changes = db.take_changes()
    assert [(c.from_status, c.to, c.host, c.ts) for c in changes] == [
        (None, "pending", None, T0), ("pending", "claimed", "h", T0 + 1), ("claimed", "running", "h", T0 + 2)]
    assert all(c.job_id == job_id("a") and c.reason for c in changes)
    assert [c.seq for c in changes] == sorted(c.seq for c in changes)
    assert db.take_changes() == []


def test_changes_of_a_rolled_back_transaction_are_dropped(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a")), T0)
    db.take_changes()
    with pytest.raises(RuntimeError), db.transaction():
        db.cancel(job_id("a"), T0)
        assert db.job(job_id("a")).status == "cancelled"
        raise RuntimeError("handler failed after the write")
    assert db.job(job_id("a")).status == "pending"
    assert db.take_changes() == []


def test_changes_cannot_be_taken_inside_a_transaction(db: CoordinatorState) -> None:
    with db.transaction(), pytest.raises(RuntimeError):
        db.take_changes()


def test_nested_transaction_joins_the_outer_one_and_a_failed_inner_one_undoes_only_itself(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("a"), job("b")), T0)
    db.take_changes()
    with db.transaction():
        db.cancel(job_id("a"), T0)
        with pytest.raises(RuntimeError), db.transaction():
            db.cancel(job_id("b"), T0)
            raise RuntimeError("inner step failed")
    assert (db.job(job_id("a")).status, db.job(job_id("b")).status) == ("cancelled", "pending")
    assert [(c.job_id, c.to) for c in db.take_changes()] == [(job_id("a"), "cancelled")]

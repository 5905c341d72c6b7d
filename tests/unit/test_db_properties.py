"""Random sequences of claim, renew, expiry, complete, fail, cancel, requeue, presence and reload
against a real SQLite file and a real PostgreSQL database, checking the invariants the coordinator
relies on after every step."""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from mqfleet.coordinator.scheduler import first_eligible
from mqfleet.coordinator.tables.rows import spec_from_json
from mqfleet.errors import IllegalTransitionError, LeaseLostError
from mqfleet.lifecycle import LEASED, TERMINAL, Cause, JobStatus, counts_against_budget
from mqfleet.local.postgres import LocalPostgres
from mqfleet.manifest.types import HostPolicy
from mqfleet.wire.requests import Grant
from tests.fixtures.state import CoordinatorState
from tests.unit.test_db import ART, T0, advert, job, manifest

MAX_ATTEMPTS = 3
#: A pool of jobs with a dependency chain, CUDA needs and preferences; each reload takes a subset.
POOL = [
    job("a"),
    job("b", after=("a",)),
    job("c", require_cuda=True, priority=2),
    job("d", prefer_cuda=True),
    job("e", model="mlp"),
    job("f", priority=-1, min_ram_gib=32),
]
HOSTS = {"cpu": advert("cpu"), "gpu": advert("gpu", cuda=True, vram=(24.0,), ram_gib=64, slots=2), "pi": advert("pi", ram_gib=4)}
POLICIES = (HostPolicy(id="pi", deny_jobs=("mlp",)),)
# a chosen subset must keep each job's dependency, as a validated manifest would
SUBSETS = st.sets(st.sampled_from(range(len(POOL)))).map(lambda s: sorted(s | ({0} if 1 in s else set())))


class LeaseMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.db = CoordinatorState(self.make_target())
        self.now = T0
        self.known: set[str] = set()
        self.grants: list[Grant] = []  # every grant ever, stale ones included
        self.requeued: str | None = None
        self.terminal: dict[str, tuple[Any, ...]] = {}
        for host, ad in HOSTS.items():
            self.db.record_advert(host, ad, self.now)
            self.db.record_presence(host, True, self.now)
        self._apply(list(range(len(POOL))))

    def make_target(self) -> str:
        """Where this example's state lives: a fresh SQLite file (PostgreSQL below)."""
        return str(Path(self.tmp.name) / "state.db")

    def teardown(self) -> None:
        self.db.close()
        self.tmp.cleanup()

    def _apply(self, indices: list[int]) -> None:
        jobs = [POOL[i] for i in indices]
        self.db.apply_manifest(manifest(*jobs, hosts=POLICIES, max_attempts=MAX_ATTEMPTS, lease_s=30.0, grace_s=5.0), self.now)
        self.known |= {j.id for j in jobs}

    def _is_current(self, grant: Grant) -> bool:
        lease = self.db.lease(grant.job.id)
        return lease is not None and lease.lease_id == grant.lease_id and lease.host == grant.job.host

    def _first_eligible(self, host: str) -> str | None:
        """The job `scheduler.first_eligible` picks over every claimable pending job: the definition that the
        claim's walk by requirement set must agree with."""
        assert self.db.manifest is not None
        views = self.db.hosts_table.views(self.db.manifest.hosts)
        rows = self.db.state.read(
            "SELECT seq, spec, id, failed_hosts FROM jobs t WHERE status = 'pending' AND blocked IN (0, 2) "
            "AND NOT EXISTS (SELECT 1 FROM retries r WHERE r.job_id = t.id AND r.not_before_ts > ?)", (self.now,))
        failed = {r[2]: frozenset(json.loads(r[3])) for r in rows}
        found = first_eligible([(r[0], spec_from_json(r[1])) for r in rows], next(v for v in views if v.id == host), views,
                               commit=self.db.manifest.fleet.commit, failed=failed)
        return found.id if found is not None else None

    @rule(host=st.sampled_from(sorted(HOSTS)))
    def claim(self, host: str) -> None:
        expected = self._first_eligible(host)
        grant = self.db.claim(host, self.now)
        assert (grant.job.id if grant is not None else None) == expected
        if grant is not None:
            assert grant.job.status == "claimed" and grant.job.host == host
            self.grants.append(grant)

    @precondition(lambda self: self.grants)
    @rule(data=st.data(), progress=st.none() | st.floats(0, 1))
    def renew(self, data: st.DataObject, progress: float | None) -> None:
        grant = data.draw(st.sampled_from(self.grants))
        current = self._is_current(grant)
        try:
            expires = self.db.renew(grant.job.id, grant.lease_id, _host(grant), self.now,
                                    None if progress is None else {"progress": progress})
        except LeaseLostError:
            assert not current
        else:
            assert current and expires == self.now + 30.0
            assert self.db.job(grant.job.id).status == "running"

    @rule(seconds=st.sampled_from([1.0, 6.0, 29.0, 31.0]))
    def advance_clock(self, seconds: float) -> None:
        self.now += seconds
        live = {j: self.db.lease(j) for j in self.known}
        expired = self.db.expire_leases(self.now)
        assert sorted(expired) == sorted(j for j, lease in live.items() if lease and lease.expires_ts <= self.now)

    @rule(host=st.sampled_from(sorted(HOSTS)), online=st.booleans())
    def presence(self, host: str, online: bool) -> None:
        self.db.record_presence(host, online, self.now)

    @precondition(lambda self: self.grants)
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        grant = data.draw(st.sampled_from(self.grants))
        current = self._is_current(grant)
        try:
            row = self.db.complete(grant.job.id, grant.lease_id, _host(grant), ART, self.now)
        except LeaseLostError:
            assert not current
        else:
            assert current and row.status == "completed"

    @precondition(lambda self: self.grants)
    @rule(data=st.data(), cause=st.sampled_from([Cause.APP, Cause.SHUTDOWN, Cause.LOST, Cause.PREEMPTED, Cause.OOM]))
    def fail(self, data: st.DataObject, cause: Cause) -> None:
        grant = data.draw(st.sampled_from(self.grants))
        current = self._is_current(grant)
        before = self.db.job(grant.job.id).attempts
        try:
            self.db.fail(grant.job.id, grant.lease_id, _host(grant), cause, exit_code=1, output_tail="", error="", now=self.now)
        except LeaseLostError:
            assert not current
        else:
            assert current
            assert self.db.job(grant.job.id).attempts == before + (1 if counts_against_budget(cause) else 0)

    @rule(index=st.sampled_from(range(len(POOL))))
    def cancel(self, index: int) -> None:
        job_id = POOL[index].id
        if job_id not in self.known:
            return
        was = self.db.job(job_id).status
        try:
            self.db.cancel(job_id, self.now)
        except IllegalTransitionError:
            assert JobStatus(was) in TERMINAL
        else:
            assert JobStatus(was) not in TERMINAL and self.db.job(job_id).status == "cancelled"

    @rule(index=st.sampled_from(range(len(POOL))))
    def requeue(self, index: int) -> None:
        job_id = POOL[index].id
        if job_id not in self.known:
            return
        was = self.db.job(job_id).status
        try:
            self.db.requeue(job_id, self.now)
        except IllegalTransitionError:
            assert was not in ("failed", "cancelled")
        else:
            assert was in ("failed", "cancelled")
            self.requeued = job_id

    @rule(indices=SUBSETS)
    def reload(self, indices: list[int]) -> None:
        self._apply(indices)

    @invariant()
    def every_job_of_every_manifest_still_has_a_row_with_a_valid_status(self) -> None:
        rows = {r.id: r for r in self.db.jobs()}
        assert self.known <= set(rows)
        assert all(JobStatus(r.status) for r in rows.values())
        assert sum(self.db.counts().values()) == len(rows)

    @invariant()
    def leased_statuses_and_only_they_hold_one_lease(self) -> None:
        held = [j for h in self.db.hosts() for j in h.jobs]
        assert len(held) == len(set(held))
        for row in self.db.jobs():
            lease = self.db.lease(row.id)
            assert (lease is not None) == (JobStatus(row.status) in LEASED), row
            if lease is not None:
                assert lease.host == row.host

    @invariant()
    def attempts_never_exceed_the_budget(self) -> None:
        assert all(0 <= r.attempts <= r.max_attempts for r in self.db.jobs())

    @invariant()
    def host_slots_are_never_overbooked(self) -> None:
        assert all(h.slots_used <= h.slots for h in self.db.hosts())

    @invariant()
    def a_terminal_job_changes_only_by_requeue(self) -> None:
        now_terminal = {}
        for r in self.db.jobs():
            key = (r.status, r.attempts, r.artifact, r.error, r.host)
            old = self.terminal.get(r.id)
            if old is not None and r.id != self.requeued:
                assert key == old, (r.id, old, key)
            if JobStatus(r.status) in TERMINAL:
                now_terminal[r.id] = key
            if r.status == "completed":
                assert r.artifact == ART.sha256
        self.terminal = now_terminal
        self.requeued = None


LeaseMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=30, deadline=None)
test_lease_state_machine_keeps_its_invariants = LeaseMachine.TestCase


def test_lease_state_machine_keeps_its_invariants_on_postgresql(postgres: LocalPostgres) -> None:
    class OnPostgres(LeaseMachine):
        def make_target(self) -> str:
            return postgres.create_database(f"p_{uuid.uuid4().hex[:16]}")

    run_state_machine_as_test(OnPostgres, settings=settings(max_examples=10, stateful_step_count=30, deadline=None))


def _host(grant: Grant) -> str:
    """The host a grant went to (a grant always names it)."""
    assert grant.job.host is not None
    return grant.job.host

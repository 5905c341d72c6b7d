"""A job a host can run is never starved behind better-ranked jobs that no host can run, however many
(issue 25, item 1), and `why_waiting` says what the host's next claim takes.

Each test puts more than the old candidate cap (512) of better-ranked jobs ahead of the runnable one,
kept from every online host by one rule that only Python checks: before, the claim examined 512 of
them and answered "no job", while `show` called the host eligible. Each runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from mqfleet.coordinator.tables.claims import MANY_SETS
from mqfleet.lifecycle import Cause
from mqfleet.manifest.types import HostPolicy, JobSpec
from tests.fixtures.state import CoordinatorState
from tests.unit.test_db import T0, bring_online, claimed, job, job_id, manifest

#: More than the old CLAIM_MAX_CANDIDATES (512).
AHEAD = 600
COMMIT = "abcdef1234567890abcdef1234567890abcdef12"


@pytest.fixture
def db(state_target: str) -> Iterator[CoordinatorState]:
    database = CoordinatorState(state_target)
    yield database
    database.close()


def ahead(**kw: Any) -> list[JobSpec]:
    """AHEAD jobs that outrank the runnable ones (priority 5), with the rule's fields."""
    return [job(f"ahead-{i}", priority=5, **kw) for i in range(AHEAD)]


def host_line(db: CoordinatorState, name: str, host: str, now: float = T0) -> str:
    return next(w.reason for w in db.why_waiting(job_id(name), now) if w.host == host)


def test_a_runnable_job_is_claimed_behind_600_jobs_that_need_a_newer_torch(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(*ahead(min_torch="99.0"), job("runnable"), job("later", priority=-1)), T0)
    bring_online(db, "h")
    assert host_line(db, "runnable", "h") == "eligible; its next claim takes this job"
    assert host_line(db, "later", "h") == "eligible; 1 better-ranked job this host can run comes first"
    assert host_line(db, "ahead-0", "h") == "needs torch >= 99.0; host has 2.13.0"
    assert claimed(db, "h").job.name == "runnable"


def test_a_runnable_job_is_claimed_behind_600_same_commit_jobs_after_the_fleets_commit_moved(
    db: CoordinatorState,
) -> None:
    # the hosts still run the old commit: every same_commit job waits until they are updated
    db.apply_manifest(manifest(*ahead(same_commit=True), job("runnable"), commit=COMMIT), T0)
    bring_online(db, "h", git_commit="0123456789abcdef", slots=2)
    bring_online(db, "h2", git_commit="0123456789abcdef")
    assert host_line(db, "runnable", "h") == "eligible; its next claim takes this job"
    assert claimed(db, "h").job.name == "runnable"
    assert db.claim("h", T0) is None and db.claim("h2", T0) is None
    assert host_line(db, "ahead-0", "h") == "needs commit abcdef123456; host has 0123456789ab"


@pytest.mark.parametrize("cuda_host", ["busy", "idle"])
def test_a_runnable_job_is_claimed_behind_600_prefer_cuda_jobs_while_a_cuda_host_is_online(
    db: CoordinatorState, cuda_host: str
) -> None:
    held = [job("held", require_cuda=True, priority=9)] if cuda_host == "busy" else []
    db.apply_manifest(manifest(*held, *ahead(prefer_cuda=True), job("runnable")), T0)
    bring_online(db, "gpu", cuda=True, vram=(24.0,))
    bring_online(db, "cpu")
    if held:
        assert claimed(db, "gpu").job.name == "held"
    assert host_line(db, "ahead-0", "cpu") == "waits for a CUDA host (gpu is online)"
    assert host_line(db, "runnable", "cpu") == "eligible; its next claim takes this job"
    assert claimed(db, "cpu").job.name == "runnable"
    assert db.claim("cpu", T0) is None


def test_a_runnable_job_is_claimed_behind_600_retries_that_avoid_the_host_they_failed_on(db: CoordinatorState) -> None:
    n = AHEAD + 100
    jobs = [job(f"ahead-{i}", priority=5) for i in range(n)]
    db.apply_manifest(manifest(*jobs, job("runnable"), hosts=(HostPolicy(id="h1", slots=n),)), T0)
    bring_online(db, "h1")
    for grant in [claimed(db, "h1") for _ in range(n)]:
        db.fail(grant.job.id, grant.lease_id, "h1", Cause.APP, exit_code=1, output_tail="", error="boom", now=T0)
    # h2 has failed none of them, so their retries wait for it, and it is busy with one of them
    bring_online(db, "h2")
    assert claimed(db, "h2").job.name == "ahead-0"
    assert host_line(db, "ahead-1", "h1") == "an attempt failed on this host; its retry prefers h2, which has not failed it"
    assert host_line(db, "runnable", "h1") == "eligible; its next claim takes this job"
    assert claimed(db, "h1").job.name == "runnable"
    # with no other host left to prefer, h1 takes the retries again, best-ranked first
    db.record_presence("h2", False, T0)
    assert claimed(db, "h1").job.name == "ahead-1"


def test_the_best_ranked_of_several_runnable_jobs_is_claimed_behind_600_that_no_host_can_run(
    db: CoordinatorState,
) -> None:
    runnable = [job("low", priority=-2), job("mid-old", priority=1), job("mid-new", priority=1), job("top", priority=3)]
    db.apply_manifest(manifest(*ahead(min_torch="99.0"), *runnable, hosts=(HostPolicy(id="h", slots=4),)), T0)
    bring_online(db, "h")
    assert host_line(db, "low", "h") == "eligible; 3 better-ranked jobs this host can run come first"
    assert [claimed(db, "h").job.name for _ in range(4)] == ["top", "mid-old", "mid-new", "low"]
    assert db.claim("h", T0) is None


def test_a_claim_behind_more_sets_than_it_reads_quietly_still_gets_the_job_and_says_so_once(
    db: CoordinatorState, caplog: pytest.LogCaptureFixture
) -> None:
    # every job asks for another torch: as many sets as jobs, the costliest shape for a claim
    sets = [job(f"torch-{i}", priority=5, min_torch=f"99.{i}") for i in range(MANY_SETS + 1)]
    db.apply_manifest(manifest(*sets, job("runnable"), job("next"), hosts=(HostPolicy(id="h", slots=2),)), T0)
    bring_online(db, "h")
    with caplog.at_level(logging.WARNING, logger="mqfleet.coordinator.tables.claims"):
        assert [claimed(db, "h", T0 + i).job.name for i in range(2)] == ["runnable", "next"]
    warnings = [r.getMessage() for r in caplog.records if "sets of pending jobs" in r.getMessage()]
    assert len(warnings) == 1 and f"read {MANY_SETS + 2} sets" in warnings[0], warnings


def test_a_runnable_job_is_claimed_behind_600_jobs_for_another_cpu_architecture(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(*ahead(arch=("aarch64",)), job("runnable")), T0)
    bring_online(db, "h", arch="x86_64")
    assert host_line(db, "ahead-0", "h") == "arch x86_64 not in ['aarch64']"
    assert host_line(db, "runnable", "h") == "eligible; its next claim takes this job"
    assert claimed(db, "h").job.name == "runnable"
    bring_online(db, "pi", arch="aarch64")
    assert claimed(db, "pi").job.name == "ahead-0"

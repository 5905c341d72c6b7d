"""The coordinator's record of each job's latest checkpoint: who may write one, replacement, discard, garbage."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from mqfleet.coordinator.tables.checkpoints import CheckpointBook
from mqfleet.coordinator.tables.garbage import UploadWindow, collect_garbage
from mqfleet.coordinator.verbs.checkpoints import with_checkpoint
from mqfleet.coordinator.verbs.context import HandlerContext
from mqfleet.errors import LeaseLostError
from mqfleet.lifecycle import Cause, JobStatus
from mqfleet.store.files import FileStore
from mqfleet.wire.replies import CheckpointDetail, CheckpointStartRecord
from mqfleet.wire.requests import Grant, JobRow, TrainerRef
from mqfleet.wire.topics import JsonObject
from tests.fixtures.state import CoordinatorState
from tests.unit.test_db import T0, bring_online, job, job_id, manifest

SHA1, SHA2 = "11" * 32, "22" * 32


@pytest.fixture
def db(state_target: str) -> Iterator[CoordinatorState]:
    database = CoordinatorState(state_target)
    database.apply_manifest(manifest(job("a")), T0)
    bring_online(database, "h1")
    bring_online(database, "h2")
    yield database
    database.close()


def _grant(spec: JsonObject) -> Grant:
    """A claim's grant of job `a` before its checkpoint fields are filled in."""
    row = JobRow(id=job_id("a"), name="a", status=JobStatus.CLAIMED, model="gbt", mode="realistic", host="h1")
    return Grant(job=row, spec=spec, trainer=TrainerRef(name="gbt"), lease_id="l" * 32, attempt=1, expires_ts=T0 + 90,
                 lease_s=90.0)


def _save(book: CheckpointBook, sha256: str, attempt: int = 1, now: float = T0) -> None:
    book.record(job_id("a"), attempt=attempt, host="h1", sha256=sha256, size=10, key=f"checkpoints/x/{sha256}",
                progress={"epoch": 3}, now=now)


def test_the_current_lease_may_write_a_checkpoint_and_a_stranger_may_not(db: CoordinatorState) -> None:
    book = CheckpointBook(db.state)
    grant = db.claim("h1", T0)
    assert grant is not None
    assert book.check_writer(job_id("a"), grant.lease_id, "h1") == 1
    with pytest.raises(LeaseLostError):
        book.check_writer(job_id("a"), grant.lease_id, "h2")
    with pytest.raises(LeaseLostError):
        book.check_writer(job_id("a"), "not-a-lease", "h1")


def test_an_ended_attempt_may_still_sync_until_another_attempt_holds_the_job(db: CoordinatorState) -> None:
    book = CheckpointBook(db.state)
    first = db.claim("h1", T0)
    assert first is not None
    db.fail(job_id("a"), first.lease_id, "h1", Cause.SHUTDOWN, exit_code=None, output_tail="", error="", now=T0 + 1)
    # Pending, held by nobody: a final sync that raced the hand-back still counts.
    assert book.check_writer(job_id("a"), first.lease_id, "h1") == 1
    second = db.claim("h2", T0 + 2)
    assert second is not None
    with pytest.raises(LeaseLostError):
        book.check_writer(job_id("a"), first.lease_id, "h1")


def test_an_ended_attempt_may_not_overwrite_a_later_attempts_checkpoint(db: CoordinatorState) -> None:
    book = CheckpointBook(db.state)
    first = db.claim("h1", T0)
    assert first is not None
    db.fail(job_id("a"), first.lease_id, "h1", Cause.SHUTDOWN, exit_code=None, output_tail="", error="", now=T0 + 1)
    second = db.claim("h2", T0 + 2)
    assert second is not None
    _save(book, SHA2, attempt=2)
    db.fail(job_id("a"), second.lease_id, "h2", Cause.SHUTDOWN, exit_code=None, output_tail="", error="", now=T0 + 3)
    with pytest.raises(LeaseLostError, match="only the latest attempt"):
        book.check_writer(job_id("a"), first.lease_id, "h1")


def test_a_new_checkpoint_replaces_the_old_whose_object_becomes_garbage(db: CoordinatorState) -> None:
    book = CheckpointBook(db.state)
    _save(book, SHA1)
    _save(book, SHA2, now=T0 + 5)
    latest = book.latest(job_id("a"))
    assert latest is not None and latest.saved.sha256 == SHA2 and latest.saved.progress == {"epoch": 3}
    assert latest.key == f"checkpoints/x/{SHA2}"
    assert book.garbage() == [f"checkpoints/x/{SHA1}"]
    book.forget_garbage(book.garbage())
    assert book.garbage() == []


def test_discard_forgets_the_checkpoint_and_queues_its_object(db: CoordinatorState) -> None:
    book = CheckpointBook(db.state)
    assert book.discard(job_id("a"), T0, "nothing") is False
    _save(book, SHA1)
    assert book.discard(job_id("a"), T0 + 1, "job completed") is True
    assert book.latest(job_id("a")) is None
    assert book.garbage() == [f"checkpoints/x/{SHA1}"]
    assert book.detail(job_id("a")) == CheckpointDetail(latest=None, last_start=None)


def test_detail_shows_size_and_last_sync_and_how_the_last_attempt_started(db: CoordinatorState) -> None:
    book = CheckpointBook(db.state)
    _save(book, SHA1, now=T0 + 7)
    book.note_start(job_id("a"), attempt=2, resumed=False, from_attempt=1, note="started fresh: sha256", now=T0 + 8)
    detail = book.detail(job_id("a"))
    assert detail.latest is not None and detail.latest.size == 10 and detail.latest.saved_ts == T0 + 7
    assert "key" not in detail.to_wire()["latest"]
    assert detail.last_start == CheckpointStartRecord(attempt=2, resumed=False, from_attempt=1, from_progress=None,
                                                      note="started fresh: sha256", ts=T0 + 8)
    book.note_start(job_id("a"), attempt=3, resumed=True, from_attempt=1, note="resumed", now=T0 + 9,
                    from_progress={"epoch": 3})
    assert [s.attempt for s in book.starts(job_id("a"))] == [2, 3]
    last_start = book.detail(job_id("a")).last_start
    assert last_start is not None and last_start.from_progress == {"epoch": 3}
    assert book.starts(job_id("b")) == [], "each job's starts are its own"


def test_the_tables_survive_a_reopen(state_target: str) -> None:
    database = CoordinatorState(state_target)
    database.apply_manifest(manifest(job("a")), T0)
    _save(CheckpointBook(database.state), SHA1)
    database.close()
    again = CoordinatorState(state_target)
    try:
        latest = CheckpointBook(again.state).latest(job_id("a"))
        assert latest is not None and latest.saved.sha256 == SHA1
    finally:
        again.close()


def test_gc_keeps_the_latest_checkpoint_object_and_collects_a_replaced_one(db: CoordinatorState, tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    store.check()
    book = CheckpointBook(db.state)
    (tmp_path / "b").write_bytes(b"bundle")
    old_key, new_key = store.checkpoint_key_for(job_id("a"), SHA1), store.checkpoint_key_for(job_id("a"), SHA2)
    for key in (old_key, new_key):
        store.put_file(key, tmp_path / "b")
    book.record(job_id("a"), attempt=1, host="h1", sha256=SHA2, size=6, key=new_key, progress=None, now=T0)
    report = collect_garbage(db.state, store, UploadWindow(), dry_run=False, now=T0)
    assert [o.key for o in report.objects] == [old_key]
    assert store.stat(new_key) == 6 and store.stat(old_key) is None


def test_the_grant_carries_the_interval_the_limit_and_the_latest_checkpoint(db: CoordinatorState, tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    book = CheckpointBook(db.state)
    fleet_manifest = manifest(job("a"), checkpoint_interval_s=30.0, checkpoint_max_mib=64.0)
    context = cast(HandlerContext, SimpleNamespace(manifest=fleet_manifest, checkpoints=book, store=store))
    spec = job("a").to_dict()
    first = with_checkpoint(context, _grant(spec))
    assert (first.resumable, first.checkpoint_interval_s, first.checkpoint_max_mib, first.checkpoint) == (True, 30.0, 64.0, None)
    _save(book, SHA1)
    later = with_checkpoint(context, _grant({**spec, "checkpoint_interval_s": 5.0}))
    assert later.checkpoint_interval_s == 5.0, "a job's own interval wins over the fleet's"
    given = later.checkpoint
    assert given is not None
    assert given.sha256 == SHA1 and given.attempt == 1 and given.url.startswith("file:")
    stateless = replace(fleet_manifest, trainers={"gbt": replace(fleet_manifest.trainers["gbt"], resumable=False)})
    context = cast(HandlerContext, SimpleNamespace(manifest=stateless, checkpoints=book, store=store))
    assert with_checkpoint(context, _grant(spec)).resumable is False
    assert with_checkpoint(context, _grant(spec)).checkpoint is None


def test_attempt_one_may_not_write_after_attempts_two_and_three_ended_without_a_checkpoint(db: CoordinatorState) -> None:
    book = CheckpointBook(db.state)
    leases = []
    for n, host in enumerate(["h1", "h2", "h1"]):
        grant = db.claim(host, T0 + 10 * n)
        assert grant is not None and grant.attempt == n + 1
        db.fail(job_id("a"), grant.lease_id, host, Cause.SHUTDOWN, exit_code=None, output_tail="", error="",
                now=T0 + 10 * n + 1)
        leases.append((grant.lease_id, host))
    # Nobody saved a checkpoint: only attempt 3, whose lease ended last, may still write one.
    with pytest.raises(LeaseLostError, match="only the latest attempt"):
        book.check_writer(job_id("a"), *leases[0])
    with pytest.raises(LeaseLostError, match="only the latest attempt"):
        book.check_writer(job_id("a"), *leases[1])
    assert book.check_writer(job_id("a"), *leases[2]) == 3

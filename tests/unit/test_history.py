"""AttemptHistory against a real SQLite file and a real PostgreSQL database: bounded logs with a marker, evenly thinned progress,
usage per attempt and per host, and retention that prunes only what is old and ended."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from mqfleet import defaults
from mqfleet.coordinator.tables.history import AttemptHistory
from mqfleet.lifecycle import Cause
from mqfleet.wire.replies import HostUsage
from mqfleet.wire.reports import Usage
from mqfleet.wire.topics import JsonObject
from tests.fixtures.common import held_by_another_thread
from tests.fixtures.state import CoordinatorState as Database
from tests.unit.test_db import T0, advert, job, job_id, manifest


@pytest.fixture
def db(state_target: str) -> Database:
    d = Database(state_target)
    d.apply_manifest(manifest(job("a"), job("b"), job("c")), T0)
    d.record_advert("h1", advert("h1", slots=3), T0)
    d.record_presence("h1", True, T0)
    return d


def test_lines_past_the_bound_drop_the_oldest_and_leave_a_marker(db: Database) -> None:
    history = AttemptHistory(db.state)
    for start in range(0, 30, 7):
        history.append_lines("j", 1, [f"line {i}" for i in range(start, min(start + 7, 30))], max_lines=10)
    lines = history.lines("j", 1)
    assert lines[0].startswith("[mqfleet: 20 earlier line(s) dropped")
    assert lines[1:] == [f"line {i}" for i in range(20, 30)]
    assert history.lines("j", 2) == []
    assert history.attempts_with_lines("j") == [1]


def test_lines_outlive_a_new_connection_to_the_same_file(db: Database, state_target: str) -> None:
    AttemptHistory(db.state).append_lines("j", 1, ["kept"], max_lines=10)
    db.close()
    again = AttemptHistory(Database(state_target).state)
    assert again.lines("j", 1) == ["kept"]


def test_progress_past_the_bound_is_thinned_evenly_and_resent_reports_are_ignored(db: Database) -> None:
    history = AttemptHistory(db.state)
    cap = defaults.PROGRESS_POINTS_MAX
    total = cap * 3 + 7
    for start in range(1, total + 1, 50):
        batch: list[tuple[int, float, JsonObject]] = [
            (seq, T0 + seq, {"loss": 1.0 / seq}) for seq in range(start, min(start + 50, total + 1))]
        history.append_progress("j", 1, batch)
        history.append_progress("j", 1, batch)  # a renewal resent after a lost reply
    kept = [p.seq for p in history.progress("j")]
    assert cap // 2 <= len(kept) <= cap + 1
    assert kept[0] == 1 and kept[-1] == total, "the first and the newest report are kept"
    kept = kept[:-1]
    gaps = {b - a for a, b in zip(kept, kept[1:], strict=False)}
    assert len(gaps) == 1, f"uneven thinning: gaps {sorted(gaps)}"
    assert len(kept) == len(set(kept))


def test_usage_is_kept_per_attempt_and_summed_per_host(db: Database) -> None:
    history = AttemptHistory(db.state)
    grants = [grant for grant in (db.claim("h1", T0), db.claim("h1", T0)) if grant is not None]
    assert len(grants) == 2
    for i, grant in enumerate(grants):
        assert grant is not None
        usage = Usage(wall_s=10 + i, cpu_s=2.5, max_rss_bytes=1000 * (i + 1), gpu_mem_max_bytes=None)
        history.record_usage(grant.job.id, grant.attempt, usage)
    assert history.usage_of(grants[0].job.id) == {1: Usage(wall_s=10.0, cpu_s=2.5, max_rss_bytes=1000,
                                                                   gpu_mem_max_bytes=None)}
    assert history.usage_by_host()["h1"] == HostUsage(attempts=2, wall_s=21.0, cpu_s=5.0, max_rss_bytes=2000,
                                                      gpu_mem_max_bytes=None)


def test_prune_removes_old_ended_jobs_rows_and_keeps_recent_and_live_ones(db: Database) -> None:
    history = AttemptHistory(db.state)
    old = db.claim("h1", T0)
    recent = db.claim("h1", T0)
    live = db.claim("h1", T0)
    assert old and recent and live
    day = 86400.0
    db.fail(old.job.id, old.lease_id, "h1", Cause.CANCELLED, exit_code=None, output_tail="", error="", now=T0)
    db.fail(recent.job.id, recent.lease_id, "h1", Cause.CANCELLED, exit_code=None, output_tail="", error="",
            now=T0 + 25 * day)
    for grant in (old, recent, live):
        history.append_lines(grant.job.id, grant.attempt, [f"l{i}" for i in range(50)], max_lines=1000)
        history.append_progress(grant.job.id, grant.attempt, [(i, T0, {"loss": 1.0}) for i in range(1, 30)])
    now = T0 + 31 * day
    db.take_changes()  # events are pruned only once published
    deleted = history.prune(now - 30 * day, batch_rows=7)  # tiny batches: many short transactions
    assert deleted >= 1 + 29  # one stored batch of 50 lines, 29 reports
    assert history.lines(old.job.id, old.attempt) == []
    assert history.progress(old.job.id) == []
    for grant in (recent, live):
        assert len(history.lines(grant.job.id, grant.attempt)) == 50
        assert len(history.progress(grant.job.id)) == 29
    with db.state.lock:
        events = [r[0] for r in db.state.conn.execute("SELECT ts FROM events")]
    assert events and min(events) >= now - 30 * day
    assert job_id("a") in {g.job.id for g in (old, recent, live)}
    with db.state.lock:
        count = db.state.conn.execute("SELECT COUNT(*) FROM events WHERE ts >= ?", (T0 + 25 * day,)).fetchone()
        assert count is not None and count[0] >= 1


def test_queued_lines_given_back_after_a_rollback_are_written_first_by_the_next_flush(db: Database) -> None:
    history = AttemptHistory(db.state)
    history.queue_lines("j", 1, ["a", "b"], max_lines=100)
    taken = history.take_queued()
    history.queue_lines("j", 1, ["c"], max_lines=100)
    with pytest.raises(RuntimeError), db.state.transaction():
        history.write_batches(taken, 100)
        raise RuntimeError("the completion was refused")
    history.requeue(taken)
    assert history.lines("j", 1) == []
    assert history.flush_lines(100) == 2
    assert history.lines("j", 1) == ["a", "b", "c"]


def test_usage_and_progress_of_an_ending_attempt_share_its_record_and_a_resent_usage_replaces_it(db: Database) -> None:
    history = AttemptHistory(db.state)
    grant = db.claim("h1", T0)
    assert grant is not None
    jid, attempt = grant.job.id, grant.attempt
    history.append_lines(jid, attempt, ["a", "b"], max_lines=10)
    first = Usage(wall_s=1.0, cpu_s=0.5, max_rss_bytes=10, gpu_mem_max_bytes=None)
    history.append_progress(jid, attempt, [(1, T0, {"loss": 1.0}), (2, T0, {"loss": 0.5})], usage=first)
    assert history.usage_of(jid) == {attempt: first}
    assert [p.seq for p in history.progress(jid)] == [1, 2]
    assert history.lines(jid, attempt) == ["a", "b"], "the usage upsert keeps the line count"
    history.append_progress(jid, attempt, [(3, T0, {"loss": 0.25})])
    assert history.usage_of(jid) == {attempt: first}, "reports without usage keep the stored usage"
    second = dataclasses.replace(first, cpu_s=0.75)
    history.append_progress(jid, attempt, [], usage=second)
    assert history.usage_of(jid) == {attempt: second}
    assert [p.seq for p in history.progress(jid)] == [1, 2, 3]


def test_the_host_a_claim_granted_is_known_without_a_query_and_other_hosts_are_not(db: Database) -> None:
    history = AttemptHistory(db.state)
    history.note_attempt("j", 2, "h1")
    assert history.known_attempt("j", "h1", 2) == 2
    assert history.known_attempt("j", "h2", 2) is None
    assert history.known_attempt("j", "h1", 1) is None
    assert history.known_attempt("j", "h1", None) is None
    grant = db.claim("h1", T0)
    assert grant is not None
    jid = grant.job.id
    assert history.known_attempt(jid, "h1", grant.attempt) is None, "not noted: asked of the database"
    assert history.attempt_of_host(jid, "h1", None) == grant.attempt
    assert history.known_attempt(jid, "h1", grant.attempt) == grant.attempt, "remembered once found"


def test_queueing_lines_never_waits_for_a_transaction_held_by_another_thread(db: Database) -> None:
    history = AttemptHistory(db.state)
    with held_by_another_thread(db.state.lock):
        queued = threading.Thread(target=history.queue_lines, args=("j", 1, ["line"], 10))
        queued.start()
        queued.join(5)
        assert not queued.is_alive(), "queue_lines waited for the state lock"
    assert history.flush_lines(10) == 1
    assert history.lines("j", 1) == ["line"]

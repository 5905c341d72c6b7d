"""What the coordinator remembers about attempts that fail (docs/RELIABILITY.md, "Jobs that misbehave").

- Retry back-off: a job whose attempt failed is not claimable before `retries.not_before_ts`, and
  `jobs.failed_hosts` names the hosts that failed it, so its next claim prefers another host.
- Host quarantine: a host whose attempts fail `quarantine_after` times in a row, over more than one
  job, claims nothing until an operator undrains it (`host_faults`); the change goes out on `events`
  through the `host_events` feed.
- Dependents that can never run: a pending job whose `after` dependency ended failed or cancelled;
  with `cancel_unsatisfiable` they are cancelled, and a requeue of the dependency brings them back.

Every function runs inside its caller's transaction and takes the time as `now`. Whether a host may
take a job stays in `scheduler`, which is pure; this module only keeps the facts it judges on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import NamedTuple, TypedDict

from mqfleet.coordinator import scheduler
from mqfleet.coordinator.sql.connection import SqlConnection, one_row
from mqfleet.coordinator.sql.sqlite import transition
from mqfleet.coordinator.tables.blocking import dependents, refresh_blocked
from mqfleet.lifecycle import FAULT_CAUSES, QUARANTINE_CAUSES, Cause, JobStatus
from mqfleet.manifest.types import FleetSettings
from mqfleet.wire.published import HostEvent
from mqfleet.wire.replies import Quarantine

logger = logging.getLogger(__name__)

#: The reason given to, and stored on, a job whose dependency can no longer complete.
NEVER_SATISFIED = "dependency never satisfied"
#: Failed attempts remembered per host; the quarantine looks at the last `quarantine_after` of them.
_STREAK_KEPT = 20
#: Jobs a cancel or restore walk may touch at most: dependency chains are finite, this bounds a bug.
_WALK_LIMIT = 100_000


class FailedAttempt(TypedDict):
    """One entry of a host's failure streak (`host_faults.streak`, a JSON list of these)."""

    job_id: str
    #: the job's name when it failed (the job may leave the manifest later)
    name: str
    cause: str
    ts: float


# --- retry back-off and the hosts a retry avoids -------------------------------------------------


def note_attempt_end(
    conn: SqlConnection, fleet: FleetSettings, *, job_id: str, host: str, cause: Cause, to: JobStatus,
    attempts: int, now: float,
) -> Quarantine | None:
    """Remember a failed attempt: the job's back-off and failed hosts, the host's failure streak.
    Returns the host's quarantine when this end quarantined it."""
    if cause in FAULT_CAUSES:
        not_before = now + fleet.backoff_s(attempts) if to is JobStatus.PENDING else now
        conn.execute(
            "INSERT INTO retries (job_id, not_before_ts) VALUES (?, ?) ON CONFLICT (job_id) "
            "DO UPDATE SET not_before_ts = excluded.not_before_ts",
            (job_id, not_before),
        )
        row = conn.execute("SELECT failed_hosts FROM jobs WHERE id = ?", (job_id,)).fetchone()
        failed: list[str] = json.loads(row[0]) if row else []
        marked = sorted({*failed, host})
        if cause is Cause.OOM:
            # its retry prefers a host that gives a job more memory than the limit it ran out under
            marked = scheduler.with_oom_floor(marked, oom_limit_gib(conn, job_id, host))
        if marked != failed:
            # part of the claim's index, sorted: the jobs that failed on the same hosts are judged as one set
            conn.execute("UPDATE jobs SET failed_hosts = ? WHERE id = ?", (json.dumps(marked), job_id))
    if cause in QUARANTINE_CAUSES:
        return _extend_streak(conn, fleet, host, job_id, cause, now)
    return None


def oom_limit_gib(conn: SqlConnection, job_id: str, host: str) -> float:
    """The memory limit an attempt of the job on `host` ran under: its `max_memory_gib`, or less when the host
    gives a job less (its advertised `max_memory_gib` or its RAM)."""
    row = conn.execute("SELECT j.spec, h.advert FROM jobs j LEFT JOIN hosts h ON h.id = ? WHERE j.id = ?",
                       (host, job_id)).fetchone()
    spec = json.loads(row[0]) if row else {}
    advert = json.loads(row[1]) if row and row[1] else {}
    view = scheduler.HostView(id=host, advert=advert if isinstance(advert, dict) else {}, online=False,
                              draining=False, slots=1, slots_used=0)
    limits = [view.job_memory_gib] if view.job_memory_gib > 0 else []
    asked = spec.get("max_memory_gib") if isinstance(spec, dict) else None
    if isinstance(asked, (int, float)) and not isinstance(asked, bool) and asked > 0:
        limits.append(float(asked))
    return min(limits, default=0.0)


def note_completion(conn: SqlConnection, job_id: str, host: str) -> None:
    """A completed attempt ends the job's retries and the host's failure streak."""
    forget_retries(conn, job_id)
    conn.execute("UPDATE host_faults SET streak = '[]' WHERE host = ? AND quarantined_ts IS NULL", (host,))


def forget_retries(conn: SqlConnection, job_id: str) -> None:
    """A requeued job starts afresh: no back-off, no host to avoid."""
    conn.execute("DELETE FROM retries WHERE job_id = ?", (job_id,))
    conn.execute("UPDATE jobs SET failed_hosts = '[]' WHERE id = ? AND failed_hosts != '[]'", (job_id,))


class RetryWait(NamedTuple):
    """What a job with a failed attempt waits for."""

    not_before_ts: float
    failed_hosts: frozenset[str]
    #: the host of its latest failed attempt
    last_failed_on: str


def retry_wait(conn: SqlConnection, job_id: str) -> RetryWait | None:
    """The back-off and failed hosts of a job with a failed attempt, or None."""
    row = conn.execute("SELECT r.not_before_ts, j.failed_hosts FROM retries r JOIN jobs j ON j.id = r.job_id "
                       "WHERE r.job_id = ?", (job_id,)).fetchone()
    if row is None:
        return None
    failed = sorted(json.loads(row[1]))
    last = conn.execute(f"SELECT host FROM attempts WHERE job_id = ? AND host IN ({','.join('?' * len(failed))}) "
                        "ORDER BY number DESC LIMIT 1", (job_id, *failed)).fetchone() if failed else None
    return RetryWait(float(row[0]), frozenset(failed), last[0] if last else "?")


def backoffs_ended(conn: SqlConnection, after: float, until: float) -> list[str]:
    """Pending jobs whose back-off ended in (after, until]: claimable again, so idle agents should hear of them."""
    rows = conn.execute(
        "SELECT r.job_id FROM retries r JOIN jobs j ON j.id = r.job_id "
        "WHERE r.not_before_ts > ? AND r.not_before_ts <= ? AND j.status = 'pending'",
        (after, until),
    ).fetchall()
    return [r[0] for r in rows]


# --- host quarantine -------------------------------------------------------------------------------


def _extend_streak(
    conn: SqlConnection, fleet: FleetSettings, host: str, job_id: str, cause: Cause, now: float
) -> Quarantine | None:
    row = conn.execute("SELECT streak, quarantined_ts FROM host_faults WHERE host = ?", (host,)).fetchone()
    # written only by this function, as a JSON list of FailedAttempt
    streak: list[FailedAttempt] = json.loads(row[0]) if row else []
    name_row = conn.execute("SELECT name FROM jobs WHERE id = ?", (job_id,)).fetchone()
    failure = FailedAttempt(job_id=job_id, name=name_row[0] if name_row else job_id[:12], cause=cause.value, ts=now)
    streak = [*streak, failure][-_STREAK_KEPT:]
    conn.execute(
        "INSERT INTO host_faults (host, streak) VALUES (?, ?) ON CONFLICT (host) DO UPDATE SET streak = excluded.streak",
        (host, json.dumps(streak)),
    )
    limit = fleet.quarantine_after
    if limit is None or (row is not None and row[1] is not None) or len(streak) < limit:
        return None
    last = streak[-limit:]
    # one job failing again and again is the job's fault; a host is to blame when it fails several
    if limit > 1 and len({f["job_id"] for f in last}) < 2:
        return None
    names = list(dict.fromkeys(f["name"] for f in last))
    reason = f"{limit} consecutive failed attempts ({', '.join(sorted({f['cause'] for f in last}))}) of jobs {', '.join(names)}"
    conn.execute("UPDATE host_faults SET quarantined_ts = ?, reason = ? WHERE host = ?", (now, reason, host))
    _record_host_event(conn, host, "quarantined", reason, names, now)
    logger.warning("host %s: quarantined after %s; `mqfleet undrain %s` releases it", host, reason, host)
    return Quarantine(since_ts=now, reason=reason, jobs=names)


def quarantines(conn: SqlConnection) -> dict[str, Quarantine]:
    """Every quarantined host's quarantine, by host id."""
    rows = conn.execute("SELECT host, streak, quarantined_ts, reason FROM host_faults WHERE quarantined_ts IS NOT NULL")
    return {r[0]: _quarantine(r[1], r[2], r[3]) for r in rows}


def quarantine_of(conn: SqlConnection, host: str) -> Quarantine | None:
    row = conn.execute(
        "SELECT streak, quarantined_ts, reason FROM host_faults WHERE host = ? AND quarantined_ts IS NOT NULL",
        (host,),
    ).fetchone()
    return _quarantine(row[0], row[1], row[2]) if row else None


def _quarantine(streak_json: str, since_ts: float, reason: str) -> Quarantine:
    streak: list[FailedAttempt] = json.loads(streak_json)
    return Quarantine(since_ts=since_ts, reason=reason, jobs=list(dict.fromkeys(f["name"] for f in streak)))


def release_host(conn: SqlConnection, host: str, now: float) -> bool:
    """End a host's quarantine and its failure streak; True when it was quarantined."""
    was = quarantine_of(conn, host)
    conn.execute("UPDATE host_faults SET quarantined_ts = NULL, reason = '', streak = '[]' WHERE host = ?", (host,))
    if was is None:
        return False
    _record_host_event(conn, host, "released", "released by operator (undrain)", was.jobs, now)
    logger.info("host %s: quarantine released by operator", host)
    return True


def _record_host_event(conn: SqlConnection, host: str, kind: str, reason: str, jobs: list[str], now: float) -> None:
    conn.execute(
        "INSERT INTO host_events (ts, host, kind, reason, jobs) VALUES (?, ?, ?, ?, ?)",
        (now, host, kind, reason, json.dumps(jobs)),
    )


def take_host_events(conn: SqlConnection, after_seq: int) -> list[HostEvent]:
    """Host events committed after `after_seq`, oldest first, to publish on `events`."""
    rows = conn.execute(
        "SELECT seq, ts, host, kind, reason, jobs FROM host_events WHERE seq > ? ORDER BY seq", (after_seq,)
    ).fetchall()
    return [HostEvent(seq=r[0], ts=r[1], host=r[2], to=r[3], reason=r[4], jobs=json.loads(r[5])) for r in rows]


def last_host_event(conn: SqlConnection) -> int:
    return int(one_row(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM host_events"))[0])


# --- dependents that can never run -----------------------------------------------------------------


def cancel_unsatisfiable(conn: SqlConnection, roots: Iterable[str], now: float) -> list[str]:
    """Cancel every pending job that waits, directly or through others, on one of `roots` that ended
    failed or cancelled; the ids cancelled. Each gets the reason as its error."""
    todo = list(roots)
    cancelled: list[str] = []
    for _ in range(_WALK_LIMIT):
        if not todo:
            break
        job_id = todo.pop()
        dep = conn.execute("SELECT name, status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if dep is None or dep[1] not in (JobStatus.FAILED.value, JobStatus.CANCELLED.value):
            continue
        reason = f"{NEVER_SATISFIED}: {dep[0]} ({dep[1]})"
        for waiting in dependents(conn, job_id):
            row = conn.execute("SELECT status FROM jobs WHERE id = ?", (waiting,)).fetchone()
            if row is None or row[0] != JobStatus.PENDING.value:
                continue
            transition(conn, waiting, JobStatus.CANCELLED, expect=[JobStatus.PENDING], reason=reason, now=now)
            conn.execute("UPDATE jobs SET error = ? WHERE id = ?", (reason, waiting))
            cancelled.append(waiting)
            todo.append(waiting)
    return cancelled


def cancel_all_unsatisfiable(conn: SqlConnection, now: float) -> list[str]:
    """`cancel_unsatisfiable` over every failed or cancelled job that has a pending dependent (a reload)."""
    roots = [r[0] for r in conn.execute(
        "SELECT DISTINCT d.after_id FROM deps d JOIN jobs a ON a.id = d.after_id JOIN jobs w ON w.id = d.job_id "
        "WHERE a.status IN ('failed', 'cancelled') AND w.status = 'pending'"
    )]
    return cancel_unsatisfiable(conn, roots, now)


def restore_dependents(conn: SqlConnection, job_id: str, now: float) -> list[str]:
    """A requeued job's dependents that were cancelled because of it wait again (pending), transitively."""
    todo = [job_id]
    restored: list[str] = []
    for _ in range(_WALK_LIMIT):
        if not todo:
            break
        current = todo.pop()
        name_row = conn.execute("SELECT name FROM jobs WHERE id = ?", (current,)).fetchone()
        if name_row is None:
            continue
        prefix = f"{NEVER_SATISFIED}: {name_row[0]} ("
        for waiting in dependents(conn, current):
            row = conn.execute("SELECT status, error FROM jobs WHERE id = ?", (waiting,)).fetchone()
            if row is None or row[0] != JobStatus.CANCELLED.value or not str(row[1] or "").startswith(prefix):
                continue
            transition(conn, waiting, JobStatus.PENDING, expect=[JobStatus.CANCELLED],
                       reason=f"waits again: its dependency {name_row[0]} was requeued", now=now)
            conn.execute("UPDATE jobs SET error = NULL WHERE id = ?", (waiting,))
            restored.append(waiting)
            todo.append(waiting)
    if restored:
        refresh_blocked(conn, restored)
    return restored

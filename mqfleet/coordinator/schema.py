"""The SQLite file underneath `Database`: schema, connection settings, transactions, the change log,
request memory, and `transition()`, the only write of a job's status.

Together with `db.py` this is the only code that speaks SQL.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from mqfleet.errors import IllegalTransitionError, NotFoundError, StateError
from mqfleet.manifest import JobSpec
from mqfleet.state import JobStatus, is_allowed

logger = logging.getLogger(__name__)

#: Milliseconds a writer waits for another connection's write lock before failing.
BUSY_TIMEOUT_MS = 5000

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order: the age tie-break
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    model TEXT NOT NULL,
    mode TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    host TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,     -- attempts that count against the budget
    attempt_seq INTEGER NOT NULL DEFAULT 0,  -- every attempt ever granted: the grant's number
    max_attempts INTEGER NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    prefer_cuda INTEGER NOT NULL DEFAULT 0,
    require_cuda INTEGER NOT NULL DEFAULT 0,
    min_vram_gib REAL NOT NULL DEFAULT 0,
    min_ram_gib REAL NOT NULL DEFAULT 0,
    blocked INTEGER NOT NULL DEFAULT 0,      -- a job-level reason keeps it from every host
    in_manifest INTEGER NOT NULL DEFAULT 1,
    artifact TEXT,
    error TEXT,
    progress TEXT,
    created_ts REAL NOT NULL,
    updated_ts REAL NOT NULL
);
-- claims walk these in rank order and stop at the first eligible row
CREATE INDEX IF NOT EXISTS jobs_claim ON jobs (status, blocked, priority DESC, seq);
CREATE INDEX IF NOT EXISTS jobs_claim_cuda ON jobs (status, blocked, priority DESC, prefer_cuda DESC, seq);
CREATE INDEX IF NOT EXISTS jobs_name ON jobs (name);

CREATE TABLE IF NOT EXISTS deps (
    job_id TEXT NOT NULL,
    after_id TEXT NOT NULL,
    PRIMARY KEY (job_id, after_id)
);
CREATE INDEX IF NOT EXISTS deps_after ON deps (after_id);

CREATE TABLE IF NOT EXISTS leases (
    job_id TEXT PRIMARY KEY,  -- at most one live lease per job
    lease_id TEXT NOT NULL UNIQUE,
    host TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    gpus TEXT NOT NULL,
    granted_ts REAL NOT NULL,
    expires_ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_expiry ON leases (expires_ts);
CREATE INDEX IF NOT EXISTS leases_host ON leases (host);

CREATE TABLE IF NOT EXISTS attempts (
    job_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    host TEXT NOT NULL,
    lease_id TEXT NOT NULL,
    started_ts REAL NOT NULL,
    ended_ts REAL,
    outcome TEXT,  -- completed, or the cause of the end; NULL while live
    cause TEXT,
    exit_code INTEGER,
    output_tail TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, number)
);

CREATE TABLE IF NOT EXISTS hosts (
    id TEXT PRIMARY KEY,
    advert TEXT NOT NULL DEFAULT '{}',
    online INTEGER NOT NULL DEFAULT 0,
    draining INTEGER NOT NULL DEFAULT 0,
    last_seen_ts REAL
);

CREATE TABLE IF NOT EXISTS artifacts (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    key TEXT NOT NULL,
    verified_ts REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS job_artifacts (
    job_id TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    name TEXT NOT NULL,
    model TEXT NOT NULL,
    mode TEXT NOT NULL,
    host TEXT NOT NULL,
    metrics TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_ts REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    job_id TEXT NOT NULL,
    from_status TEXT,
    to_status TEXT NOT NULL,
    reason TEXT NOT NULL,
    host TEXT
);

CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY,
    reply TEXT NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS replies_ts ON replies (ts);
"""

JOB_COLUMNS = (
    "j.id, j.name, j.model, j.mode, j.status, j.host, j.attempts, j.max_attempts, j.priority, j.artifact, "
    "j.error, j.in_manifest, j.progress, j.created_ts, j.updated_ts, l.expires_ts AS lease_expires_ts"
)
JOB_SELECT = f"SELECT {JOB_COLUMNS} FROM jobs j LEFT JOIN leases l ON l.job_id = j.id"


def open_connection(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """An autocommit connection in WAL mode; every write runs in an explicit transaction."""
    conn = sqlite3.connect(os.fspath(path), isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        logger.warning("database %s: journal_mode is %s, not wal", path, mode)
    # WAL with NORMAL never corrupts; a power cut may only lose the last commits
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.executescript(SCHEMA)
    return conn


class StateFile:
    """One connection to the state file, shared by the coordinator's threads under one lock."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._conn = open_connection(path)
        self._lock = threading.RLock()
        self._depth = 0
        # changes made before this process opened the file were published by whoever made them
        self._taken_seq = int(self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error. A nested call joins the outer transaction
        as a savepoint, so its failure undoes only its own writes."""
        with self._lock:
            outer = self._depth == 0
            savepoint = f"sp{self._depth}"
            self._conn.execute("BEGIN IMMEDIATE" if outer else f"SAVEPOINT {savepoint}")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if outer:
                    self._conn.execute("ROLLBACK")
                else:
                    self._conn.execute(f"ROLLBACK TO {savepoint}")
                    self._conn.execute(f"RELEASE {savepoint}")
                raise
            self._depth -= 1
            if not outer:
                self._conn.execute(f"RELEASE {savepoint}")
                return
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error:
                # a failed COMMIT leaves the transaction open; close it so the next BEGIN works
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def take_changes(self) -> list[dict[str, Any]]:
        """Status changes committed since the last call, oldest first; publish them after commit."""
        with self._lock:
            if self._depth:
                raise RuntimeError("take_changes() inside a transaction would hand out uncommitted changes")
            rows = self._conn.execute(
                "SELECT seq, ts, job_id, from_status, to_status, reason, host FROM events WHERE seq > ? ORDER BY seq",
                (self._taken_seq,),
            ).fetchall()
            if rows:
                self._taken_seq = rows[-1]["seq"]
        return [
            {"seq": r["seq"], "ts": r["ts"], "job_id": r["job_id"], "from": r["from_status"], "to": r["to_status"],
             "reason": r["reason"], "host": r["host"]}
            for r in rows
        ]

    def prune_events(self, older_than: float) -> int:
        """Forget events older than `older_than`; returns how many."""
        with self.transaction():
            return self._conn.execute("DELETE FROM events WHERE ts < ? AND seq <= ?", (older_than, self._taken_seq)).rowcount

    # request dedup

    def remembered_reply(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return dict(json.loads(row[0])) if row else None

    def remember_reply(self, key: str, reply: dict[str, Any], now: float) -> None:
        with self.transaction():
            self._conn.execute(
                "INSERT OR REPLACE INTO replies (key, reply, ts) VALUES (?, ?, ?)", (key, json.dumps(reply, default=str), now)
            )

    def prune_replies(self, older_than: float) -> int:
        with self.transaction():
            return self._conn.execute("DELETE FROM replies WHERE ts < ?", (older_than,)).rowcount

    # health

    def integrity_check(self) -> str:
        """'ok', or SQLite's list of problems."""
        with self._lock:
            rows = self._conn.execute("PRAGMA integrity_check").fetchall()
        return "\n".join(str(r[0]) for r in rows)

    def journal_mode(self) -> str:
        with self._lock:
            return str(self._conn.execute("PRAGMA journal_mode").fetchone()[0])


def transition(
    conn: sqlite3.Connection,
    job_id: str,
    to: JobStatus,
    *,
    expect: Iterable[JobStatus],
    reason: str,
    now: float,
    host: str | None = None,
    error: type[StateError] = IllegalTransitionError,
) -> JobStatus:
    """Move a job from one of `expect` to `to` and record the event; returns the status it left.

    Must run inside the caller's transaction. Raises `error` (IllegalTransitionError
    unless the caller knows better, e.g. LeaseLostError) when the job is not in
    one of `expect`, and NotFoundError when there is no such job.
    """
    expected = tuple(JobStatus(s) for s in expect)
    for current in expected:
        if not is_allowed(current, to):
            raise IllegalTransitionError(f"job {job_id}: {current.value} -> {to.value} is not a legal move")
    row = conn.execute("SELECT status, host FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"no job {job_id}")
    current = JobStatus(row["status"])
    marks = ",".join("?" * len(expected))
    # a pending job has no host; otherwise keep the last one so finished rows say who ran them
    new_host = None if to is JobStatus.PENDING else (host if host is not None else row["host"])
    cur = conn.execute(
        f"UPDATE jobs SET status = ?, host = ?, updated_ts = ? WHERE id = ? AND status IN ({marks})",
        (to.value, new_host, now, job_id, *(s.value for s in expected)),
    )
    if cur.rowcount != 1:
        raise error(f"job {job_id} is {current.value}; {to.value} needs {' or '.join(s.value for s in expected)}")
    record_event(conn, job_id, current.value, to.value, reason=reason, now=now, host=new_host)
    logger.info("job %s: %s -> %s (%s)", job_id[:12], current.value, to.value, reason)
    return current


def record_event(
    conn: sqlite3.Connection, job_id: str, from_status: str | None, to_status: str, *, reason: str, now: float, host: str | None
) -> None:
    conn.execute(
        "INSERT INTO events (ts, job_id, from_status, to_status, reason, host) VALUES (?, ?, ?, ?, ?, ?)",
        (now, job_id, from_status, to_status, reason, host),
    )


def refresh_blocked(conn: sqlite3.Connection, job_ids: Iterable[str] | None = None) -> None:
    """Recompute `blocked` (left the manifest, or a dependency not completed) for some jobs, or all."""
    expr = (
        "in_manifest = 0 OR EXISTS (SELECT 1 FROM deps d LEFT JOIN jobs a ON a.id = d.after_id "
        "WHERE d.job_id = jobs.id AND (a.status IS NULL OR a.status != 'completed'))"
    )
    if job_ids is None:
        # rewrite only rows whose flag changes, so a reload of an unchanged manifest writes nothing
        conn.execute(f"UPDATE jobs SET blocked = ({expr}) WHERE blocked != ({expr})")
        return
    ids = list(job_ids)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        conn.execute(f"UPDATE jobs SET blocked = ({expr}) WHERE id IN ({','.join('?' * len(chunk))})", chunk)


def dependents(conn: sqlite3.Connection, job_id: str) -> list[str]:
    return [r[0] for r in conn.execute("SELECT job_id FROM deps WHERE after_id = ?", (job_id,))]


def job_row(row: sqlite3.Row) -> dict[str, Any]:
    """A job row as the wire and the CLI see it."""
    out = dict(row)
    out["in_manifest"] = bool(out["in_manifest"])
    out["progress"] = json.loads(out["progress"]) if out["progress"] else None
    return out


def spec_from_json(text: str) -> JobSpec:
    """A JobSpec back from its stored `to_dict()` JSON."""
    d = json.loads(text)
    for name in ("train_hosts", "allowed_hosts", "after"):
        d[name] = tuple(d.get(name) or ())
    known = JobSpec.__dataclass_fields__
    return JobSpec(**{k: v for k, v in d.items() if k in known})

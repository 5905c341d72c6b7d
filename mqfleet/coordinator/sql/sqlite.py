"""The coordinator's state store over one `SqlConnection`: its one lock, `transaction()`, `transition()`
(the only write of a job's status), the event feed and the request memory.

`StateFile` is the store over an SQLite file and the base of `postgres.PgStateFile`, which hands
`__init__` its PostgreSQL connection and replaces the health checks. The table modules
(`coordinator/tables/`) hold the SQL of their tables and run it through one `StateFile`; outside `sql/`
and `tables/` only the running parts' own bookkeeping speaks SQL (counts in `health.py` and `metrics.py`,
the published digests in `republish.py`). The tables themselves are declared in `coordinator/sql/schema.py`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeAlias

from mqfleet import defaults
from mqfleet.coordinator.sql.connection import SqlConnection, SqlRow, one_row
from mqfleet.coordinator.sql.sqliteconnection import SqliteConnection
from mqfleet.errors import IllegalTransitionError, NotFoundError, StateError
from mqfleet.lifecycle import JobStatus, is_allowed
from mqfleet.wire.codec import Wire
from mqfleet.wire.published import JobEvent

logger = logging.getLogger(__name__)

#: Senders whose remembered-reply count is kept in memory; past it the counts are read again.
REPLY_SENDERS_COUNTED = 10_000

class StateFile:
    """One connection to the state store, shared by the coordinator's threads.

    `lock` is the one lock of the coordinator's state: `transaction()` and every read hold
    it, and the service holds it too while it publishes what a transaction committed, so
    publishes go out in commit order. It is re-entrant: a transaction may read, and a
    nested transaction joins the outer one.
    """

    def __init__(self, conn: SqlConnection) -> None:
        """Over `conn`, whose schema its engine has made (`SqliteConnection.open`, `PgStateFile`)."""
        self.conn = conn
        #: The store as messages name it: the file's path, or the URL with its password hidden.
        self.path = conn.where
        self.lock = threading.RLock()
        self._depth = 0
        #: remembered replies held per sender (`role/client/`), as far as this process knows
        self._replies_held: dict[str, int] = {}
        # changes made before this process opened the file were published by whoever made them
        self._taken_seq = int(one_row(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events"))[0])

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[SqlConnection]:
        """BEGIN ... COMMIT, or ROLLBACK on error; yields the connection. A nested call joins the
        outer transaction as a savepoint, so its failure undoes only its own writes."""
        with self.lock:
            outer = self._depth == 0
            savepoint = f"sp{self._depth}"
            if outer:
                self.conn.begin()
            else:
                self.conn.execute(f"SAVEPOINT {savepoint}")
            self._depth += 1
            try:
                yield self.conn
            except BaseException:
                self._depth -= 1
                if outer:
                    self.conn.rollback()
                else:
                    self.conn.execute(f"ROLLBACK TO SAVEPOINT {savepoint}")
                    self.conn.execute(f"RELEASE SAVEPOINT {savepoint}")
                raise
            self._depth -= 1
            if outer:
                self.conn.commit()
            else:
                self.conn.execute(f"RELEASE SAVEPOINT {savepoint}")

    def read(self, sql: str, params: Iterable[Any] = ()) -> Sequence[SqlRow]:
        """All rows of one query, read under the lock."""
        with self.lock:
            return self.conn.execute(sql, tuple(params)).fetchall()

    def read_one(self, sql: str, params: Iterable[Any] = ()) -> SqlRow | None:
        with self.lock:
            return self.conn.execute(sql, tuple(params)).fetchone()

    def open_reader(self, name: str) -> SqlConnection:
        """Another connection to the same store, for reads beside this one's writes (the metrics scrape);
        `name` says whose (PostgreSQL shows it among the server's sessions)."""
        return SqliteConnection.open_reader(self.path)

    # the event feed

    #: The events this process publishes: all of them over a file only one coordinator writes
    #: (PgStateFile narrows it to its own coordinator's).
    own_events = ""
    own_events_params: tuple[Any, ...] = ()

    def take_changes(self, limit: int = -1) -> list[JobEvent]:
        """Status changes committed since the last call, oldest first, at most `limit` (-1: all); publish
        them after commit."""
        with self.lock:
            if self._depth:
                raise RuntimeError("take_changes() inside a transaction would hand out uncommitted changes")
            rows = self.conn.execute(
                f"SELECT seq, ts, job_id, from_status, to_status, reason, host FROM events WHERE seq > ?{self.own_events} "
                "ORDER BY seq" + (" LIMIT ?" if limit >= 0 else ""),
                (self._taken_seq, *self.own_events_params, *((limit,) if limit >= 0 else ())),
            ).fetchall()
            if rows:
                self._taken_seq = rows[-1]["seq"]
        return [
            JobEvent(seq=r["seq"], ts=r["ts"], job_id=r["job_id"],
                     from_status=JobStatus(r["from_status"]) if r["from_status"] is not None else None,
                     to=JobStatus(r["to_status"]), reason=r["reason"], host=r["host"])
            for r in rows
        ]

    @property
    def taken_seq(self) -> int:
        """The last event take_changes() handed out: older ones are published and may be pruned."""
        return self._taken_seq

    # the request memory: a redelivered request is answered with its first reply

    def remembered_reply(self, key: str) -> Wire | None:
        """The reply's JSON as first sent (decoded from the stored text), or None."""
        row = self.read_one("SELECT reply FROM replies WHERE key = ?", (key,))
        return dict(json.loads(row[0])) if row else None

    def remember_reply(self, key: str, payload: bytes, now: float, *, keep: int = defaults.REPLIES_PER_CLIENT) -> None:
        """Remember a reply (`payload`, its JSON as published) under `role/client/verb/request_id`; each
        `role/client` keeps its newest `keep`, give or take `keep // 50` between prunes.

        The cap bounds what one sender can make the database hold, however fast it sends. The
        sender's count is read from the table once and then kept here, pruning when it passes the
        slack: counting a busy sender's thousands of rows on every insert was a tenth of a request.
        """
        owner = "/".join(key.split("/", 2)[:2]) + "/"
        # '0' follows '/' in ASCII, so [owner, owner-with-'0') is exactly the keys under it: a PK range scan.
        upper = owner[:-1] + "0"
        most = keep + keep // 50  # pruned back to `keep` only past this, so most inserts count nothing
        with self.transaction() as c:
            # the first reply wins: a redelivery answered by another coordinator meanwhile keeps that answer
            added = c.execute("INSERT INTO replies (key, reply, ts) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                              (key, payload.decode(), now)).rowcount
            held = self._replies_held.get(owner)
            if held is None:
                if len(self._replies_held) >= REPLY_SENDERS_COUNTED:
                    self._replies_held.clear()  # recounted from the table as each sender sends again
                held = int(one_row(c.execute(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM replies WHERE key >= ? AND key < ? LIMIT ?) AS held",
                    (owner, upper, most + 1),
                ))[0])
            else:
                held += max(0, added)
            if held > most:
                c.execute(
                    "DELETE FROM replies WHERE key IN (SELECT key FROM replies WHERE key >= ? AND key < ? "
                    "ORDER BY ts, key LIMIT (SELECT COUNT(*) FROM replies WHERE key >= ? AND key < ?) - ?)",
                    (owner, upper, owner, upper, keep),
                )
                held = keep
            self._replies_held[owner] = held

    def prune_replies(self, older_than: float) -> int:
        self._replies_held.clear()  # counted again from the table
        with self.transaction() as c:
            return c.execute("DELETE FROM replies WHERE ts < ?", (older_than,)).rowcount

    # health

    @property
    def file_path(self) -> str | None:
        """The file holding the state (None when a server holds it)."""
        return self.path

    def quick_check(self) -> str:
        """'ok', or SQLite's list of damaged pages and indexes (PRAGMA quick_check)."""
        return "; ".join(str(r[0]) for r in self.read("PRAGMA quick_check"))

    def integrity_check(self) -> str:
        """'ok', or SQLite's list of problems."""
        return "\n".join(str(r[0]) for r in self.read("PRAGMA integrity_check"))

    def journal_mode(self) -> str:
        row = self.read_one("PRAGMA journal_mode")
        return str(row[0]) if row else ""


def transition(
    conn: SqlConnection,
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
    record_events(conn, [(now, job_id, current.value, to.value, reason, new_host)])
    logger.info("job %s: %s -> %s (%s)", job_id[:12], current.value, to.value, reason)
    return current


#: An event as it is stored: (ts, job_id, from_status, to_status, reason, host).
EventRow: TypeAlias = tuple[float, str, str | None, str, str, str | None]


def record_events(conn: SqlConnection, events: Iterable[EventRow]) -> None:
    """The one insert into the events table: each status change (`transition`) and each job a manifest added."""
    conn.executemany(
        "INSERT INTO events (ts, job_id, from_status, to_status, reason, host) VALUES (?, ?, ?, ?, ?, ?)", events
    )

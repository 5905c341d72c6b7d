"""Several coordinators on one state database: who is alive (the coordinators table) and who leads.

Every coordinator answers requests (a shared subscription hands each request to one of them);
the leader alone runs the sweep (lease expiry, retention), publishes the retained coordinator
status and, when it takes over, republishes every job's retained state. On PostgreSQL the leader
is whoever holds a session-level advisory lock on a connection of its own: when it dies, the
server ends its session and frees the lock, and the next coordinator to try takes it at its next
sweep (a second or so). Over an SQLite file only one coordinator can run, and it always leads.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING, Protocol

from mqfleet.coordinator.sql.connection import one_row
from mqfleet.coordinator.sql.sqlite import StateFile
from mqfleet.errors import ConfigurationError, UnavailableError
from mqfleet.wire.requests import CoordinatorPeer

if TYPE_CHECKING:
    from mqfleet.coordinator.sql.pgconnection import PgConnection

logger = logging.getLogger(__name__)

#: Seconds between a coordinator's heartbeats in the coordinators table.
HEARTBEAT_S = 2.0
#: A coordinator whose heartbeat is older than this is listed as gone.
STALE_S = 3 * HEARTBEAT_S
#: Rows of coordinators gone this long are forgotten.
FORGET_S = 24 * 3600.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS coordinators (
    id TEXT PRIMARY KEY,           -- the coordinator's MQTT client id
    host TEXT NOT NULL,            -- the machine it runs on
    version TEXT NOT NULL,
    role TEXT NOT NULL,            -- leader or follower
    started_ts REAL NOT NULL,
    heartbeat_ts REAL NOT NULL
)
"""


class Peers:
    """The coordinators table: each coordinator's row, refreshed every HEARTBEAT_S."""

    def __init__(self, state: StateFile, *, coordinator_id: str, version: str, started_ts: float) -> None:
        self.state = state
        self.id = coordinator_id
        self.version = version
        self.started_ts = started_ts
        self.last_heartbeat_ts = -1e18
        #: The role this coordinator last wrote in its row: None before its first heartbeat.
        self.role: str | None = None
        with state.transaction() as c:
            c.execute(SCHEMA)

    def heartbeat(self, role: str, now: float) -> None:
        with self.state.transaction() as c:
            c.execute(
                "INSERT INTO coordinators (id, host, version, role, started_ts, heartbeat_ts) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET host = excluded.host, version = excluded.version, role = excluded.role, "
                "started_ts = excluded.started_ts, heartbeat_ts = excluded.heartbeat_ts",
                (self.id, socket.gethostname(), self.version, role, self.started_ts, now),
            )
            c.execute("DELETE FROM coordinators WHERE heartbeat_ts < ?", (now - FORGET_S,))
        self.last_heartbeat_ts = now
        self.role = role

    def forget(self) -> None:
        """A clean stop: this coordinator is no longer one of the fleet's."""
        with self.state.transaction() as c:
            c.execute("DELETE FROM coordinators WHERE id = ?", (self.id,))

    def listing(self, now: float) -> list[CoordinatorPeer]:
        """Every coordinator of the last FORGET_S, the live ones first; `alive` says whose heartbeat is fresh."""
        rows = self.state.read(
            "SELECT id, host, version, role, started_ts, heartbeat_ts FROM coordinators ORDER BY heartbeat_ts DESC, id")
        out = []
        for r in rows:
            alive = now - r["heartbeat_ts"] <= STALE_S
            out.append(CoordinatorPeer(id=r["id"], host=r["host"], version=r["version"], role=r["role"] if alive else "gone",
                                       started_ts=r["started_ts"], heartbeat_ts=r["heartbeat_ts"], alive=alive))
        return sorted(out, key=lambda p: (not p.alive, p.role != "leader", p.id))

    def last_leader(self) -> CoordinatorPeer | None:
        """Another coordinator whose row still says it leads (one that died leading: a clean stop forgets
        its row), the latest heartbeat first; None when no other coordinator led within FORGET_S."""
        row = self.state.read_one(
            "SELECT id, host, version, role, started_ts, heartbeat_ts FROM coordinators WHERE id != ? AND role = ? "
            "ORDER BY heartbeat_ts DESC LIMIT 1", (self.id, "leader"))
        if row is None:
            return None
        return CoordinatorPeer(id=row["id"], host=row["host"], version=row["version"], role=row["role"],
                               started_ts=row["started_ts"], heartbeat_ts=row["heartbeat_ts"], alive=False)

    def others_alive(self, now: float) -> bool:
        """Whether another coordinator's heartbeat is fresh (it served while we were away)."""
        row = self.state.read_one(
            "SELECT 1 FROM coordinators WHERE id != ? AND heartbeat_ts > ? LIMIT 1", (self.id, now - STALE_S))
        return row is not None


class Election(Protocol):
    def hold(self) -> bool:
        """True while this coordinator leads: takes the lead when it is free, and checks it is still held."""

    def release(self) -> None: ...


class SoleLeader:
    """Over an SQLite file: one coordinator, always the leader. A second coordinator on the same file
    would answer every request a second time and sweep beside the first, so it is refused at start:
    the first holds an exclusive lock on `<file>.coordinator.lock` for its whole life."""

    def __init__(self, path: str) -> None:
        self.lock_path = f"{path}.coordinator.lock"
        self._fd: int | None = None
        try:
            import fcntl
        except ImportError:  # Windows: no advisory file locks; one coordinator per file is the operator's rule
            return
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigurationError(
                f"another coordinator (pid {holder}) already serves {path}: one coordinator per SQLite file; "
                "several coordinators share a PostgreSQL database (--db postgresql://..., docs/SCALING.md)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def hold(self) -> bool:
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock; a killed process releases it too
            self._fd = None


class AdvisoryLockElection:
    """The leader holds a PostgreSQL session-level advisory lock on a connection of its own.

    The lock lives as long as the session: a coordinator that dies (kill -9, a lost machine once
    TCP keepalives give up) loses it with its connection, and `hold()` of another takes it.
    """

    def __init__(self, url: str, *, writer: str) -> None:
        from mqfleet.coordinator.sql.pgconnection import LEADER_LOCK, PgConnection

        self.url = url
        self.writer = writer
        self._key = LEADER_LOCK
        self._factory = PgConnection
        self._conn: PgConnection | None = None
        self._leading = False
        self._pid = 0

    def hold(self) -> bool:
        try:
            if self._conn is None:
                self._conn = self._factory(self.url, writer=f"{self.writer}-election")
            if self._leading:
                # the lock lives in the session that took it: a reconnect (a new backend) lost it
                pid = int(one_row(self._conn.raw("SELECT pg_backend_pid()"))[0])
                if pid != self._pid:
                    logger.warning("leader lock lost: the connection that held it was replaced")
                    self._leading = False
            if not self._leading:
                row = one_row(self._conn.raw("SELECT pg_try_advisory_lock(%s), pg_backend_pid()", (self._key,)))
                self._leading, self._pid = bool(row[0]), int(row[1])
        except (UnavailableError, OSError) as e:
            if self._leading:
                logger.warning("leader lock lost with its connection (%s)", e)
            self._leading = False
            self._drop()
        return self._leading

    def release(self) -> None:
        self._leading = False
        self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # closing a broken connection may fail; it is gone either way
                pass
            self._conn = None


def election_for(state: StateFile) -> Election:
    from mqfleet.coordinator.sql.postgres import PgStateFile

    if isinstance(state, PgStateFile):
        return AdvisoryLockElection(state.url, writer=state.writer)
    return SoleLeader(state.path)

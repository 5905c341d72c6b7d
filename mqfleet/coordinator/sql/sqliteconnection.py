"""The SQLite engine: a state file opened onto the schema, as a `SqlConnection` (`sql/connection.py`).

`SqliteConnection` is the one place the package touches `sqlite3`'s connection: it runs the
statements as written and turns `sqlite3`'s exceptions into the project's own at this boundary
(a broken constraint `ConstraintError`, the write lock held past the busy timeout
`DatabaseBusyError`, anything else `StateStoreError`), for each statement and each fetch.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import NoReturn

from mqfleet.coordinator.sql.connection import SqlRow
from mqfleet.coordinator.sql.schema import SCHEMA, VERSION_SCHEMA, check_schema_version
from mqfleet.errors import ConstraintError, DatabaseBusyError, StateStoreError

logger = logging.getLogger(__name__)

#: Milliseconds a writer waits for another connection's write lock before failing.
BUSY_TIMEOUT_MS = 5000

#: SQLite's primary result codes of a lock another connection holds (SQLITE_BUSY, SQLITE_LOCKED).
_BUSY_CODES = frozenset({5, 6})


def _raise_translated(e: sqlite3.Error, where: str) -> NoReturn:
    """`e` as the project's exception (docs/INTERNALS.md, the state store's errors)."""
    text = f"state database {where}: {e}"
    if isinstance(e, sqlite3.IntegrityError):
        raise ConstraintError(text) from e
    if (getattr(e, "sqlite_errorcode", 0) & 0xFF) in _BUSY_CODES:  # an error of the library, not of the driver
        raise DatabaseBusyError(f"{text}; another writer held the write lock past {BUSY_TIMEOUT_MS} ms") from e
    raise StateStoreError(text) from e


class SqliteCursor:
    """A `sqlite3.Cursor` whose fetches raise the project's exceptions (SQLite steps a query as it is read)."""

    __slots__ = ("_cursor", "_where")

    def __init__(self, cursor: sqlite3.Cursor, where: str) -> None:
        self._cursor = cursor
        self._where = where

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    def fetchone(self) -> SqlRow | None:
        try:
            row: SqlRow | None = self._cursor.fetchone()
        except sqlite3.Error as e:
            _raise_translated(e, self._where)
        return row

    def fetchmany(self, size: int) -> list[SqlRow]:
        try:
            return self._cursor.fetchmany(size)
        except sqlite3.Error as e:
            _raise_translated(e, self._where)

    def fetchall(self) -> list[SqlRow]:
        try:
            return self._cursor.fetchall()
        except sqlite3.Error as e:
            _raise_translated(e, self._where)

    def __iter__(self) -> Iterator[SqlRow]:
        try:
            yield from self._cursor
        except sqlite3.Error as e:
            _raise_translated(e, self._where)


class SqliteConnection:
    """An autocommit `sqlite3` connection with `sqlite3.Row` rows; `begin()` takes the write lock at once."""

    def __init__(self, conn: sqlite3.Connection, where: str) -> None:
        self._conn = conn
        self.where = where

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> SqliteConnection:
        """The state file at `path` in WAL mode, its schema made or checked (`schema.check_schema_version`)."""
        conn = cls.open_reader(path)
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                logger.warning("database %s: journal_mode is %s, not wal", conn.where, mode and mode[0])
            # WAL with NORMAL never corrupts; a power cut may only lose the last commits
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(SCHEMA)
            conn.executescript(VERSION_SCHEMA)
            conn.begin()
            try:
                check_schema_version(conn, conn.where)
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
        except BaseException:
            conn.close()
            raise
        return conn

    @classmethod
    def open_reader(cls, path: str | os.PathLike[str], *, read_only: bool = False) -> SqliteConnection:
        """A connection to the file as it is (no schema made): for reads beside the coordinator's writes (WAL lets
        them run together), or, `read_only`, a file no write may touch (one being migrated)."""
        where = os.fspath(path)
        try:
            conn = (sqlite3.connect(f"file:{where}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
                    if read_only else
                    sqlite3.connect(where, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000))
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        except sqlite3.Error as e:
            _raise_translated(e, where)
        return cls(conn, where)

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def execute(self, sql: str, params: Sequence[object] = (), /) -> SqliteCursor:
        try:
            return SqliteCursor(self._conn.execute(sql, params), self.where)
        except sqlite3.Error as e:
            _raise_translated(e, self.where)

    def executemany(self, sql: str, rows: Iterable[Sequence[object]], /) -> None:
        try:
            self._conn.executemany(sql, rows)
        except sqlite3.Error as e:
            _raise_translated(e, self.where)

    def executescript(self, script: str, /) -> None:
        if self._conn.in_transaction:  # sqlite3's executescript would COMMIT it first
            raise StateStoreError(f"executescript inside a transaction on {self.where}")
        try:
            self._conn.executescript(script)
        except sqlite3.Error as e:
            _raise_translated(e, self.where)

    def columns(self, table: str, /) -> tuple[str, ...]:
        return tuple(str(r[1]) for r in self.execute("SELECT * FROM pragma_table_info(?)", (table,)))

    def begin(self) -> None:
        # IMMEDIATE takes the write lock at once, so two writers never deadlock upgrading a read
        self.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        try:
            self.execute("COMMIT")
        except StateStoreError:
            # a failed COMMIT leaves the transaction open; close it so the next BEGIN works
            self.rollback()
            raise

    def rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error as e:  # SQLite rolled back already (an I/O error ends the transaction)
                logger.warning("state database %s: rollback failed: %s", self.where, e)

    def close(self) -> None:
        try:
            self._conn.close()
        except sqlite3.Error as e:
            _raise_translated(e, self.where)

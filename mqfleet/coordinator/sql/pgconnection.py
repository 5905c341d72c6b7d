"""The psycopg connection of a PostgreSQL state store, speaking the sqlite3 subset the noun modules use.

The noun modules stay dialect-blind: `PgConnection` speaks the subset of `sqlite3.Connection` they
use (`execute`, `executemany`, rows read by name or position, `rowcount`, `fetchone/fetchmany/
fetchall`, iteration) and translates each statement once (`pgdialect`). Its errors are sqlite3's
(`IntegrityError`, `OperationalError`), so a module that catches one catches it on both engines;
a lost or unreachable server is `UnavailableError` instead (wire code `unavailable`), which the
service answers without remembering, so the agent's retry runs the request again.

The write lock `begin()` takes, and why one serial writer, are in `mqfleet.coordinator.sql.postgres`.
"""

from __future__ import annotations

import decimal
import hashlib
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from mqfleet.coordinator.sql import pgdialect
from mqfleet.defaults import ENV_DB_PASSWORD
from mqfleet.errors import ConfigurationError, UnavailableError

logger = logging.getLogger(__name__)

#: Seconds to wait for a connection to the server before calling it unreachable.
CONNECT_TIMEOUT_S = 5
#: A writer waiting longer than this for the write lock gives up with `unavailable` (a stuck peer).
LOCK_TIMEOUT_MS = 15_000
#: A session idle inside a transaction this long is ended by the server, freeing the write lock
#: held by a coordinator that hangs (SIGSTOP, a swapping host) for the others.
IDLE_IN_TRANSACTION_MS = 60_000


def _lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for `name`."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


#: The transaction-level lock every write transaction takes first.
WRITE_LOCK = _lock_key("mqfleet:state-writes")
#: The session-level lock the leader holds (`peers.Election`).
LEADER_LOCK = _lock_key("mqfleet:leader")

def redact_url(url: str) -> str:
    """The URL with its password replaced by `***`, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class PgRowBase(tuple):  # type: ignore[type-arg]
    """A row like sqlite3.Row: by position, by column name, `keys()`, and `dict(row)`."""

    __slots__ = ()
    _index: dict[str, int] = {}

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            try:
                key = self._index[key]
            except KeyError:
                raise IndexError(f"no column named {key!r}") from None
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


_row_classes: dict[tuple[str, ...], type[PgRowBase]] = {}


def _plain(value: Any) -> Any:
    """Values as SQLite returns them: no booleans (0/1) and no Decimals (SUM of integers is numeric)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def _row_factory(cursor: Any) -> Any:
    names = tuple(d.name for d in cursor.description or ())
    cls = _row_classes.get(names)
    if cls is None:
        if len(_row_classes) > 1024:
            _row_classes.clear()
        cls = _row_classes[names] = type("PgRow", (PgRowBase,), {"__slots__": (), "_index": {n: i for i, n in enumerate(names)}})
    return lambda values: cls(_plain(v) for v in values)


def _param(value: Any) -> Any:
    """A parameter as SQLite would store it: booleans as 0/1, text without NUL or lone surrogates
    (PostgreSQL's text refuses both; they come only from hostile or broken input)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and not value.isascii() or isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    return value


class PgConnection:
    """The psycopg connection of one PgStateFile, speaking the noun modules' sqlite3 subset."""

    def __init__(self, url: str, *, writer: str) -> None:
        self.url = url
        self.where = redact_url(url)
        self.writer = writer
        self._conn: Any = None
        self._in_transaction = False
        self._keys: dict[str, tuple[str, ...]] = {}
        self._columns_of: dict[str, tuple[str, ...]] = {}
        self.translator = pgdialect.Translator(self._primary_keys, self._columns)
        self._live()

    # --- the connection ------------------------------------------------------------------

    def _connect(self) -> Any:
        import psycopg

        kwargs: dict[str, Any] = {}  # boundary: extra keyword arguments of psycopg.connect (a third-party API)
        if urlsplit(self.url).password is None and os.environ.get(ENV_DB_PASSWORD):
            kwargs["password"] = os.environ[ENV_DB_PASSWORD]
        return psycopg.connect(
            self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, row_factory=_row_factory,
            application_name=f"mqfleet {self.writer}"[:63],
            # keepalives notice a server (or a network path) that died without closing the connection
            keepalives=1, keepalives_idle=10, keepalives_interval=3, keepalives_count=3,
            options=f"-c mqfleet.writer={self.writer} -c lock_timeout={LOCK_TIMEOUT_MS} "
                    f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}",
            **kwargs,
        )

    def _live(self) -> Any:
        """The psycopg connection, reconnected first when the last one broke (never inside a transaction)."""
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        if self._in_transaction:
            raise UnavailableError(f"the connection to {self.where} broke inside a transaction")
        if self._conn is not None:
            self._conn.close()
            self._conn = None
            logger.warning("state database %s: connection lost; reconnecting", self.where)
        import psycopg

        try:
            self._conn = self._connect()
        except psycopg.OperationalError as e:
            raise UnavailableError(f"state database {self.where} unreachable: {' '.join(str(e).split())}") from e
        return self._conn

    def _primary_keys(self, table: str) -> tuple[str, ...]:
        if table not in self._keys:  # a table created since the last look (modules create their own)
            keys: dict[str, tuple[str, ...]] = {}
            for row in self._live().execute(pgdialect.primary_keys_query()).fetchall():
                keys[row[0]] = keys.get(row[0], ()) + (row[1],)
            self._keys = keys
        return self._keys.get(table, ())

    def _columns(self, table: str) -> tuple[str, ...]:
        if table not in self._columns_of:
            rows = self._live().execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = %s ORDER BY ordinal_position", (table,)).fetchall()
            self._columns_of[table] = tuple(r[0] for r in rows)
        return self._columns_of[table]

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """psycopg's errors as sqlite3's, and a lost server as UnavailableError."""
        import psycopg
        from psycopg import errors as pgerrors

        try:
            yield
        except (UnavailableError, pgdialect.DialectError):
            raise
        except (pgerrors.LockNotAvailable, pgerrors.QueryCanceled, pgerrors.AdminShutdown,
                pgerrors.IdleInTransactionSessionTimeout, pgerrors.CannotConnectNow) as e:
            raise UnavailableError(f"state database {self.where}: {str(e).strip()}") from e
        except psycopg.IntegrityError as e:
            raise sqlite3.IntegrityError(str(e).strip()) from e
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            if self._conn is None or self._conn.closed or self._conn.broken:
                raise UnavailableError(f"state database {self.where}: {str(e).strip()}") from e
            raise sqlite3.OperationalError(str(e).strip()) from e
        except psycopg.Error as e:
            raise sqlite3.OperationalError(str(e).strip()) from e

    # --- transactions (PgStateFile.transaction drives these) --------------------------------

    @property
    def in_transaction(self) -> bool:
        return self._in_transaction

    def begin(self) -> None:
        """BEGIN and the write lock: from here until COMMIT no other coordinator writes."""
        conn = self._live()
        self._in_transaction = True
        try:
            with self._errors():
                # one round trip: a transaction is a handful of statements, and each costs one
                conn.execute(f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})")
        except BaseException:
            self.rollback()
            raise

    def commit(self) -> None:
        try:
            with self._errors():
                self._conn.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise
        finally:
            self._in_transaction = False

    def rollback(self) -> None:
        """ROLLBACK, never raising: a broken connection is dropped (the server rolls back for it)."""
        self._in_transaction = False
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            return
        try:
            conn.execute("ROLLBACK")
        except Exception as e:  # the connection is in doubt: start afresh
            logger.warning("state database %s: rollback failed (%s); reconnecting", self.where, e)
            conn.close()

    def raw(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        """Run PostgreSQL text as it is (savepoints, DDL); no translation."""
        conn = self._live()
        with self._errors():
            return conn.execute(cast(Any, sql), params)

    # --- the sqlite3.Connection subset ------------------------------------------------------

    def execute(self, sql: str, params: Iterable[Any] = ()) -> Any:
        table = pgdialect.pragma_table(sql)
        if table is not None:
            query, args = pgdialect.table_info_sql(table)
            return self.raw(query, args)
        if pgdialect.is_pragma_setting(sql):
            logger.debug("PRAGMA ignored on PostgreSQL: %s", sql.strip())
            return self.raw("SELECT 1 WHERE false")
        text = self.translator.statement(sql)
        args = tuple(_param(p) for p in params)
        if not self._in_transaction and sql.lstrip()[:6].upper() != "SELECT":
            # a write outside transaction() still takes the write lock, or it could interleave a claim
            self.begin()
            try:
                cur = self._execute(text, args)
            except BaseException:
                self.rollback()
                raise
            self.commit()
            return cur
        return self._execute(text, args)

    def _execute(self, text: str, args: tuple[Any, ...]) -> Any:
        conn = self._live()
        with self._errors():
            return conn.execute(cast(Any, text), args)

    def executemany(self, sql: str, seq_of_params: Iterable[Iterable[Any]]) -> Any:
        rows = [tuple(_param(p) for p in params) for params in seq_of_params]
        text = self.translator.statement(sql)
        conn = self._live()
        cur = conn.cursor()
        if not rows:
            return cur
        implicit = not self._in_transaction  # writes outside transaction() still take the write lock
        if implicit:
            self.begin()
        try:
            with self._errors():
                cur.executemany(cast(Any, text), rows)
        except BaseException:
            if implicit:
                self.rollback()
            raise
        if implicit:
            self.commit()
        return cur

    def executescript(self, script: str) -> None:
        """SQLite DDL, translated (`pgdialect.translate_ddl`)."""
        self.raw(pgdialect.translate_ddl(script))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def open_pg_connection(url: str, *, writer: str) -> PgConnection:
    """A PgConnection, or ConfigurationError naming the URL (password hidden) and the fix."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise ConfigurationError("--db postgresql://... needs psycopg: pip install 'mqfleet[postgres]'") from None
    where = redact_url(url)
    try:
        return PgConnection(url, writer=writer)
    except UnavailableError as e:
        text = " ".join(str(e.__cause__ or e).split())
        if "password authentication failed" in text or "no password supplied" in text:
            fix = f"give the right password in the URL or in PGPASSWORD / {ENV_DB_PASSWORD}"
        elif "does not exist" in text:
            fix = "create the database first (createdb -O USER DB) or fix its name in the URL"
        else:
            fix = "is PostgreSQL running there and accepting TCP connections (listen_addresses, pg_hba.conf, firewall)?"
        raise ConfigurationError(f"cannot open the state database {where}: {text}; {fix}") from e

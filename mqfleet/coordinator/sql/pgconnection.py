"""The PostgreSQL engine: the psycopg connection of a PostgreSQL state store, as a `SqlConnection`.

`PgConnection` runs the statements the table modules write for both engines, each translated once
(`pgdialect`: placeholders and the few real differences), with rows read by name or position like
SQLite's. psycopg's exceptions become the project's own at this boundary: a broken constraint
`ConstraintError`, the write lock not granted in time `DatabaseBusyError`, a server gone or a
connection broken `ConnectionLostError` (an unreachable server `UnavailableError`), anything else
`StateStoreError`. The service answers the unavailable ones without remembering, so the agent's
retry runs the request again.

The write lock `begin()` takes, and why one serial writer, are in `mqfleet.coordinator.sql.postgres`.
"""

from __future__ import annotations

import decimal
import hashlib
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from mqfleet.coordinator.sql import pgdialect
from mqfleet.coordinator.sql.pgurl import check_url, has_password, redact_url, scrub
from mqfleet.defaults import ENV_DB_PASSWORD
from mqfleet.errors import (
    ConfigurationError,
    ConnectionLostError,
    ConstraintError,
    DatabaseBusyError,
    StateStoreError,
    UnavailableError,
)

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import RowMaker

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

class PgRow(tuple[Any, ...]):
    """A row like sqlite3.Row: by position, by column name, `keys()`, and `dict(row)`."""

    __slots__ = ()
    _index: ClassVar[dict[str, int]] = {}

    def __getitem__(self, key: Any) -> Any:  # boundary: tuple's overloads (an index or a slice), and a name
        if isinstance(key, str):
            try:
                key = self._index[key]
            except KeyError:
                raise IndexError(f"no column named {key!r}") from None
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


_row_classes: dict[tuple[str, ...], type[PgRow]] = {}


def _plain(value: object) -> object:
    """Values as SQLite returns them: no booleans (0/1) and no Decimals (SUM of integers is numeric)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def _row_factory(cursor: psycopg.Cursor[Any]) -> RowMaker[PgRow]:
    """psycopg's row factory: one PgRow class per column list, so a row is a tuple and its names are shared."""
    names = tuple(d.name for d in cursor.description or ())
    cls = _row_classes.get(names)
    if cls is None:
        if len(_row_classes) > 1024:
            _row_classes.clear()
        index = {n: i for i, n in enumerate(names)}

        class NamedRow(PgRow):
            __slots__ = ()
            _index = index

        cls = _row_classes[names] = NamedRow
    return lambda values: cls(_plain(v) for v in values)


def _param(value: object) -> object:
    """A parameter as SQLite would store it: booleans as 0/1, text without NUL or lone surrogates
    (PostgreSQL's text refuses both; they come only from hostile or broken input)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and (not value.isascii() or "\x00" in value):
        return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    return value


class PgConnection:
    """The psycopg connection of one PgStateFile (or of the leader election, or the metrics' reads)."""

    def __init__(self, url: str, *, writer: str, password: str | None = None) -> None:
        self.url = url
        self.where = redact_url(url)
        self.writer = writer
        #: From --db-password-file; used when the URL carries none (then MQFLEET_DB_PASSWORD, then libpq's own).
        self._password = password
        self._conn: psycopg.Connection[PgRow] | None = None
        self._in_transaction = False
        self.translator = pgdialect.Translator()
        self._live()

    # --- the connection ------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[PgRow]:
        import psycopg

        password = self._password or os.environ.get(ENV_DB_PASSWORD)
        return psycopg.Connection.connect(
            self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, row_factory=_row_factory,
            application_name=f"mqfleet {self.writer}"[:63],
            # keepalives notice a server (or a network path) that died without closing the connection
            keepalives=1, keepalives_idle=10, keepalives_interval=3, keepalives_count=3,
            # jit off: every statement here is short, and a claim's recursive query (tables/claim_walk.py), whose
            # row estimates PostgreSQL inflates, was compiled at each claim: 30 ms of JIT for 0.5 ms of work
            options=f"-c mqfleet.writer={self.writer} -c lock_timeout={LOCK_TIMEOUT_MS} "
                    f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS} -c jit=off",
            # psycopg drops a None keyword: libpq's own sources (PGPASSWORD, ~/.pgpass) still apply
            password=password if password and not has_password(self.url) else None,
        )

    def _is_broken(self) -> bool:
        return self._conn is None or self._conn.closed or self._conn.broken

    def _live(self) -> psycopg.Connection[PgRow]:
        """The psycopg connection, reconnected first when the last one broke (never inside a transaction)."""
        if self._conn is not None and not self._is_broken():
            return self._conn
        if self._in_transaction:
            raise ConnectionLostError(f"the connection to {self.where} broke inside a transaction")
        if self._conn is not None:
            self._conn.close()
            self._conn = None
            logger.warning("state database %s: connection lost; reconnecting", self.where)
        import psycopg

        try:
            self._conn = self._connect()
        except psycopg.OperationalError as e:
            raise UnavailableError(f"state database {self.where} unreachable: {self._told(e)}") from None
        except psycopg.Error as e:  # libpq refused the URL itself; its text may quote any part of it
            raise ConfigurationError(f"--db {self.where} is not usable: {self._told(e)}") from None
        return self._conn

    def _told(self, error: BaseException) -> str:
        """An error's text on one line, with every secret of the URL (and the password given) hidden."""
        return scrub(" ".join(str(error).split()), self.url, password=self._password)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """psycopg's errors as the project's (`mqfleet.errors`, the state store's)."""
        import psycopg
        from psycopg import errors as pgerrors

        try:
            yield
        except (pgerrors.LockNotAvailable, pgerrors.QueryCanceled) as e:
            raise DatabaseBusyError(f"state database {self.where}: {self._told(e)}") from e
        except (pgerrors.AdminShutdown, pgerrors.IdleInTransactionSessionTimeout, pgerrors.CannotConnectNow) as e:
            raise ConnectionLostError(f"state database {self.where}: {self._told(e)}") from e
        except psycopg.IntegrityError as e:
            raise ConstraintError(f"state database {self.where}: {self._told(e)}") from e
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            if self._is_broken():
                raise ConnectionLostError(f"state database {self.where}: {self._told(e)}") from e
            raise StateStoreError(f"state database {self.where}: {self._told(e)}") from e
        except psycopg.Error as e:
            raise StateStoreError(f"state database {self.where}: {self._told(e)}") from e

    # --- transactions (StateFile.transaction drives these) --------------------------------

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
                self._live().execute("COMMIT")
        except BaseException:
            self.rollback()
            raise
        finally:
            self._in_transaction = False

    def rollback(self) -> None:
        """ROLLBACK, never raising: a broken connection is dropped (the server rolls back for it)."""
        self._in_transaction = False
        conn = self._conn
        if conn is None or self._is_broken():
            return
        try:
            conn.execute("ROLLBACK")
        except Exception as e:  # the connection is in doubt: start afresh
            logger.warning("state database %s: rollback failed (%s); reconnecting", self.where, e)
            conn.close()

    def raw(self, sql: str, params: Sequence[object] | None = None) -> psycopg.Cursor[PgRow]:
        """Run PostgreSQL text as it is (DDL, the leader's session lock); no translation."""
        conn = self._live()
        with self._errors():
            return conn.execute(sql, params)

    # --- statements -----------------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[object] = (), /) -> psycopg.Cursor[PgRow]:
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

    def _execute(self, text: str, args: tuple[object, ...]) -> psycopg.Cursor[PgRow]:
        conn = self._live()
        with self._errors():
            return conn.execute(text, args)

    def executemany(self, sql: str, rows: Iterable[Sequence[object]], /) -> None:
        params = [tuple(_param(p) for p in row) for row in rows]
        if not params:
            return
        text = self.translator.statement(sql)
        implicit = not self._in_transaction  # writes outside transaction() still take the write lock
        if implicit:
            self.begin()
        try:
            with self._errors():
                self._live().cursor().executemany(text, params)
        except BaseException:
            if implicit:
                self.rollback()
            raise
        if implicit:
            self.commit()

    def executescript(self, script: str) -> None:
        """SQLite DDL, translated (`pgdialect.translate_ddl`)."""
        self.raw(pgdialect.translate_ddl(script))

    def columns(self, table: str, /) -> tuple[str, ...]:
        rows = self.raw("SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                        "AND table_name = %s ORDER BY ordinal_position", (table,)).fetchall()
        return tuple(str(r[0]) for r in rows)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def open_pg_connection(url: str, *, writer: str, password: str | None = None) -> PgConnection:
    """A PgConnection, or ConfigurationError naming the URL (secrets hidden) and the fix."""
    try:
        import psycopg  # noqa: F401
    except ImportError as e:
        raise ConfigurationError(psycopg_missing(e)) from None
    check_url(url)
    where = redact_url(url)
    try:
        return PgConnection(url, writer=writer, password=password)
    except UnavailableError as e:
        text = str(e).split(" unreachable: ", 1)[-1]
        if "password authentication failed" in text or "no password supplied" in text:
            fix = (f"give the right password with --db-password-file, in PGPASSFILE, {ENV_DB_PASSWORD} or "
                   "PGPASSWORD, or in the URL")
        elif "does not exist" in text:
            fix = "create the database first (createdb -O USER DB) or fix its name in the URL"
        else:
            fix = "is PostgreSQL running there and accepting TCP connections (listen_addresses, pg_hba.conf, firewall)?"
        raise ConfigurationError(f"cannot open the state database {where}: {text}; {fix}") from e


def psycopg_missing(error: ImportError) -> str:
    """What to install when psycopg does not import: psycopg itself, or the libpq that plain psycopg loads."""
    if "libpq library not found" in str(error):
        # plain psycopg (the `postgres` extra where psycopg-binary has no wheel: 32-bit ARM) over no system libpq
        return ("--db postgresql://... : psycopg is installed but finds no libpq; install the system's "
                "(Debian, Raspberry Pi OS: apt-get install libpq5), docs/OPERATIONS.md, \"Install lines by platform\"")
    return ("--db postgresql://... needs psycopg: pip install 'mqfleet[postgres]' "
            "(docs/OPERATIONS.md, \"Install lines by platform\")")

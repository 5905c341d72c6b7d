"""`SqlConnection`: the one connection both state engines implement, and its cursors and rows.

The table modules hold one SQL text per statement and run it through a `SqlConnection`, whichever
engine is behind it: `sqliteconnection.SqliteConnection` over an SQLite file, or
`pgconnection.PgConnection` over PostgreSQL (which translates the few differences, `pgdialect`).
Each engine turns its driver's exceptions into the project's own at its boundary
(`StateStoreError`, `ConstraintError`, `UnavailableError`, `DatabaseBusyError`, `ConnectionLostError`
in `mqfleet.errors`), so no module above the engines knows which driver runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from mqfleet.errors import StateStoreError


class SqlRow(Protocol):
    """A result row: by position or column name, iterable, `keys()`, and so `dict(row)`. A column's value
    is `Any`: its type is the schema's (`schema.py`), and the reader converts it (`int(row[0])`)."""

    def __getitem__(self, key: int | str, /) -> Any: ...
    def __iter__(self) -> Iterator[Any]: ...
    def __len__(self) -> int: ...
    def keys(self) -> list[str]: ...


class SqlCursor(Protocol):
    """The result of one statement."""

    @property
    def rowcount(self) -> int:
        """Rows an INSERT, UPDATE or DELETE changed (an ignored conflict changes none)."""

    def fetchone(self) -> SqlRow | None: ...
    def fetchmany(self, size: int) -> Sequence[SqlRow]: ...
    def fetchall(self) -> Sequence[SqlRow]: ...
    def __iter__(self) -> Iterator[SqlRow]: ...


class SqlConnection(Protocol):
    """One connection to the state store, in autocommit mode: a statement outside `begin()`...`commit()`
    is a transaction of its own (on PostgreSQL a write one still takes the write lock).

    `StateFile.transaction()` drives `begin`, `commit` and `rollback` (and `SAVEPOINT` statements for
    nested transactions); the table modules use `execute` and `executemany` inside it. Statements are
    SQLite's dialect with `?` placeholders, written in the forms both engines accept (`pgdialect`
    lists what PostgreSQL translates and what it refuses).
    """

    #: The store as messages name it: the file's path, or the URL with its password hidden.
    where: str

    @property
    def in_transaction(self) -> bool:
        """True between `begin()` and `commit()`/`rollback()`."""

    def execute(self, sql: str, params: Sequence[object] = (), /) -> SqlCursor: ...
    def executemany(self, sql: str, rows: Iterable[Sequence[object]], /) -> None: ...

    def columns(self, table: str, /) -> tuple[str, ...]:
        """The table's column names in their order; () when there is no such table."""

    def begin(self) -> None:
        """Start the write transaction: from here until commit no other writer writes."""

    def commit(self) -> None:
        """Commit; a failed COMMIT is rolled back before its error is raised, so the next begin works."""

    def rollback(self) -> None:
        """Roll back; never raises (a broken connection rolls back with its end)."""

    def close(self) -> None: ...


def one_row(cursor: SqlCursor) -> SqlRow:
    """The row of a statement that always yields one (an aggregate, an INSERT ... RETURNING)."""
    row = cursor.fetchone()
    if row is None:
        raise StateStoreError("a statement that always yields a row yielded none")
    return row

"""The coordinator's state on PostgreSQL: `PgStateFile`, the `StateFile` of `--db postgresql://...`.

The connection itself, with its translation of each statement and its errors, is
`mqfleet.coordinator.sql.pgconnection.PgConnection`; `PgStateFile` makes the schema on it, hands it
to `StateFile.__init__`, narrows the event feed to its own coordinator's commits and answers the
health checks the PostgreSQL way.

Write transactions serialise on one transaction-level advisory lock (`pg_advisory_xact_lock`),
taken first in every `transaction()`: PostgreSQL then gives SQLite's `BEGIN IMMEDIATE`
semantics across every coordinator on the database. A claim reads the ranking, picks a job and
grants it with no other writer in between, so one job can never go to two hosts, and each
statement (READ COMMITTED) sees every commit made before the lock was granted. `FOR UPDATE SKIP
LOCKED` would let claims run in parallel, but a claim is not one row: it reads the host's held
leases and GPUs, the ranking and, for `prefer_cuda`, the other hosts, then writes the job, the
lease and the attempt; row locks would need each of those locked in one order, or a second host
could take a GPU or a slot the first one counted. One serial writer is correct by construction,
and a claim holds the lock for about a millisecond (docs/SCALING.md has the figures).
"""

from __future__ import annotations

import os
import re
import secrets

from mqfleet.coordinator.sql.connection import SqlConnection
from mqfleet.coordinator.sql.pgconnection import PgConnection, open_pg_connection
from mqfleet.coordinator.sql.pgurl import read_password_file
from mqfleet.coordinator.sql.schema import SCHEMA, VERSION_SCHEMA, check_schema_version
from mqfleet.coordinator.sql.sqlite import StateFile
from mqfleet.coordinator.sql.sqliteconnection import SqliteConnection
from mqfleet.errors import ConfigurationError

#: PostgreSQL-only additions to the schema: the glob matcher `x GLOB ?` translates to, and the
#: writing coordinator of each event, filled from the session setting `mqfleet.writer` (so each
#: coordinator publishes its own commits' events, and only those: `PgStateFile.take_changes`).
PG_EXTRAS = r"""
CREATE OR REPLACE FUNCTION mqfleet_glob_regex(pattern text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    out text := '^';
    i int := 1;
    n int := length(pattern);
    ch text;
    stop int;
    body text;
BEGIN
    WHILE i <= n LOOP
        ch := substr(pattern, i, 1);
        IF ch = '*' THEN
            out := out || '.*';
        ELSIF ch = '?' THEN
            out := out || '.';
        ELSIF ch = '[' THEN
            stop := i + 1;
            IF substr(pattern, stop, 1) = '^' THEN stop := stop + 1; END IF;
            IF substr(pattern, stop, 1) = ']' THEN stop := stop + 1; END IF;
            stop := strpos(substr(pattern, stop), ']') + stop - 1;
            IF stop < i + 1 OR substr(pattern, stop, 1) <> ']' THEN
                RETURN '$^';  -- an unclosed set matches nothing, as in SQLite
            END IF;
            body := substr(pattern, i + 1, stop - i - 1);
            IF left(body, 1) = '^' THEN
                body := '^' || replace(replace(substr(body, 2), '\', '\\'), '[', '\[');
            ELSE
                body := replace(replace(body, '\', '\\'), '[', '\[');
            END IF;
            out := out || '[' || body || ']';
            i := stop;
        ELSE
            out := out || regexp_replace(ch, '([.^$|(){}+*?\\\[\]])', '\\\1', 'g');
        END IF;
        i := i + 1;
    END LOOP;
    RETURN out || '$';
END;
$$;
ALTER TABLE events ADD COLUMN IF NOT EXISTS writer TEXT COLLATE "C" DEFAULT current_setting('mqfleet.writer', true);
"""


def is_postgres_url(target: str) -> bool:
    return re.match(r"postgres(ql)?://", str(target)) is not None


class PgStateFile(StateFile):
    """The state of one fleet in a PostgreSQL database, shared by every coordinator of the fleet.

    Same interface as StateFile; `lock` still serialises this process's threads, and the
    advisory write lock serialises the coordinators.
    """

    def __init__(self, url: str, *, writer: str | None = None, password: str | None = None) -> None:
        self.url = url
        self._password = password
        #: Who wrote an event: each coordinator publishes only its own commits' changes.
        self.writer = writer or f"c{secrets.token_hex(6)}"
        conn = open_pg_connection(url, writer=self.writer, password=password)
        try:
            _make_schema(conn)
        except BaseException:
            conn.close()
            raise
        super().__init__(conn)
        self.own_events = " AND writer = ?"
        self.own_events_params = (self.writer,)

    def open_reader(self, name: str) -> SqlConnection:
        """A connection of its own to the same database, with the same credentials."""
        return open_pg_connection(self.url, writer=f"{self.writer}-{name}", password=self._password)

    @property
    def file_path(self) -> str | None:
        return None

    def quick_check(self) -> str:
        """'ok' once every table of the schema answers a query; PostgreSQL checks its own pages
        (data checksums, amcheck), which are the server operator's business, not the coordinator's."""
        tables = [r[0] for r in self.read(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() ORDER BY table_name")]
        for table in tables:
            self.read_one(f'SELECT 1 FROM "{table}" LIMIT 1')
        return "ok" if "jobs" in tables else f"the jobs table is missing from {self.path}"

    def integrity_check(self) -> str:
        return self.quick_check()

    def journal_mode(self) -> str:
        return "postgresql"


def _make_schema(conn: PgConnection) -> None:
    """The schema (`schema.py`, translated) and PG_EXTRAS, made or checked in one write transaction: the
    write lock keeps coordinators that start together from creating the same table twice."""
    conn.begin()
    try:
        conn.executescript(SCHEMA)
        conn.raw(PG_EXTRAS)
        conn.executescript(VERSION_SCHEMA)
        check_schema_version(conn, conn.where)
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


def open_state(target: str | os.PathLike[str], *, writer: str | None = None,
               password_file: str | os.PathLike[str] | None = None) -> StateFile:
    """The state store `--db` names: a postgresql:// URL (PgStateFile) or an SQLite file path (StateFile).

    `password_file` (`--db-password-file`) holds the PostgreSQL password; an SQLite file has none.
    """
    if is_postgres_url(os.fspath(target)):
        password = read_password_file(password_file) if password_file is not None else None
        return PgStateFile(os.fspath(target), writer=writer, password=password)
    if password_file is not None:
        raise ConfigurationError("--db-password-file is for a postgresql:// --db; an SQLite file has no password")
    return StateFile(SqliteConnection.open(target))

"""`mqfleet coordinator --db postgresql://... --migrate-from sqlite:PATH`: a stopped fleet's SQLite state
copied into an empty PostgreSQL database in one transaction, every table's row count checked.

The copy is all or nothing: a count that differs, a table or column this mqfleet does not know, or a
target that already holds a fleet rolls it back and nothing is written (docs/SCALING.md, "How: commands").
"""

from __future__ import annotations

import logging
from pathlib import Path

from mqfleet.coordinator.sql.connection import SqlConnection, one_row
from mqfleet.coordinator.sql.postgres import PgStateFile
from mqfleet.coordinator.sql.schema import SCHEMA_VERSION
from mqfleet.coordinator.sql.sqliteconnection import SqliteConnection
from mqfleet.errors import ConfigurationError

logger = logging.getLogger(__name__)

#: Tables that describe the running coordinators or the store, not the fleet: never copied (the target
#: stamps its own `requirement_keys`, from the same fields as the source's once the source is upgraded).
NOT_COPIED = frozenset({"schema_version", "coordinators", "sqlite_sequence", "requirement_keys"})
#: Rows per INSERT batch.
BATCH = 1000


def parse_source(spec: str) -> Path:
    """The SQLite file of `sqlite:PATH`; ConfigurationError naming the expected form otherwise."""
    if not spec.startswith("sqlite:") or not spec[len("sqlite:") :]:
        raise ConfigurationError(f"--migrate-from {spec!r}: expected sqlite:PATH (the stopped coordinator's --db file)")
    path = Path(spec[len("sqlite:") :]).expanduser()
    if not path.is_file():
        raise ConfigurationError(f"--migrate-from {spec!r}: no SQLite file at {path}")
    return path


def migrate_from_sqlite(source: Path, target: PgStateFile) -> dict[str, int]:
    """Copy every fleet table of `source` into `target`; returns rows per table. Stop the SQLite
    coordinator first: its file is read in one read transaction, so a live one would be copied as
    of one moment, and what it did afterwards would be lost."""
    _upgrade_source(source)
    src = SqliteConnection.open_reader(source, read_only=True)
    try:
        src.execute("BEGIN")  # one snapshot of the whole file
        tables = [r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
                  if r[0] not in NOT_COPIED]
        with target.transaction() as dst:
            held = int(one_row(dst.execute("SELECT COUNT(*) FROM jobs"))[0])
            if held:
                raise ConfigurationError(f"{target.path} already holds a fleet ({held} jobs): migrate into an empty "
                                         "database (createdb a new one), never over another fleet")
            counts = {table: _copy_table(src, dst, table, source, target.path) for table in tables}
            for table in tables:
                copied = int(one_row(dst.execute(f'SELECT COUNT(*) FROM "{table}"'))[0])
                if copied != counts[table]:
                    raise ConfigurationError(f"table {table}: {counts[table]} rows in {source} but {copied} in "
                                             f"{target.path} after the copy; nothing was written")
            _restart_identities(dst)
    finally:
        src.close()
    logger.info("migrated %s into %s: %s", source, target.path, ", ".join(f"{t} {n}" for t, n in counts.items()))
    return counts


def _upgrade_source(source: Path) -> None:
    """A file of an older schema is first upgraded in place, as starting this mqfleet's coordinator on it
    would; a newer one is refused."""
    probe = SqliteConnection.open_reader(source, read_only=True)
    try:
        version = _sqlite_version(probe)
    finally:
        probe.close()
    if version > SCHEMA_VERSION:
        raise ConfigurationError(f"{source} has schema version {version}, newer than this mqfleet's {SCHEMA_VERSION}: "
                                 "migrate with the newer mqfleet")
    if version < SCHEMA_VERSION:
        logger.info("%s has schema version %d: upgrading it to %d before the copy", source, version, SCHEMA_VERSION)
        SqliteConnection.open(source).close()


def _sqlite_version(src: SqlConnection) -> int:
    if not src.columns("schema_version"):  # a file from before versions were stamped: version 1
        return 1
    row = src.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else 1


def _copy_table(src: SqlConnection, dst: SqlConnection, table: str, source: Path, where: str) -> int:
    columns = src.columns(table)
    known = set(dst.columns(table))
    if not known:
        raise ConfigurationError(f"table {table} of {source} is unknown to this mqfleet (schema {SCHEMA_VERSION}): "
                                 "migrate with the mqfleet that wrote it")
    missing = [c for c in columns if c not in known]
    if missing:
        raise ConfigurationError(f"table {table} of {source} has columns {', '.join(missing)} that {where} lacks: "
                                 "migrate with the mqfleet that wrote the file")
    names = ", ".join(columns)
    insert = f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})"
    cur = src.execute(f'SELECT {names} FROM "{table}"')
    total = 0
    while rows := cur.fetchmany(BATCH):
        dst.executemany(insert, [tuple(r) for r in rows])
        total += len(rows)
    return total


def _restart_identities(dst: SqlConnection) -> None:
    """Identity columns continue after the copied rows (ids were copied, not generated)."""
    rows = dst.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND is_identity = 'YES'"
    ).fetchall()
    for table, column in rows:
        dst.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                    f"GREATEST((SELECT MAX({column}) FROM {table}), 1))")

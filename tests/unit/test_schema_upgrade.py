"""A state store of schema version 1 (before requirement keys) is upgraded when this mqfleet opens it, on
SQLite and PostgreSQL: every job keyed, the hosts a retry avoids kept, and its claims starve nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mqfleet.coordinator.sql.migrate import migrate_from_sqlite
from mqfleet.coordinator.sql.pgconnection import PgConnection, open_pg_connection
from mqfleet.coordinator.sql.postgres import PgStateFile
from mqfleet.coordinator.sql.schema import SCHEMA_VERSION
from mqfleet.coordinator.sql.sqliteconnection import SqliteConnection
from mqfleet.coordinator.tables.rows import manifest_rows
from mqfleet.manifest.types import REQUIREMENT_FIELDS, Manifest, requirements_key_of
from tests.fixtures.state import CoordinatorState, is_postgres
from tests.unit.test_claim_starvation import AHEAD
from tests.unit.test_db import T0, bring_online, claimed, job, job_id, manifest

V1_SCHEMA = Path(__file__).parent.parent / "data" / "schema" / "v1.sql"


@contextmanager
def raw_connection(target: str) -> Iterator[SqliteConnection | PgConnection]:
    """A connection to the store that runs no schema of this mqfleet's."""
    conn = open_pg_connection(target, writer="old") if is_postgres(target) else SqliteConnection.open_reader(target)
    try:
        yield conn
    finally:
        conn.close()


def write_version_1_store(target: str, m: Manifest, failed_on: dict[str, list[str]]) -> None:
    """The store an mqfleet of schema version 1 left: its tables, the manifest's jobs (no `req_key`), and
    retries whose failed hosts are a JSON list."""
    jobs = [(job_id, *cols[:-1], 3, T0, T0) for job_id, _text, cols in manifest_rows(m).rows]
    with raw_connection(target) as conn:
        conn.executescript(V1_SCHEMA.read_text())
        writes = [("INSERT INTO schema_version (version) VALUES (1)", [()]),
                  ("INSERT INTO jobs (id, name, model, mode, spec, priority, prefer_cuda, require_cuda, min_vram_gib, "
                   "min_ram_gib, max_attempts, status, created_ts, updated_ts) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)", jobs),
                  ("INSERT INTO retries (job_id, not_before_ts, failed_hosts) VALUES (?, ?, ?)",
                   [(job_id(name), T0, json.dumps(hosts)) for name, hosts in failed_on.items()]),
                  ("INSERT INTO attempts (job_id, number, host, lease_id, started_ts, ended_ts, outcome) "
                   "VALUES (?, ?, ?, ?, ?, ?, 'app')",
                   [(job_id(name), n, host, f"{name}-{n}", T0, T0 + n)
                    for name, hosts in failed_on.items() for n, host in enumerate(hosts, start=1)]),
                  ("UPDATE jobs SET attempt_seq = ?, attempts = ? WHERE id = ?",
                   [(len(hosts), len(hosts), job_id(name)) for name, hosts in failed_on.items()])]
        conn.begin()
        for sql, rows in writes:
            conn.executemany(sql, rows)
        conn.commit()


def columns(db: CoordinatorState, table: str) -> set[str]:
    return set(db.state.conn.columns(table))


def test_a_version_1_store_is_upgraded_keyed_and_its_claims_starve_nothing(state_target: str) -> None:
    jobs = [job(f"ahead-{i}", priority=5, min_torch="99.0") for i in range(AHEAD)]
    m = manifest(*jobs, job("retried", priority=3), job("runnable"))
    write_version_1_store(state_target, m, {"retried": ["h2", "h1"]})
    db = CoordinatorState(state_target)
    try:
        assert db.state.read_one("SELECT MAX(version) FROM schema_version")[0] == SCHEMA_VERSION == 2  # type: ignore[index]
        assert "failed_hosts" not in columns(db, "retries") and {"req_key", "failed_hosts"} <= columns(db, "jobs")
        assert db.state.read_one("SELECT failed_hosts FROM jobs WHERE id = ?", (job_id("retried"),))[0] == '["h1", "h2"]'  # type: ignore[index]
        keys = {r[0]: r[1] for r in db.state.read("SELECT id, req_key FROM jobs")}
        assert keys == {spec.id: spec.requirements.key for spec in m.jobs}
        assert len(set(keys.values())) == 2  # the 600 share one key, the other two another
        assert db.state.read_one("SELECT fields FROM requirement_keys")[0] == ",".join(REQUIREMENT_FIELDS)  # type: ignore[index]
        db.apply_manifest(m, T0)  # the same manifest: no row rewritten, so the keys are the upgrade's
        bring_online(db, "h1")
        bring_online(db, "h2")
        bring_online(db, "h3")
        why = {w.host: w.reason for w in db.why_waiting(job_id("retried"), T0 + 10) if w.host}
        assert why["h1"] == "an attempt failed on this host; its retry prefers h3, which has not failed it", why
        assert claimed(db, "h1", T0 + 10).job.name == "runnable"
        assert claimed(db, "h3", T0 + 10).job.name == "retried"
    finally:
        db.close()


def test_a_store_keyed_from_other_requirement_fields_is_keyed_again_when_opened(state_target: str) -> None:
    db = CoordinatorState(state_target)
    m = manifest(*(job(f"j{i}", min_torch="99.0" if i % 2 else "") for i in range(6)))
    db.apply_manifest(m, T0)
    with db.transaction() as c:
        c.execute("UPDATE jobs SET req_key = 'one-key-for-all'")
        c.execute("UPDATE requirement_keys SET fields = 'model'")
    db.close()
    db = CoordinatorState(state_target)
    try:
        keys = {r[0]: r[1] for r in db.state.read("SELECT id, req_key FROM jobs")}
        assert keys == {spec.id: spec.requirements.key for spec in m.jobs} and len(set(keys.values())) == 2
        bring_online(db, "h")
        db.manifest = m
        assert claimed(db, "h").job.name == "j0"
    finally:
        db.close()


def test_a_version_1_sqlite_file_is_upgraded_then_migrated_into_postgresql(tmp_path: Path, postgres_url: str) -> None:
    m = manifest(*(job(f"j{i}", priority=i % 3, min_torch="99.0" if i % 2 else "") for i in range(10)))
    source = str(tmp_path / "old.db")
    write_version_1_store(source, m, {"j3": ["h1"]})
    target = PgStateFile(postgres_url)
    try:
        counts = migrate_from_sqlite(Path(source), target)
        assert counts["jobs"] == 10 and counts["retries"] == 1 and "requirement_keys" not in counts
    finally:
        target.close()
    db = CoordinatorState(postgres_url)
    try:
        keys = {r[0]: r[1] for r in db.state.read("SELECT id, req_key FROM jobs")}
        assert keys == {spec.id: spec.requirements.key for spec in m.jobs}
        assert [tuple(r) for r in db.state.read("SELECT id FROM jobs WHERE failed_hosts = '[\"h1\"]'")] == [(job_id("j3"),)]
    finally:
        db.close()


def test_the_key_of_a_stored_spec_is_the_key_of_the_job() -> None:
    jobs = [job("plain"), job("torch", min_torch="2.3"), job("hosts", allowed_hosts=("b", "a")),
            job("gpu", require_cuda=True, min_vram_gib=24, prefer_cuda=True), job("commit", same_commit=True, min_ram_gib=8.5)]
    for spec in jobs:
        stored = json.loads(json.dumps(spec.to_dict(), sort_keys=True))
        assert requirements_key_of(stored) == spec.requirements_key == spec.requirements.key, spec.name
    assert len({spec.requirements_key for spec in jobs}) == len(jobs)

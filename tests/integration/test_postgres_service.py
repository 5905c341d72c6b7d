"""The throwaway PostgreSQL the state-store tests run against: real, password-protected, isolated per test."""

from __future__ import annotations

import psycopg
import pytest

from mqfleet.local.postgres import LocalPostgres


def test_each_test_gets_an_empty_database_it_can_write(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
        assert conn.execute("SELECT x FROM t").fetchone() == (1,)


def test_a_wrong_password_is_refused(postgres: LocalPostgres) -> None:
    wrong = postgres.url().replace(f":{postgres.password}@", ":not-the-password@")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=5).close()

"""The PostgreSQL password never reaches a terminal or a log (issue 25 item 10, X9), on a real server.

A malformed `%` escape in `--db` made libpq's error quote the password in a traceback, and a `?password=`
query parameter was printed as it was. Each form is now hidden, a bad URL is a clear error with exit 2,
and the password can come from a file (`--db-password-file`) instead of the URL that `ps` shows.
"""

from __future__ import annotations

import subprocess
import sys
from urllib.parse import urlsplit

import pytest

from mqfleet.local.postgres import LocalPostgres
from tests.fixtures.fleet import manifest_text
from tests.fixtures.tls import TlsFleet

EXIT_USAGE = 2


def _coordinator(fleet: TlsFleet, db: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """`mqfleet coordinator` that is expected to stop at start (a bad --db), with its output."""
    argv = [sys.executable, "-m", "mqfleet", "coordinator", "--manifest", str(fleet.manifest_path), "--db", db,
            "--store", fleet.store_url, *extra]
    return subprocess.run(argv, env={**fleet.base_env, **fleet.pki.env("coordinator")}, capture_output=True,
                          text=True, timeout=60)


def _parts(url: str) -> tuple[str, str, int, str]:
    parts = urlsplit(url)
    assert parts.username and parts.hostname and parts.port
    return parts.username, parts.hostname, parts.port, parts.path


@pytest.mark.parametrize(
    ("template", "secret"),
    [
        ("postgresql://{user}:{secret}@{host}:{port}{db}", "Sec%zzret-one"),       # a malformed escape
        ("postgresql://{user}:{secret}@{host}:{port}{db}", "Sec%4"),              # a cut escape
        ("postgresql://{user}@{host}:{port}{db}?password={secret}", "Sec-two"),   # a wrong password parameter
        ("postgresql://{user}@{host}:{port}{db}?sslmode=disable&PassWord={secret}", "Sec-three"),
        ("postgresql://{user}:{secret}@{host}:{port}{db}", "Sec/ret#four"),      # '/' and '#' end the host part
        ("postgresql://{user}:{secret}@{host}:notaport{db}", "Sec-five"),
    ],
    ids=["bad escape", "cut escape", "password parameter", "mixed-case parameter", "unescaped slash", "bad port"],
)
def test_a_bad_or_refused_db_url_exits_2_without_a_traceback_or_the_password(
    tls_fleet: TlsFleet, postgres_url: str, template: str, secret: str
) -> None:
    user, host, port, db = _parts(postgres_url)
    tls_fleet.write_manifest(manifest_text())
    done = _coordinator(tls_fleet, template.format(user=user, secret=secret, host=host, port=port, db=db))
    out = done.stdout + done.stderr
    assert done.returncode == EXIT_USAGE, out
    assert "Traceback" not in out and "Sec" not in out, out
    assert "error: " in done.stderr and "--db" in done.stderr


def test_the_password_from_a_file_or_a_parameter_opens_the_database_and_is_never_printed(
    tls_fleet: TlsFleet, postgres: LocalPostgres, postgres_url: str
) -> None:
    user, host, port, db = _parts(postgres_url)
    tls_fleet.write_manifest(manifest_text({"name": "j", "model": "ok", "allowed_hosts": ["nowhere"]}))
    password_file = tls_fleet.dir / "db-password"
    password_file.write_text(postgres.password + "\n")
    password_file.chmod(0o600)
    tls_fleet.start_coordinator(extra=("--db", f"postgresql://{user}@{host}:{port}{db}",
                                       "--db-password-file", str(password_file), "-v"))
    health = tls_fleet.client().health()
    assert health.db_ok and health.state_store == "postgresql"
    assert tls_fleet.coordinator is not None
    tls_fleet.coordinator.stop()
    tls_fleet.start_coordinator(extra=("--db", f"postgresql://{user}@{host}:{port}{db}?password={postgres.password}",
                                       "-v"))
    health = tls_fleet.client().health()
    assert health.db_ok and postgres.password not in str(health.to_wire())
    tls_fleet.coordinator.stop()
    assert postgres.password not in tls_fleet.coordinator.log()
    wrong = tls_fleet.dir / "wrong-password"
    wrong.write_text("not-the-password\n")
    done = _coordinator(tls_fleet, f"postgresql://{user}@{host}:{port}{db}", "--db-password-file", str(wrong))
    assert done.returncode == EXIT_USAGE and "password authentication failed" in done.stderr
    assert "not-the-password" not in done.stderr and "--db-password-file" in done.stderr
    missing = _coordinator(tls_fleet, postgres_url, "--db-password-file", str(tls_fleet.dir / "nowhere"))
    assert missing.returncode == EXIT_USAGE and "nowhere" in missing.stderr and "Traceback" not in missing.stderr

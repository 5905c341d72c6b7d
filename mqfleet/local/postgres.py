"""A throwaway PostgreSQL server for tests, the soak and benchmarks: Debian's `postgresql` binaries.

Owns one `postgres` process: a fresh `initdb` cluster in its work folder, run as an unprivileged user
(PostgreSQL refuses to run as root), listening on an explicit loopback port with password (SCRAM)
authentication, so tests exercise the same authentication path a real deployment uses. Readiness is
proven by a query through psycopg; the stop is SIGTERM by PID, a bounded wait, then SIGKILL.
"""

from __future__ import annotations

import atexit
import glob
import logging
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from mqfleet.errors import ConfigurationError
from mqfleet.local.ports import free_port

logger = logging.getLogger(__name__)

#: The user the server runs as when we are root; Debian's postgresql package creates it.
RUN_AS = "postgres"
#: SIGTERM is PostgreSQL's "smart" shutdown; SIGINT "fast" ends sessions at once, which tests want.
STOP_GRACE_S = 10.0


def _binary_dir() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian keeps them under /usr/lib/postgresql/N/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class LocalPostgres:
    """One PostgreSQL cluster on 127.0.0.1 with its data under `workdir`, and one database for mqfleet."""

    def __init__(self, workdir: Path, *, user: str = "mqfleet", database: str = "mqfleet",
                 password: str | None = None) -> None:
        self.workdir = Path(workdir).resolve()
        self.user = user
        self.database = database
        self.password = password or secrets.token_hex(16)
        self.port: int | None = None
        self.log_path = self.workdir / "postgres.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._cluster = self.workdir
        self._argv: list[str] = []
        self._ids: tuple[int, int] | None = None

    @staticmethod
    def available() -> bool:
        """Whether PostgreSQL's server binaries (Debian's `postgresql`) and psycopg are installed."""
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return False
        return _binary_dir() is not None

    def url(self, *, password: bool = True) -> str:
        """`postgresql://USER:PASSWORD@127.0.0.1:PORT/DB`, what `mqfleet coordinator --db` takes."""
        if self.port is None:
            raise ConfigurationError("LocalPostgres is not started")
        secret = f":{self.password}" if password else ""
        return f"postgresql://{self.user}{secret}@127.0.0.1:{self.port}/{self.database}"

    def _demote(self) -> tuple[int, int] | None:
        """(uid, gid) to run the server as, when we are root; None otherwise."""
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(RUN_AS)
        except KeyError:
            raise ConfigurationError(f"running as root needs the '{RUN_AS}' user (install Debian's postgresql)") from None
        return entry.pw_uid, entry.pw_gid

    def _run(self, argv: list[str], ids: tuple[int, int] | None) -> None:
        result = subprocess.run(argv, cwd=self._cluster, stdin=subprocess.DEVNULL, capture_output=True, timeout=120,
                                user=ids[0] if ids else None, group=ids[1] if ids else None, extra_groups=[] if ids else None)
        if result.returncode != 0:
            raise ConfigurationError(f"{Path(argv[0]).name} failed ({result.returncode}): "
                                     f"{(result.stderr or result.stdout).decode(errors='replace')[-2000:]}")

    def start(self, timeout_s: float = 60) -> LocalPostgres:
        """initdb, start postgres, create the database; returns once a query answers."""
        bindir = _binary_dir()
        if bindir is None:
            raise ConfigurationError("PostgreSQL is missing; install Debian's postgresql package (`make test` does)")
        if self._proc is not None:
            raise ConfigurationError("LocalPostgres is already started")
        ids = self._demote()
        self.workdir.mkdir(parents=True, exist_ok=True)
        # The server user must reach its cluster; a root-only test folder (pytest's are 0700) would
        # not let it, so as root the cluster lives in a folder of its own under the temp dir.
        self._cluster = Path(tempfile.mkdtemp(prefix="mqf-pg-")) if ids else self.workdir
        data = self._cluster / "data"
        sockets = self._cluster / "run"
        sockets.mkdir(exist_ok=True)
        pwfile = self._cluster / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if ids:
            for path in (self._cluster, sockets, pwfile):
                os.chown(path, *ids)
        try:
            self._run([str(bindir / "initdb"), "-D", str(data), "-U", self.user, f"--pwfile={pwfile}",
                       "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8", "--no-sync"], ids)
        finally:
            pwfile.unlink()
        self.port = free_port()
        self._argv = [str(bindir / "postgres"), "-D", str(data), "-p", str(self.port), "-h", "127.0.0.1",
                      "-k", str(sockets), "-c", "fsync=off", "-c", "max_connections=200"]
        self._ids = ids
        self._spawn()
        atexit.register(self.stop)
        try:
            self._wait_ready(time.monotonic() + timeout_s)
        except BaseException:
            self.stop()
            raise
        assert self._proc is not None
        logger.info("postgres 127.0.0.1:%d ready (pid %d)", self.port, self._proc.pid)
        return self

    def _spawn(self) -> None:
        ids = self._ids
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self._argv, cwd=self._cluster, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                user=ids[0] if ids else None, group=ids[1] if ids else None, extra_groups=[] if ids else None,
                start_new_session=True,
            )

    def halt(self) -> None:
        """An outage: stop the server (fast shutdown: every session is cut) but keep its data; `revive()` ends it."""
        if self._proc is not None and self._proc.poll() is None:
            self._stop_process(self._proc)

    def revive(self, timeout_s: float = 60) -> None:
        """Start the halted server again, same port and data; returns once a query answers."""
        if self._proc is None:
            raise ConfigurationError("LocalPostgres was never started")
        if self._proc.poll() is None:
            return
        self._spawn()
        self._wait_ready(time.monotonic() + timeout_s)

    def _wait_ready(self, deadline: float) -> None:
        import psycopg

        assert self._proc is not None
        last: Exception | None = None
        admin = self.url().rsplit("/", 1)[0] + "/postgres"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ConfigurationError(f"postgres exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                with psycopg.connect(admin, autocommit=True, connect_timeout=2) as conn:
                    exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone()
                    if not exists:
                        conn.execute(f'CREATE DATABASE "{self.database}"')
                return
            except psycopg.Error as e:
                last = e
            time.sleep(0.2)
        raise ConfigurationError(f"postgres on port {self.port} not ready in time (last: {last}):\n{self.log_tail()}")

    def create_database(self, name: str) -> str:
        """A fresh database on this server (tests isolate themselves by database); returns its URL."""
        import psycopg

        admin = self.url().rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url().rsplit("/", 1)[0] + f"/{name}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def signal(self, signum: int) -> None:
        """Send a signal to the server (SIGSTOP/SIGCONT simulate an outage in tests)."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signum)

    def stop(self) -> None:
        """Stop postgres by PID: SIGINT (fast shutdown), a bounded wait, then SIGKILL of its process group."""
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is not None and proc.poll() is None:
            self._stop_process(proc)
        if self._cluster != self.workdir:
            shutil.rmtree(self._cluster, ignore_errors=True)

    def _stop_process(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            logger.warning("postgres pid %d: no exit %.0fs after SIGINT, killing its process group", proc.pid,
                           STOP_GRACE_S)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(STOP_GRACE_S)

    def __enter__(self) -> LocalPostgres:
        return self.start() if self._proc is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

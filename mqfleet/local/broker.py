"""A private Mosquitto for tests, the demo, the soak and benchmarks: its config, its process, its ports.

It runs in the foreground (`mosquitto -c FILE`) on an explicit loopback port,
is ready when its log says `running`, and is always stopped by PID. Given a
`tls_dir` (see `make_broker_pki`), it runs the project's own `mosquitto.conf`
rendered by `mosquitto_conf.render_broker_conf`: a loopback listener for monitoring
accounts plus a mutual TLS listener with the ACL, both on free ports.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from mqfleet.defaults import ENV_CA, ENV_CERT, ENV_KEY, TOPIC_PREFIX
from mqfleet.hostid import COORDINATOR_CN, MONITOR_USER, OPERATOR_PREFIX
from mqfleet.local.ports import free_port
from mqfleet.trust.acl import render_acl, write_acl
from mqfleet.trust.certs import CertRole, issue_cert, make_ca
from mqfleet.trust.monitor_accounts import new_password, set_password, write_options
from mqfleet.trust.mosquitto_conf import ACL_FILE, PASSWD_FILE, render_broker_conf

_PORT_ATTEMPTS = 5


class BrokerStartError(RuntimeError):
    """Raised when the private mosquitto does not come up; carries its log tail."""


@dataclass(frozen=True)
class BrokerPki:
    """A directory holding a CA, the broker's certificate, client certificates named by CN, the CRL, the ACL,
    and the password file of one monitoring account with its mosquitto_sub options in `monitor/`."""

    dir: Path

    @property
    def monitor_config_home(self) -> Path:
        """XDG_CONFIG_HOME for `mosquitto_sub` as the monitoring account (add `-p` for a test broker's port)."""
        return self.dir / "monitor"

    def monitor_login(self) -> tuple[str, str]:
        """(user name, password) of the monitoring account, read back from its options file."""
        options = dict(line.split(" ", 1) for line in (self.monitor_config_home / "mosquitto_sub").read_text()
                       .splitlines() if line.startswith("-"))
        return options["-u"], options["-P"]

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    def cert(self, cn: str) -> tuple[Path, Path]:
        """(certificate, key) of a client CN (operators by their full `operator-NAME` CN)."""
        return self.dir / f"{cn}.crt", self.dir / f"{cn}.key"

    def env(self, cn: str) -> dict[str, str]:
        """MQFLEET_CA/CERT/KEY for a process that connects as `cn`."""
        cert, key = self.cert(cn)
        return {ENV_CA: str(self.ca), ENV_CERT: str(cert), ENV_KEY: str(key)}


def make_broker_pki(directory: Path, *, hosts: Sequence[str], operators: Sequence[str] = ("operator",),
                    prefix: str = TOPIC_PREFIX) -> BrokerPki:
    """A fresh CA with certificates for the broker (localhost), the coordinator, each host and operator, and the ACL.

    Operators get CNs `operator-NAME`, as `mqfleet broker issue --role operator` gives them.
    """
    make_ca(directory, force=True)
    issue_cert(directory, cn="broker", role=CertRole.SERVER, sans=("DNS:localhost", "IP:127.0.0.1"))
    issue_cert(directory, cn=COORDINATOR_CN, role=CertRole.COORDINATOR)
    for host in hosts:
        issue_cert(directory, cn=host, role=CertRole.AGENT)
    for name in operators:
        issue_cert(directory, cn=name, role=CertRole.OPERATOR)
    write_acl(Path(directory) / ACL_FILE, render_acl(hosts, operators=operators, prefix=prefix))
    pki = BrokerPki(Path(directory))
    password = new_password()
    set_password(pki.dir / PASSWD_FILE, MONITOR_USER, password)
    write_options(pki.monitor_config_home / "mosquitto_sub", user=MONITOR_USER, password=password, port=None)
    return pki


def operator_cn(name: str) -> str:
    """The CN `make_broker_pki` gives an operator."""
    return name if name.startswith(OPERATOR_PREFIX) else OPERATOR_PREFIX + name


class LocalBroker:
    """One mosquitto process with its config, log and persistence under `workdir`.

    `conf_text` replaces the whole generated config; `{port}` and `{workdir}` in it
    are filled in. `extra_conf` is appended to the generated one. `tls_dir` (certificates,
    CRL and ACL as `make_broker_pki` writes them) runs the project's `mosquitto.conf`
    instead: `port`/`url` are then its loopback listener and `tls_port`/`tls_url` its TLS one.
    `anonymous_loopback` opens that loopback listener to anonymous clients under client ids of
    their choosing, as the test suite's shared broker needs; production never does.
    """

    def __init__(self, workdir: Path, *, port: int | None = None, persistence: bool = False, extra_conf: str = "",
                 conf_text: str | None = None, tls_dir: Path | None = None, anonymous_loopback: bool = False) -> None:
        self.workdir = Path(workdir)
        self.tls_dir = Path(tls_dir) if tls_dir is not None else None
        self.anonymous_loopback = anonymous_loopback
        self._tls_port: int | None = None
        self._port = port
        # A port we picked may be taken by someone else between probe and bind; one we were given may not change.
        self._port_chosen_by_us = port is None
        self.persistence = persistence
        self.extra_conf = extra_conf
        self.conf_text = conf_text
        self.conf_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> str | None:
        return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None)

    @classmethod
    def available(cls) -> bool:
        """Whether a mosquitto binary is installed."""
        return cls.binary() is not None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("broker has not been started")
        return self._port

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def tls_port(self) -> int:
        if self._tls_port is None:
            raise RuntimeError("broker has no TLS listener or has not been started")
        return self._tls_port

    @property
    def tls_url(self) -> str:
        # `localhost`, not 127.0.0.1, is what a client would verify by name; the server certificate holds both.
        return f"mqtts://localhost:{self.tls_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def render_conf(self, port: int) -> str:
        if self.tls_dir is not None:
            if self._tls_port is None:
                self._tls_port = free_port()
            return render_broker_conf(
                conf_dir=self.tls_dir,
                port_tls=self._tls_port,
                port_local=port,
                bind="127.0.0.1",
                persistence_dir=self.workdir if self.persistence else None,
                persistence=self.persistence,
                # As root mosquitto would become `mosquitto`, which cannot read our 0600 keys or write workdir.
                user="root" if os.geteuid() == 0 else None,
                anonymous_loopback=self.anonymous_loopback,
            ) + self.extra_conf + "\n"
        if self.conf_text is not None:
            return self.conf_text.replace("{port}", str(port)).replace("{workdir}", str(self.workdir))
        lines = [
            f"listener {port} 127.0.0.1",
            "allow_anonymous true",
            "set_tcp_nodelay true",
            "max_queued_messages 10000",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
        ]
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/", "autosave_interval 1"]
        else:
            lines.append("persistence false")
        if os.geteuid() == 0:
            # Otherwise mosquitto drops to the `mosquitto` user, which cannot write our workdir.
            lines.append("user root")
        return "\n".join(lines) + "\n" + self.extra_conf + "\n"

    def start(self, timeout_s: float = 10.0) -> LocalBroker:
        """Launch and wait for `running`; BrokerStartError with the log tail if it never gets there."""
        if self.is_running():
            return self
        binary = self.binary()
        if binary is None:
            raise BrokerStartError("mosquitto is not installed (apt-get install mosquitto)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        attempts = _PORT_ATTEMPTS if self._port_chosen_by_us else 1
        error = ""
        for _ in range(attempts):
            if self._port is None:
                self._port = free_port()
            error = self._launch(binary, self._port, timeout_s)
            if not error:
                return self
            if "Address already in use" in error and self._port_chosen_by_us:
                self._port = self._tls_port = None
                continue
            break
        raise BrokerStartError(f"mosquitto did not start ({self.conf_path}):\n{error}")

    def _launch(self, binary: str, port: int, timeout_s: float) -> str:
        """Empty string when running, else the log tail that says why not."""
        self.conf_path.write_text(self.render_conf(port))
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen([binary, "-c", str(self.conf_path)], stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self._log_since(offset)
            if " running" in text:
                return ""
            if self._proc.poll() is not None:
                self._proc = None
                return self._log_since(offset)[-2000:] or "exited without a log line"
            time.sleep(0.02)
        tail = self._log_since(offset)[-2000:]
        self.stop()
        return f"not running after {timeout_s:g}s; log so far:\n{tail}"

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM (mosquitto saves persistence on it), a bounded wait, then SIGKILL."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)

    def kill(self) -> None:
        """SIGKILL, as a crash or power cut would end it (state since the last autosave is lost)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait(5.0)

    def restart(self, timeout_s: float = 10.0) -> LocalBroker:
        """Stop and start again on the same port with the same persistence directory."""
        self.stop()
        port_chosen_by_us, self._port_chosen_by_us = self._port_chosen_by_us, False
        try:
            return self.start(timeout_s)
        finally:
            self._port_chosen_by_us = port_chosen_by_us

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

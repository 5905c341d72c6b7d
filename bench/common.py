"""What every benchmark shares: statistics, report rows, a private broker, a coordinator subprocess, simulated agents.

The coordinator runs as `python -m mqfleet coordinator`, exactly as on the Pi, so
its cost is paid in its own process and not hidden by (or charged to) the
simulated agents. Every process started here is stopped by PID.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mqfleet import defaults
from mqfleet.client import FleetClient
from mqfleet.errors import MqfleetError
from mqfleet.local.process import Proc
from mqfleet.mqtt.config import BrokerConfig
from mqfleet.mqtt.connection import Connection
from mqfleet.mqtt.rpc import RpcClient
from mqfleet.wire.topics import Topics, Verb, encode

ROOT = Path(__file__).resolve().parents[1]
OK_TRAINER_PATH = ROOT / "tests" / "data" / "trainers" / "ok.py"
OPERATOR_TOKEN = "bench-operator-token"

#: The trainer every benchmark manifest declares: tests/data/trainers/ok.py (sleep, size_kib, tag).
OK_TRAINER = f"""\
[trainers.ok]
command = ["{{python}}", "{OK_TRAINER_PATH}"]
[trainers.ok.hyper]
sleep = {{ type = "float", default = 0.0, min = 0.0 }}
size_kib = {{ type = "int", default = 1, min = 0 }}
tag = {{ type = "str", default = "" }}
"""

#: A capability advert for a simulated CPU host with many slots.
SIM_ADVERT: dict[str, Any] = {"cuda": False, "gpus": [], "ram_gib": 16, "cpu_cores": 4, "torch": "", "slots": 1,
                              "os": "linux", "python": "3.11", "labels": []}


# --- statistics -------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank q-quantile (0..1) of `values`."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def median(values: list[float]) -> float:
    return percentile(values, 0.5)


def p99(values: list[float]) -> float:
    return percentile(values, 0.99)


@dataclass(frozen=True)
class Row:
    """One line of docs/BENCHMARKS.md: a figure, its baseline from the same run, the target and the verdict."""

    figure: str
    median: str
    p99: str = "-"
    baseline: str = "-"
    ratio: str = "-"
    target: str = "-"
    verdict: str = "-"


def verdict(passed: bool | None) -> str:
    return "-" if passed is None else ("PASS" if passed else "MISS")


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


# --- docs/BENCHMARKS.md -----------------------------------------------------------------------

#: The section scripts/arm64-check.sh writes (the Pi-class figures, under emulation); `make bench` keeps it.
PI_SECTION = "Pi-class, emulated"


def replace_sections(old: str, new: str, titles: list[str], note: str) -> str:
    """`old` with the `## title` sections of `new` in place of (or after) its own, each followed by `note` (if any)."""
    def split(text: str) -> tuple[str, dict[str, str]]:
        head, *parts = text.split("\n## ")
        return head, {p.split("\n", 1)[0].strip(): "## " + p.rstrip("\n") + "\n" for p in parts}

    old_head, old_parts = split(old)
    _, new_parts = split(new)
    for title in titles:
        old_parts[title] = new_parts[title] + (f"\n_{note}_\n" if note else "")
    return old_head.rstrip("\n") + "\n\n" + "\n".join(old_parts.values())


# --- processes ----------------------------------------------------------------------------------


def wait_for(predicate: Any, timeout_s: float, what: str) -> Any:
    """Poll `predicate` every 50 ms until it returns something truthy, which is returned; RuntimeError naming
    `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} within {timeout_s:g} s")
        time.sleep(0.05)


def fleet_env(broker_url: str, prefix: str) -> dict[str, str]:
    return {**os.environ, defaults.ENV_BROKER: broker_url, defaults.ENV_TOPIC_PREFIX: prefix,
            defaults.ENV_OPERATOR_TOKEN: OPERATOR_TOKEN, "PYTHONUNBUFFERED": "1"}


class CoordinatorProc(Proc):
    """`python -m mqfleet coordinator` on a manifest, started and waited for until it answers `health`."""

    def __init__(self, workdir: Path, broker_url: str, prefix: str, manifest: str, *, sweep_interval_s: float = 1.0,
                 log_level: str | None = None, wait_s: float = 60.0, extra: tuple[str, ...] = (),
                 wait: bool = True) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.manifest_path = workdir / "fleet.toml"
        self.manifest_path.write_text(manifest)
        self.broker_url, self.prefix = broker_url, prefix
        env = fleet_env(broker_url, prefix)
        if log_level:
            env[defaults.ENV_LOG_LEVEL] = log_level
        argv = [sys.executable, "-m", "mqfleet", "coordinator", "--manifest", str(self.manifest_path),
                "--db", str(workdir / "coordinator.db"), "--store", (workdir / "artifacts").as_uri(),
                "--sweep-interval", str(sweep_interval_s), *extra]
        super().__init__("coordinator", argv, env, workdir / "coordinator.log", cwd=ROOT)
        self.client = FleetClient(BrokerConfig(url=broker_url), prefix=prefix, token=OPERATOR_TOKEN, timeout_s=0.5)
        if wait:
            self.wait_for_health(wait_s)

    def wait_for_health(self, wait_s: float) -> None:
        """Until the coordinator answers `health` (RuntimeError and stopped after `wait_s`); then 30 s requests."""
        deadline = time.monotonic() + wait_s
        while True:
            if not self.alive():
                raise RuntimeError(f"coordinator exited with {self.popen.returncode}:\n{self.log_tail()}")
            try:
                self.client.health()
                break
            except MqfleetError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"coordinator did not answer within {wait_s:g}s:\n{self.log_tail()}") from None
        self.client.timeout_s = 30.0

    def wait_online(self, host: str, agent: Proc, wait_s: float) -> None:
        """Until the coordinator lists `host` online with its advert; RuntimeError with the agent's log if it never
        does, or exits first."""
        deadline = time.monotonic() + wait_s
        while not any(w.id == host and w.online and w.advert for w in self.client.workers()):
            if time.monotonic() > deadline or not agent.alive():
                raise RuntimeError(f"the agent did not come online:\n{agent.log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout_s: float = 15.0) -> int | None:
        self.client.close()
        return super().stop(timeout_s)


def new_prefix(name: str) -> str:
    return f"bench-{name}-{uuid.uuid4().hex[:6]}"


# --- simulated agents ---------------------------------------------------------------------------


class SimAgent:
    """A simulated agent: one Connection that adverts a host and sends agent verbs, as the real agent does."""

    def __init__(self, broker_url: str, prefix: str, host: str, *, advert: dict[str, Any] | None = None,
                 keepalive_s: int = 30) -> None:
        self.host = host
        self.topics = Topics(prefix)
        status = self.topics.status(host)
        self.conn = Connection(BrokerConfig(url=broker_url), client_id=self.topics.client_id(f"agent-{host}"),
                               will=(status, encode({"state": "offline"}), True), keepalive_s=keepalive_s,
                               reply_prefix=prefix)
        self.rpc = RpcClient(self.conn, self.topics, host)
        self._advert = {**SIM_ADVERT, **(advert or {}), "host": host, "hostname": host}

    def start(self, wait_s: float = 30.0) -> None:
        self.conn.start(wait_s=wait_s)
        self.conn.publish(self.topics.advert(self.host), encode({**self._advert, "ts": time.time()}), retain=True)
        self.conn.publish(self.topics.status(self.host), encode({"state": "online", "ts": time.time()}), retain=True)

    def stop(self) -> None:
        self.conn.stop(final=[(self.topics.status(self.host), encode({"state": "offline"}), True)], timeout_s=2.0)

    def call(self, verb: Verb, timeout_s: float = 30.0, **fields: Any) -> dict[str, Any]:
        """One agent request; the reply as sent (ok or not)."""
        return self.rpc.send(verb, fields, timeout_s=timeout_s)

    def claim_until_granted(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Claim until the coordinator has seen the advert and grants a job (it ignores claims before that)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            reply = self.call(Verb.CLAIM)
            if reply.get("ok") and reply.get("job"):
                return dict(reply["job"])
            time.sleep(0.02)
        raise RuntimeError(f"{self.host}: no job granted within {timeout_s:g}s")


def jobs_manifest(n_jobs: int, *, lease_s: float = 90, grace_s: float = 10, extra: str = "",
                  tag: str = "job", sleep_s: float = 0.0, max_attempts: int = 3) -> str:
    """A manifest with `n_jobs` ok.py jobs, as sweeps over distinct tags (a sweep may expand to at most 10,000)."""
    sweeps = []
    for start in range(0, n_jobs, 5000):
        tags = ", ".join(f'"{tag}-{i}"' for i in range(start, min(n_jobs, start + 5000)))
        sweeps.append(f'[[sweeps]]\nname = "{tag}-{start}"\nmodel = "ok"\nmode = "bench"\n'
                      f"hyper = {{ tag = [{tags}], sleep = {sleep_s} }}\n")
    head = f"[fleet]\nmax_attempts = {max_attempts}\nlease_s = {lease_s}\ngrace_s = {grace_s}\n"
    return "\n".join([head, OK_TRAINER, extra, *sweeps])

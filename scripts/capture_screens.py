"""Produce docs/screens/{status,show,show-chart,compare,watch}.{svg,txt}: the CLI's views of a small real fleet.

Starts a private mosquitto, a coordinator and two agents (subprocesses, exactly
as an operator runs them) on a small manifest, waits until one job has finished,
one has failed, one is running and a small sweep has completed with its progress
curves, then renders `status`, `show` (a failed job, and a job's training curves),
`compare` of the sweep and one `watch` frame in-process through mqfleet.cli.render.fleet into a recording console and exports
SVG and plain text. Every process it starts is stopped by PID.

    .venv/bin/python scripts/capture_screens.py [--out docs/screens] [--width 110]
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402

from mqfleet.cli.render import fleet as render_fleet  # noqa: E402
from mqfleet.cli.render import jobs as render_jobs  # noqa: E402
from mqfleet.client import FleetClient  # noqa: E402
from mqfleet.fleet_picture import settle_picture  # noqa: E402
from mqfleet.local.broker import LocalBroker  # noqa: E402
from mqfleet.mqtt.config import BrokerConfig  # noqa: E402
from mqfleet.wire.topics import JsonObject  # noqa: E402

PREFIX = "mqfleet"
TOKEN = "capture-token"
MANIFEST = """\
[fleet]
max_attempts = 2
lease_s = 30

[trainers.ok]
command = ["{python}", "tests/data/trainers/ok.py"]
[trainers.ok.hyper]
sleep = { type = "float", default = 0.0, min = 0.0 }
size_kib = { type = "int", default = 1, min = 0 }
tag = { type = "str", default = "" }

[trainers.slow]
command = ["{python}", "tests/data/trainers/slow_progress.py"]
[trainers.slow.hyper]
steps = { type = "int", default = 10 }
interval_s = { type = "float", default = 0.2 }

[trainers.crash]
command = ["{python}", "tests/data/trainers/crash.py"]

[trainers.curve]
command = ["{python}", "tests/data/trainers/hungry.py"]
[trainers.curve.hyper]
mib = { type = "int", default = 24, min = 0 }
cpu_s = { type = "float", default = 0.3, min = 0.0 }
lines = { type = "int", default = 5, min = 0 }
reports = { type = "int", default = 80, min = 0 }

[[hosts]]
id = "cpu-box"
slots = 1

[[hosts]]
id = "gpu-box"
slots = 2

[[jobs]]
name = "ok-baseline"
model = "ok"
mode = "baseline"
hyper = { size_kib = 64, tag = "baseline" }
priority = 5

[[jobs]]
name = "slow-long"
model = "slow"
mode = "realistic"
hyper = { steps = 600, interval_s = 0.5 }

[[jobs]]
name = "crash-demo"
model = "crash"
mode = "m"

[[sweeps]]
name = "curve-sweep"
model = "curve"
mode = "sweep"
hyper = { reports = [40, 80, 160] }

[[jobs]]
name = "ok-after"
model = "ok"
mode = "after"
after = ["slow-long"]
allowed_hosts = ["cpu-box"]
"""


def _loss(metrics: JsonObject) -> float:
    loss = metrics.get("loss")
    return float(loss) if isinstance(loss, (int, float)) else float("inf")


def wait_for(pred: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = pred()
        except Exception:
            value = None
        if value:
            return value
        time.sleep(0.3)
    raise SystemExit(f"capture: timed out after {timeout_s}s waiting for {what} (last: {value!r})")


def export(renderable: Any, out: Path, name: str, width: int, title: str) -> None:
    # A file of its own keeps the capture off this script's stdout; record=True keeps what was printed.
    console = Console(record=True, width=width, file=io.StringIO(), highlight=False, color_system="truecolor")
    console.print(renderable)
    (out / f"{name}.txt").write_text(console.export_text(clear=False), encoding="utf-8")
    (out / f"{name}.svg").write_text(console.export_svg(title=title), encoding="utf-8")
    print(f"wrote {out / name}.svg and .txt")


def capture(work: Path, out: Path, width: int) -> None:
    broker = LocalBroker(work / "broker")
    (work / "broker").mkdir()
    broker.start()
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "MQFLEET_BROKER": broker.url, "MQFLEET_PREFIX": PREFIX, "MQFLEET_OPERATOR_TOKEN": TOKEN,
           "PYTHONUNBUFFERED": "1"}
    client = FleetClient(BrokerConfig(url=broker.url), prefix=PREFIX, token=TOKEN, timeout_s=5)
    try:
        (work / "fleet.toml").write_text(MANIFEST)
        (work / "store").mkdir()

        def start(name: str, *args: str) -> None:
            log = open(work / f"{name}.log", "wb")  # noqa: SIM115 (lives as long as the process)
            procs.append(subprocess.Popen([sys.executable, "-m", "mqfleet", *args], cwd=ROOT, env=env, stdout=log,
                                          stderr=subprocess.STDOUT))

        start("coordinator", "coordinator", "--manifest", str(work / "fleet.toml"), "--db", str(work / "fleet.db"),
              "--store", (work / "store").as_uri())
        wait_for(client.health, 30, "the coordinator")
        for host, slots in (("cpu-box", "1"), ("gpu-box", "2")):
            start(host, "agent", "--host-id", host, "--slots", slots, "--work-dir", str(work / "work" / host),
                  "--repo", str(ROOT), "--heartbeat", "2")

        def settled() -> bool:
            by_name: dict[str, Any] = {str(j["name"]): j for j in client.jobs()}
            slow = by_name["slow-long"]
            curves = [j for name, j in by_name.items() if name.startswith("curve-sweep")]
            return (by_name["ok-baseline"]["status"] == "completed" and by_name["crash-demo"]["status"] == "failed"
                    and slow["status"] == "running" and (slow.get("progress") or {}).get("progress", 0) > 0.01
                    and len(curves) == 3 and all(j["status"] == "completed" for j in curves))

        wait_for(settled, 300, "one job completed, one failed and one running with progress")
        client.drain("cpu-box")
        now = time.time()
        export(render_fleet.status_view(client.health(), client.workers()), out, "status", width, "mqfleet status")
        export(render_jobs.job_view(client.job("crash-demo"), now), out, "show", width, "mqfleet show crash-demo")
        export(render_jobs.job_view(client.job("curve-sweep-reports=160"), now, width=width), out, "show-chart", width,
               "mqfleet show curve-sweep-reports=160")
        compared = client.compare(sweep="curve-sweep")
        rows = sorted(compared.jobs, key=lambda r: _loss(r.metrics))
        export(render_jobs.compare_table(rows, compared.metric_names, sort_by="loss", title="sweep curve-sweep"), out,
               "compare", width, "mqfleet compare --sweep curve-sweep")
        picture, _ = settle_picture(client, timeout_s=5)
        export(render_fleet.watch_frame(picture, time.time()), out, "watch", width, "mqfleet watch")
    finally:
        client.close()
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        broker.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screens")
    parser.add_argument("--width", type=int, default=110)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mqfleet-capture-") as work:
        capture(Path(work), args.out, args.width)
    return 0


if __name__ == "__main__":
    sys.exit(main())

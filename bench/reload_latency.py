"""Time from `reload` adding a job to an idle real agent starting it, beside the original design's HTTP polling.

Run: `python -m bench.reload_latency [--trials N] [--poll-s S]`.

mqfleet: a real `python -m mqfleet agent` subprocess sits idle; the operator
reload adds one job; we time from sending the reload to the job's `running`
event, which the agent causes with its first renewal right after it started the
trainer process. Each trial waits for the job to complete, so the agent is idle
again before the next reload.

Baseline: the original design, an HTTP server holding the job list and a worker
polling it on a fixed interval. It runs for real here (stdlib http.server and
urllib, loopback) at a scaled interval, with the job appearing at a random
phase of the poll cycle; the wait scales linearly with the interval, so the
15 s figure is the measured one times 15/interval, and is also stated exactly:
a uniform phase gives a median wait of interval/2 and a p99 of 0.99 x interval.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.common import ROOT, CoordinatorProc, fleet_env, jobs_manifest, median, new_prefix, p99
from mqfleet.local.broker import LocalBroker
from mqfleet.local.process import Proc
from mqfleet.mqtt.config import BrokerConfig
from mqfleet.mqtt.connection import Connection
from mqfleet.mqtt.inbox import Message
from mqfleet.wire.topics import Topics, Verb

#: The original design's worker poll interval.
ORIGINAL_POLL_S = 15.0


def measure_reload(trials: int, workdir: Path) -> dict[str, Any]:
    """Seconds from a reload adding a job to the agent starting it (`running`), over `trials` reloads."""
    with LocalBroker(workdir / "broker") as broker:
        prefix = new_prefix("reload")
        topics = Topics(prefix)
        coord = CoordinatorProc(workdir / "coord", broker.url, prefix, jobs_manifest(0))
        agent = Proc("agent", [sys.executable, "-m", "mqfleet", "agent", "--host-id", "reload-host", "--work-dir",
                      str(workdir / "agent"), "--repo", str(ROOT)], fleet_env(broker.url, prefix), workdir / "agent.log",
                     cwd=ROOT)
        events: dict[tuple[str, str], float] = {}
        seen = threading.Condition()

        def on_event(msg: Message) -> None:
            change = msg.json()
            with seen:
                events[(str(change.get("job_id")), str(change.get("to")))] = time.perf_counter()
                seen.notify_all()

        watcher = Connection(BrokerConfig(url=broker.url), client_id=f"{prefix}-watch", reply_prefix=prefix)
        watcher.subscribe(topics.events, on_event)
        to_running: list[float] = []
        to_claimed: list[float] = []
        try:
            watcher.start()
            _wait_idle_agent(coord)
            for i in range(trials):
                manifest = jobs_manifest(i + 1, tag="reload")
                sent = time.perf_counter()
                reply = coord.client.call_json(Verb.RELOAD, manifest=manifest)
                (job_id,) = reply["added"]
                def completed(job: str = job_id) -> bool:
                    return (job, "completed") in events

                with seen:
                    if not seen.wait_for(completed, timeout=60):
                        raise RuntimeError(f"reload trial {i}: job not completed in 60 s:\n{agent.log_tail()}")
                to_claimed.append(events[(job_id, "claimed")] - sent)
                to_running.append(events[(job_id, "running")] - sent)
        finally:
            watcher.stop()
            agent.stop()
            coord.stop()
    return {"trials": trials, "claimed_p50_s": median(to_claimed), "claimed_p99_s": p99(to_claimed),
            "running_p50_s": median(to_running), "running_p99_s": p99(to_running)}


def _wait_idle_agent(coord: CoordinatorProc, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(w.online and w.advert for w in coord.client.workers()):
            return
        time.sleep(0.05)
    raise RuntimeError("the agent did not come online")


class _JobBoard(BaseHTTPRequestHandler):
    """The original design's coordinator endpoint: GET /next returns the job waiting, if any."""

    board: dict[str, Any] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = json.dumps({"job": self.board.get("job")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        pass


def measure_polling(trials: int, poll_s: float, seed: int = 0) -> dict[str, Any]:
    """A real HTTP poller at `poll_s`: seconds from a job appearing (random phase) to the poller seeing it."""
    rng = random.Random(seed)
    board: dict[str, Any] = {}
    handler = type("Board", (_JobBoard,), {"board": board})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    url = f"http://127.0.0.1:{server.server_address[1]}/next"
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    found: dict[str, float] = {}
    stop = threading.Event()

    def poller() -> None:
        while not stop.is_set():
            with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback URL built above
                job = json.loads(resp.read())["job"]
            if job is not None and job not in found:
                found[job] = time.perf_counter()
            stop.wait(poll_s)

    polling = threading.Thread(target=poller, daemon=True)
    waits: list[float] = []
    try:
        polling.start()
        for i in range(trials):
            time.sleep(rng.uniform(0, poll_s))  # the job appears at a random phase of the poll cycle
            name = f"job-{i}"
            board["job"] = name
            appeared = time.perf_counter()
            deadline = time.monotonic() + poll_s * 3 + 5
            while name not in found and time.monotonic() < deadline:
                time.sleep(poll_s / 100)
            if name not in found:
                raise RuntimeError("the poller never saw the job")
            waits.append(found[name] - appeared)
    finally:
        stop.set()
        polling.join(timeout=poll_s + 5)
        server.shutdown()
        server.server_close()
    scale = ORIGINAL_POLL_S / poll_s
    return {"trials": trials, "poll_s": poll_s, "measured_p50_s": median(waits), "measured_p99_s": p99(waits),
            "scaled_p50_s": median(waits) * scale, "scaled_p99_s": p99(waits) * scale,
            "analytic_p50_s": ORIGINAL_POLL_S / 2, "analytic_p99_s": ORIGINAL_POLL_S * 0.99}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--poll-s", type=float, default=0.3, help="scaled poll interval of the HTTP baseline")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-reload-") as tmp:
        print(json.dumps(measure_reload(args.trials, Path(tmp)), indent=2))
    print(json.dumps(measure_polling(args.trials, args.poll_s), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

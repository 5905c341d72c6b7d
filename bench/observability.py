"""What observability costs the coordinator: claim+completion churn with and without it, same run.

Run: `python -m bench.observability [--agents 20] [--seconds 8] [--rounds 2]`.

Without: the coordinator as before issue 18 is used: no metrics endpoint, agents send no trainer
output, no progress reports and no usage. With: `--metrics-port` set and scraped every second (15 s is
usual: this is the pessimistic case), every simulated job publishes LINES_PER_JOB output lines (stored
durably by the coordinator) and completes with its usage and REPORTS_PER_JOB progress reports. The two
variants alternate on one broker (without, with, without, with, ...) so slow drifts of the shared machine
hit both alike; each figure is the median over the rounds.
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import CoordinatorProc, SimAgent, jobs_manifest, median, new_prefix, p99
from bench.throughput import _start_agents, _stop_agents, seed_artifact
from mqfleet.errors import MqfleetError
from mqfleet.protocol import Verb, encode
from mqfleet.services.broker import LocalBroker

#: Output lines each simulated job publishes (in one batch, as the agent's 0.5 s flush does for a short job).
LINES_PER_JOB = 20
#: Progress reports each simulated job sends with its completion.
REPORTS_PER_JOB = 5
USAGE = {"wall_s": 1.5, "cpu_s": 1.2, "max_rss_bytes": 200 << 20, "gpu_mem_max_bytes": None}


class _Loop:
    """Claim -> (output lines) -> upload_url -> complete, counted inside [t_start, t_end)."""

    def __init__(self, sha: str, size: int, t_start: float, t_end: float, *, observed: bool) -> None:
        self.sha, self.size, self.t_start, self.t_end, self.observed = sha, size, t_start, t_end, observed
        self.lock = threading.Lock()
        self.ops = 0
        self.claim_s: list[float] = []
        self.errors: list[str] = []

    def run(self, agent: SimAgent) -> None:
        try:
            while time.monotonic() < self.t_end:
                sent = time.monotonic()
                reply = agent.call(Verb.CLAIM)
                claimed_at = time.monotonic()
                if not reply.get("ok") or not reply.get("job"):
                    raise RuntimeError(f"claim gave no job: {reply}")
                grant = reply["job"]
                lease = {"job_id": grant["job"]["id"], "lease_id": grant["lease_id"]}
                extra: dict[str, Any] = {}
                if self.observed:
                    lines = [f"epoch {i} loss {1.0 / (i + 1):.4f} lr 0.001 step time 12.3 ms" for i in range(LINES_PER_JOB)]
                    agent.conn.publish(agent.topics.log(agent.host, lease["job_id"]),
                                       encode({"job_id": lease["job_id"], "lines": lines, "ts": time.time(),
                                               "attempt": grant["attempt"]}), qos=0)
                    extra = {"usage": USAGE, "progress_reports": [
                        [i, time.time(), {"epoch": i, "loss": 1.0 / i, "metrics": {"acc": 1 - 1.0 / (i + 1)}}]
                        for i in range(1, REPORTS_PER_JOB + 1)]}
                up = agent.call(Verb.UPLOAD_URL, **lease, sha256=self.sha, size=self.size)
                if not up.get("ok") or not up.get("exists"):
                    raise RuntimeError(f"upload_url did not deduplicate: {up}")
                done = agent.call(Verb.COMPLETE, **lease, sha256=self.sha, size=self.size, metrics={}, output_tail="",
                                  **extra)
                if not done.get("ok"):
                    raise RuntimeError(f"complete refused: {done}")
                finished_at = time.monotonic()
                with self.lock:
                    if self.t_start <= claimed_at < self.t_end:
                        self.ops += 1
                        self.claim_s.append(claimed_at - sent)
                    self.ops += self.t_start <= finished_at < self.t_end
        except (MqfleetError, RuntimeError) as e:
            with self.lock:
                self.errors.append(f"{agent.host}: {e}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape_until(port: int, stop: threading.Event, scrapes: list[float]) -> None:
    while not stop.wait(1.0):
        t0 = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            response.read()
        scrapes.append(time.monotonic() - t0)


def run_once(broker_url: str, workdir: Path, agents_n: int, seconds: float, *, observed: bool,
             warmup_s: float = 2.0) -> dict[str, Any]:
    """One churn run; ops/s, claim round trips, and (observed) the scrape times."""
    jobs = max(200, int(agents_n * 2 + (seconds + warmup_s) * 600))
    prefix = new_prefix("obs" if observed else "base")
    port = free_port()
    extra = ("--metrics-port", str(port)) if observed else ()
    coord = CoordinatorProc(workdir, broker_url, prefix, jobs_manifest(jobs, lease_s=600), extra=extra)
    agents: list[SimAgent] = []
    stop = threading.Event()
    scrapes: list[float] = []
    try:
        agents = _start_agents(broker_url, prefix, agents_n, "obs")
        sha, size = seed_artifact(agents[0], workdir)
        t0 = time.monotonic() + 0.5
        loop = _Loop(sha, size, t0 + warmup_s, t0 + warmup_s + seconds, observed=observed)
        scraper = threading.Thread(target=_scrape_until, args=(port, stop, scrapes), daemon=True)
        if observed:
            scraper.start()
        threads = [threading.Thread(target=loop.run, args=(a,), daemon=True) for a in agents]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=seconds + warmup_s + 60)
        stop.set()
        lines_stored = 0
        if observed:
            done_jobs = coord.client.jobs("completed")
            some_job = str(done_jobs[len(done_jobs) // 2]["id"])  # not the seed job, which sent no lines
            lines_stored = len(coord.client.logs(some_job).lines)
    finally:
        stop.set()
        _stop_agents(agents)
        coord.stop()
    if loop.errors:
        raise RuntimeError(f"{len(loop.errors)} agent loops failed, first: {loop.errors[0]}")
    if observed and lines_stored != LINES_PER_JOB:
        raise RuntimeError(f"a completed job has {lines_stored} stored lines, not {LINES_PER_JOB}")
    return {"ops_per_s": loop.ops / seconds, "claim_p50_s": median(loop.claim_s), "claim_p99_s": p99(loop.claim_s),
            "scrapes": len(scrapes), "scrape_p50_s": median(scrapes) if scrapes else 0.0}


def measure_observability_cost(agents_n: int, seconds: float, rounds: int, workdir: Path) -> dict[str, Any]:
    """Alternating runs without and with observability; medians per variant and the ratios."""
    runs: dict[str, list[dict[str, Any]]] = {"base": [], "observed": []}
    single: dict[str, list[dict[str, Any]]] = {"base": [], "observed": []}
    with LocalBroker(workdir / "broker") as broker:
        for i in range(rounds):
            for name in ("base", "observed"):
                runs[name].append(run_once(broker.url, workdir / f"{name}-{i}", agents_n, seconds,
                                           observed=name == "observed"))
                # one agent alone: the claim round trip without queueing behind other agents
                single[name].append(run_once(broker.url, workdir / f"{name}-single-{i}", 1, seconds / 2,
                                             observed=name == "observed"))
    out: dict[str, Any] = {"agents": agents_n, "seconds": seconds, "rounds": rounds, "runs": runs, "single": single}
    for name, rs in single.items():
        out[f"single_{name}"] = {key: median([r[key] for r in rs]) for key in ("claim_p50_s", "claim_p99_s")}
    out["single_claim_p50_ratio"] = out["single_observed"]["claim_p50_s"] / out["single_base"]["claim_p50_s"]
    for name, rs in runs.items():
        out[name] = {key: median([r[key] for r in rs]) for key in ("ops_per_s", "claim_p50_s", "claim_p99_s")}
    out["scrape_p50_s"] = median([r["scrape_p50_s"] for r in runs["observed"]])
    out["throughput_ratio"] = out["observed"]["ops_per_s"] / out["base"]["ops_per_s"]
    out["claim_p50_ratio"] = out["observed"]["claim_p50_s"] / out["base"]["claim_p50_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mqfleet-bench-obs-") as tmp:
        print(json.dumps(measure_observability_cost(args.agents, args.seconds, args.rounds, Path(tmp)), indent=2))


if __name__ == "__main__":
    main()

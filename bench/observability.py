"""What observability costs the coordinator: claim+completion churn with and without it, same run.

Run: `python -m bench.observability [--agents 20] [--seconds 8] [--rounds 3]`.

Three variants of one churn, alternating on one broker (the order turns each round, so slow drifts of the
shared machine and a variant's place in the round hit all alike; each figure is the median over rounds):

- observed: `--metrics-port` set and scraped every second (Prometheus' usual 15 s is 15 times less: the
  pessimistic case); every simulated job publishes LINES_PER_JOB output lines (one log batch, stored
  durably) and completes with its usage and REPORTS_PER_JOB progress reports (stored per attempt).
- unkept, the baseline of the cost: the same traffic (real agents always send their output, for `logs
  -f`, and their progress and usage), a coordinator with `[fleet] keep_history = false` (stores none of
  it) and no metrics endpoint. The difference is what storing and exposing cost, nothing else.
- silent: no metrics, and agents that send no output, progress or usage: the comparison as first
  published, kept as a labelled row; it adds the agents' own traffic to the cost.

Besides throughput and claim round trips, each run reads the coordinator's CPU time (user + system)
over the window and divides it by the jobs completed in it: less sensitive to the machine's load than
jobs per second, whose simulated agents share the CPU with the coordinator.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from bench.common import CoordinatorProc, SimAgent, jobs_manifest, median, new_prefix, p99
from bench.throughput import _start_agents, _stop_agents, seed_artifact
from mqfleet.errors import MqfleetError
from mqfleet.local.broker import LocalBroker
from mqfleet.local.ports import free_port
from mqfleet.wire.topics import Verb, encode

#: Output lines each simulated job publishes (in one batch, as the agent's 0.5 s flush does for a short job).
LINES_PER_JOB = 20
#: Progress reports each simulated job sends with its completion.
REPORTS_PER_JOB = 5
USAGE = {"wall_s": 1.5, "cpu_s": 1.2, "max_rss_bytes": 200 << 20, "gpu_mem_max_bytes": None}
#: The variants, in the order of the first round: (name, agents send output/progress/usage, coordinator keeps it).
VARIANTS = (("silent", False, False), ("unkept", True, False), ("observed", True, True))


class _Loop:
    """Claim -> (output lines) -> upload_url -> complete, counted inside [t_start, t_end)."""

    def __init__(self, sha: str, size: int, t_start: float, t_end: float, *, talkative: bool) -> None:
        self.sha, self.size, self.t_start, self.t_end, self.talkative = sha, size, t_start, t_end, talkative
        self.lock = threading.Lock()
        self.ops = 0
        self.completions = 0
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
                if self.talkative:
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
                    if self.t_start <= finished_at < self.t_end:
                        self.ops += 1
                        self.completions += 1
        except (MqfleetError, RuntimeError) as e:
            with self.lock:
                self.errors.append(f"{agent.host}: {e}")


class _CpuWindow:
    """CPU seconds (user + system) of processes between two monotonic instants, read by a timer thread."""

    def __init__(self, pids: dict[str, int], t_start: float, t_end: float) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.t_start, self.t_end = t_start, t_end
        self.used_s: dict[str, float] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _cpu(self) -> dict[str, float]:
        return {name: p.cpu_times().user + p.cpu_times().system for name, p in self.procs.items()}

    def _run(self) -> None:
        time.sleep(max(0.0, self.t_start - time.monotonic()))
        before = self._cpu()
        time.sleep(max(0.0, self.t_end - time.monotonic()))
        self.used_s = {name: s - before[name] for name, s in self._cpu().items()}


def _scrape_until(port: int, stop: threading.Event, scrapes: list[float]) -> None:
    while not stop.wait(1.0):
        t0 = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            response.read()
        scrapes.append(time.monotonic() - t0)


def run_once(broker_url: str, workdir: Path, agents_n: int, seconds: float, *, talkative: bool, kept: bool,
             metrics: bool | None = None, warmup_s: float = 2.0) -> dict[str, Any]:
    """One churn run; ops/s, claim round trips, CPU per completed job and (with metrics, by default when
    kept) the scrape times."""
    metrics = kept if metrics is None else metrics
    jobs = max(200, int(agents_n * 2 + (seconds + warmup_s) * 600))
    prefix = new_prefix("obs" if kept else "base")
    port = free_port()
    extra = ("--metrics-port", str(port)) if metrics else ()
    manifest = jobs_manifest(jobs, lease_s=600)
    if not kept:
        manifest = manifest.replace("[fleet]\n", "[fleet]\nkeep_history = false\n", 1)
    coord = CoordinatorProc(workdir, broker_url, prefix, manifest, extra=extra)
    agents: list[SimAgent] = []
    stop = threading.Event()
    scrapes: list[float] = []
    try:
        agents = _start_agents(broker_url, prefix, agents_n, "obs")
        sha, size = seed_artifact(agents[0], workdir)
        t0 = time.monotonic() + 0.5
        loop = _Loop(sha, size, t0 + warmup_s, t0 + warmup_s + seconds, talkative=talkative)
        cpu = _CpuWindow({"coordinator": coord.pid, "agents": psutil.Process().pid}, loop.t_start, loop.t_end)
        scraper = threading.Thread(target=_scrape_until, args=(port, stop, scrapes), daemon=True)
        if metrics:
            scraper.start()
        threads = [threading.Thread(target=loop.run, args=(a,), daemon=True) for a in agents]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=seconds + warmup_s + 60)
        cpu.thread.join(timeout=10)
        stop.set()
        lines_stored = -1
        if talkative:
            done_jobs = coord.client.jobs("completed")
            some_job = str(done_jobs[len(done_jobs) // 2]["id"])  # not the seed job, which sent no lines
            lines_stored = len(coord.client.logs(some_job).lines)
    finally:
        stop.set()
        _stop_agents(agents)
        coord.stop()
    if loop.errors:
        raise RuntimeError(f"{len(loop.errors)} agent loops failed, first: {loop.errors[0]}")
    if talkative and lines_stored != (LINES_PER_JOB if kept else 0):
        raise RuntimeError(f"a completed job has {lines_stored} stored lines with kept={kept}")
    completions = max(1, loop.completions)
    return {"ops_per_s": loop.ops / seconds, "claim_p50_s": median(loop.claim_s), "claim_p99_s": p99(loop.claim_s),
            "coordinator_cpu_ms_per_job": cpu.used_s["coordinator"] * 1e3 / completions,
            "agents_cpu_ms_per_job": cpu.used_s["agents"] * 1e3 / completions,
            "scrapes": len(scrapes), "scrape_p50_s": median(scrapes) if scrapes else 0.0}


CHURN_KEYS = ("ops_per_s", "claim_p50_s", "claim_p99_s", "coordinator_cpu_ms_per_job", "agents_cpu_ms_per_job")


def measure_observability_cost(agents_n: int, seconds: float, rounds: int, workdir: Path) -> dict[str, Any]:
    """Alternating runs of the three variants; medians per variant and the ratios against `unkept` (the cost)
    and `silent` (the comparison first published)."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in VARIANTS}
    single: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in VARIANTS}
    with LocalBroker(workdir / "broker") as broker:
        for i in range(rounds):
            for name, talkative, kept in VARIANTS[i % 3:] + VARIANTS[:i % 3]:
                runs[name].append(run_once(broker.url, workdir / f"{name}-{i}", agents_n, seconds,
                                           talkative=talkative, kept=kept))
                # one agent alone: the claim round trip without queueing behind other agents
                single[name].append(run_once(broker.url, workdir / f"{name}-single-{i}", 1, seconds / 2,
                                             talkative=talkative, kept=kept))
    out: dict[str, Any] = {"agents": agents_n, "seconds": seconds, "rounds": rounds, "runs": runs, "single": single}
    for name, rs in single.items():
        out[f"single_{name}"] = {key: median([r[key] for r in rs]) for key in ("claim_p50_s", "claim_p99_s")}
    for name, rs in runs.items():
        out[name] = {key: median([r[key] for r in rs]) for key in CHURN_KEYS}
    out["scrape_p50_s"] = median([r["scrape_p50_s"] for r in runs["observed"]])
    for base in ("unkept", "silent"):
        out[f"vs_{base}"] = {
            "throughput_ratio": out["observed"]["ops_per_s"] / out[base]["ops_per_s"],
            "claim_p50_ratio": out["observed"]["claim_p50_s"] / out[base]["claim_p50_s"],
            "cpu_per_job_ratio": out["observed"]["coordinator_cpu_ms_per_job"] / out[base]["coordinator_cpu_ms_per_job"],
            "single_claim_p50_ratio": out["single_observed"]["claim_p50_s"] / out[f"single_{base}"]["claim_p50_s"],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mqfleet-bench-obs-") as tmp:
        result = measure_observability_cost(args.agents, args.seconds, args.rounds, Path(tmp))
    summary = {k: v for k, v in result.items() if k not in ("runs", "single")}
    summary["per_run"] = {name: [{k: round(r[k], 4) for k in CHURN_KEYS} for r in rs] for name, rs in result["runs"].items()}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

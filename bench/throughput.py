"""Lease throughput: simulated agents claiming and completing against one coordinator subprocess; and many agents renewing.

Run: `python -m bench.throughput [--agents 100] [--seconds 15] [--renewers 1000]`.

Churn: each simulated agent loops claim -> upload_url -> complete, exactly the
agent's RPC sequence. The first job uploads a real tiny bundle, which the
coordinator verifies; every later completion names the same sha256, gets
`exists`; the coordinator hashes the stored tiny object again before trusting it,
so the figure is the coordinator's cost and barely the store's. Renewal: many connected agents each hold a lease and renew it
every few seconds for a while; afterwards no lease may have been lost.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import CoordinatorProc, SimAgent, jobs_manifest, new_prefix
from mqfleet.errors import MqfleetError
from mqfleet.local.broker import LocalBroker
from mqfleet.store.bundle import pack_artifact
from mqfleet.store.transfer import upload_to_url
from mqfleet.wire.requests import UploadMethod
from mqfleet.wire.topics import Verb


def seed_artifact(agent: SimAgent, workdir: Path) -> tuple[str, int]:
    """Complete one job with a real uploaded bundle, so later completions of the same bytes are deduplicated."""
    out = workdir / "seed-out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.txt").write_text("bench artifact\n")
    sha, size = pack_artifact(out, workdir / "seed.tar.zst")
    grant = agent.claim_until_granted()
    lease = {"job_id": grant["job"]["id"], "lease_id": grant["lease_id"]}
    up = agent.call(Verb.UPLOAD_URL, **lease, sha256=sha, size=size)
    if not up.get("ok"):
        raise RuntimeError(f"upload_url refused: {up}")
    if not up["exists"]:
        upload_to_url(up["url"], workdir / "seed.tar.zst", method=UploadMethod(up.get("method") or "PUT"), fields=up.get("fields"))
    done = agent.call(Verb.COMPLETE, **lease, sha256=sha, size=size, metrics={}, output_tail="")
    if not done.get("ok"):
        raise RuntimeError(f"seed completion refused: {done}")
    return sha, size


class _Churn:
    """Counts claims and completions made after `t_start` and before `t_end` by many agent loops."""

    def __init__(self, sha: str, size: int, t_start: float, t_end: float) -> None:
        self.sha, self.size, self.t_start, self.t_end = sha, size, t_start, t_end
        self.lock = threading.Lock()
        self.claims = self.completions = 0
        self.errors: list[str] = []
        self.drained = False

    def run(self, agent: SimAgent) -> None:
        try:
            while time.monotonic() < self.t_end:
                reply = agent.call(Verb.CLAIM)
                if not reply.get("ok"):
                    raise RuntimeError(f"claim refused: {reply}")
                if not reply.get("job"):
                    self.drained = True
                    return
                grant = reply["job"]
                claimed_at = time.monotonic()
                lease = {"job_id": grant["job"]["id"], "lease_id": grant["lease_id"]}
                up = agent.call(Verb.UPLOAD_URL, **lease, sha256=self.sha, size=self.size)
                if not up.get("ok") or not up.get("exists"):
                    raise RuntimeError(f"upload_url did not deduplicate: {up}")
                done = agent.call(Verb.COMPLETE, **lease, sha256=self.sha, size=self.size, metrics={}, output_tail="")
                if not done.get("ok"):
                    raise RuntimeError(f"complete refused: {done}")
                finished_at = time.monotonic()
                with self.lock:
                    self.claims += self.t_start <= claimed_at < self.t_end
                    self.completions += self.t_start <= finished_at < self.t_end
        except (MqfleetError, RuntimeError) as e:
            with self.lock:
                self.errors.append(f"{agent.host}: {e}")


def _start_agents(broker_url: str, prefix: str, n: int, name: str, keepalive_s: int = 30) -> list[SimAgent]:
    agents = [SimAgent(broker_url, prefix, f"{name}-{i:04d}", keepalive_s=keepalive_s) for i in range(n)]
    for agent in agents:
        agent.start()
    return agents


def _stop_agents(agents: list[SimAgent]) -> None:
    for agent in agents:
        try:
            agent.stop()
        except MqfleetError:
            pass


def measure_churn(agents_n: int, seconds: float, workdir: Path, *, warmup_s: float = 2.0) -> dict[str, Any]:
    """Claims+completions per second with `agents_n` concurrent simulated agents over `seconds`."""
    jobs = max(200, int(agents_n * 2 + (seconds + warmup_s) * 800))
    with LocalBroker(workdir / "broker") as broker:
        prefix = new_prefix("tput")
        coord = CoordinatorProc(workdir / "coord", broker.url, prefix, jobs_manifest(jobs, lease_s=600))
        agents: list[SimAgent] = []
        try:
            agents = _start_agents(broker.url, prefix, agents_n, "tput")
            sha, size = seed_artifact(agents[0], workdir)
            # The first start publishes every job's retained state in the background: measure after it.
            while coord.client.health().republishing:
                time.sleep(0.2)
            t0 = time.monotonic() + 0.5
            churn = _Churn(sha, size, t0 + warmup_s, t0 + warmup_s + seconds)
            threads = [threading.Thread(target=churn.run, args=(a,), daemon=True) for a in agents]
            for t in threads:
                t.start()
            # the coordinator's CPU over the timed window only (not its start, manifest load and first republish)
            time.sleep(max(0.0, churn.t_start - time.monotonic()))
            cpu_at_start = _cpu_s(coord.pid)
            time.sleep(max(0.0, churn.t_end - time.monotonic()))
            coord_cpu_s = _cpu_s(coord.pid) - cpu_at_start
            for t in threads:
                t.join(timeout=seconds + warmup_s + 60)
        finally:
            _stop_agents(agents)
            coord.stop()
    if churn.errors:
        raise RuntimeError(f"{len(churn.errors)} agent loops failed, first: {churn.errors[0]}")
    if churn.drained:
        raise RuntimeError(f"the {jobs} jobs ran out before the window ended; raise the job count")
    ops = churn.claims + churn.completions
    return {"agents": agents_n, "seconds": seconds, "claims": churn.claims, "completions": churn.completions,
            "ops_per_s": ops / seconds, "jobs_per_s": churn.completions / seconds, "coordinator_cpu_s": coord_cpu_s}


def _cpu_s(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


#: Connections per load process: paho's loop uses select(), which fails for fds above 1023, and each
#: Connection holds three fds (socket and paho's wake-up pair), so one process stays well below ~330.
AGENTS_PER_PROCESS = 200


def _renew_worker(broker_url: str, prefix: str, hosts: list[str], renew_s: float, seconds: float,
                  results: Any) -> None:
    """One load process: connect `hosts`, claim a lease each, renew every `renew_s` until `seconds` pass."""
    agents: list[SimAgent] = []
    try:
        agents = [SimAgent(broker_url, prefix, h, keepalive_s=30) for h in hosts]
        for agent in agents:
            agent.start(wait_s=60)
        grants = [a.claim_until_granted(timeout_s=120) for a in agents]
        results.put(("ready", len(grants)))
        lost: list[str] = []
        rtts: list[float] = []
        lock = threading.Lock()
        end = time.monotonic() + seconds

        def renew_loop(agent: SimAgent, grant: dict[str, Any], phase_s: float) -> None:
            next_ts = time.monotonic() + phase_s
            while next_ts < end:
                time.sleep(max(0.0, next_ts - time.monotonic()))
                sent = time.monotonic()
                try:
                    reply = agent.call(Verb.RENEW, job_id=grant["job"]["id"], lease_id=grant["lease_id"],
                                       progress={"progress": 0.5})
                except MqfleetError as e:
                    reply = {"ok": False, "error": str(e)}
                with lock:
                    rtts.append(time.monotonic() - sent)
                    if not reply.get("ok"):
                        lost.append(f"{agent.host}: {reply.get('error')}")
                next_ts += renew_s

        threads = [threading.Thread(target=renew_loop, args=(a, g, renew_s * i / len(agents)), daemon=True)
                   for i, (a, g) in enumerate(zip(agents, grants, strict=True))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=seconds + 60)
        results.put(("done", rtts, lost))
    except Exception as e:  # reported to the parent, which raises it
        results.put(("error", f"{type(e).__name__}: {e}"))
    finally:
        _stop_agents(agents)


def measure_renewals(agents_n: int, seconds: float, workdir: Path, *, renew_s: float = 3.0,
                     lease_s: float = 10.0) -> dict[str, Any]:
    """`agents_n` connected agents each renew one lease every `renew_s` for `seconds`; counts lost leases."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with LocalBroker(workdir / "broker") as broker:
        prefix = new_prefix("renew")
        coord = CoordinatorProc(workdir / "coord", broker.url, prefix, jobs_manifest(agents_n, lease_s=lease_s),
                                sweep_interval_s=0.5)
        hosts = [f"renew-{i:04d}" for i in range(agents_n)]
        groups = [hosts[i:i + AGENTS_PER_PROCESS] for i in range(0, agents_n, AGENTS_PER_PROCESS)]
        results = ctx.Queue()
        procs = [ctx.Process(target=_renew_worker, args=(broker.url, prefix, g, renew_s, seconds, results))
                 for g in groups]
        rtts: list[float] = []
        lost: list[str] = []
        try:
            started = time.monotonic()
            for proc in procs:
                proc.start()
            ready = done = 0
            connect_s = 0.0
            while done < len(procs):
                item = results.get(timeout=seconds + 180)
                if item[0] == "error":
                    raise RuntimeError(f"a renewal load process failed: {item[1]}")
                if item[0] == "ready":
                    ready += 1
                    connect_s = time.monotonic() - started
                else:
                    done += 1
                    rtts += item[1]
                    lost += item[2]
            # A lost lease shows as a job that is not running (back to pending, or failed) and as a refused
            # renewal; the full job listing is not used, as the CLI client refuses replies over 256 KiB.
            by_status = coord.client.health().jobs_by_status
            not_running = sum(n for status, n in by_status.items() if status != "running")
        finally:
            for proc in procs:
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.kill()
                    proc.join(timeout=10)
            coord.stop()
    rtts.sort()
    return {"agents": agents_n, "processes": len(procs), "seconds": seconds, "renew_every_s": renew_s,
            "lease_s": lease_s, "connect_and_claim_s": round(connect_s, 1), "renewals": len(rtts),
            "refused_or_lost": len(lost), "jobs_not_running": not_running,
            "renew_p50_s": rtts[len(rtts) // 2], "renew_p99_s": rtts[min(len(rtts) - 1, round(0.99 * (len(rtts) - 1)))],
            "first_lost": lost[:3]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--renewers", type=int, default=1000)
    parser.add_argument("--renew-seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-tput-") as tmp:
        print(json.dumps(measure_churn(args.agents, args.seconds, Path(tmp) / "churn"), indent=2))
        print(json.dumps(measure_renewals(args.renewers, args.renew_seconds, Path(tmp) / "renew"), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

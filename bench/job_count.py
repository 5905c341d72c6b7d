"""How the coordinator scales with the number of jobs it holds: 1,000 / 10,000 / 100,000 in the same run.

Run: `python -m bench.job_count [--sizes 1000,10000,100000]`. For each size, a
coordinator subprocess (as on the Pi) loads a manifest of that many jobs; then:
its RSS; `mqfleet jobs --json` as a subprocess (wall time, CLI peak RSS, rows
checked); a reload of the same file while a simulated agent renews a lease every
50 ms (reload wall time, the longest renewal wait meanwhile); claim round trips;
and a restart (SIGTERM, start again) timed to the first answered `health` and the
first answered renewal of the lease granted before it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench.common import ROOT, CoordinatorProc, SimAgent, fleet_env, jobs_manifest, median, new_prefix
from mqfleet.errors import MqfleetError
from mqfleet.local.broker import LocalBroker
from mqfleet.wire.topics import Verb

MIB = 1 << 20
HOST = "count-host"
#: The lease of the bench's manifest; a renewal wait longer than its slack would cost the lease.
LEASE_S = 90.0


def _cli_jobs_json(broker_url: str, prefix: str, expect: int) -> tuple[float, float]:
    """Wall time of `mqfleet jobs --json` to a file and its peak RSS (MiB); checks it listed `expect` rows."""
    with tempfile.TemporaryFile() as out:
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "mqfleet", "jobs", "--json", "--timeout", "30"],
                                env=fleet_env(broker_url, prefix), stdout=out, stderr=subprocess.PIPE, cwd=ROOT)
        peak = 0
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                peak = max(peak, ps.memory_info().rss)
            except psutil.Error:
                break
            time.sleep(0.02)
        wall = time.monotonic() - start
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.returncode != 0:
            raise RuntimeError(f"jobs --json exited {proc.returncode}: {err[-2000:]}")
        out.seek(0)
        rows = json.load(out)
    if len(rows) != expect:
        raise RuntimeError(f"jobs --json listed {len(rows)} jobs, not {expect}")
    return wall, peak / MIB


def _renew_during(agent: SimAgent, lease: dict[str, Any], action: Any) -> tuple[Any, float, float]:
    """Run `action()` while another thread renews `lease` every 50 ms; its result, wall time and longest renewal wait."""
    stop = threading.Event()
    waits: list[float] = []
    refused: list[str] = []

    def renew() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            reply = agent.call(Verb.RENEW, timeout_s=LEASE_S, job_id=lease["job"]["id"], lease_id=lease["lease_id"])
            waits.append(time.monotonic() - t0)
            if not reply.get("ok"):
                refused.append(str(reply.get("error")))
            stop.wait(0.05)

    thread = threading.Thread(target=renew, daemon=True)
    thread.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    result = action()
    wall = time.monotonic() - t0
    time.sleep(0.2)
    stop.set()
    thread.join(timeout=LEASE_S)
    if refused:
        raise RuntimeError(f"renewals refused during the action: {refused[:3]}")
    return result, wall, max(waits)


def _first_answer(coord: CoordinatorProc, agent: SimAgent, lease: dict[str, Any], started: float) -> tuple[float, float]:
    """Seconds from `started` to the first answered `health`, and to the first answered renewal of `lease`."""
    health_s = renew_s = 0.0
    deadline = time.monotonic() + 120
    while not (health_s and renew_s):
        if time.monotonic() > deadline or not coord.alive():
            raise RuntimeError(f"restarted coordinator did not answer:\n{coord.log_tail()}")
        if not health_s:
            try:
                coord.client.health()
                health_s = time.monotonic() - started
            except MqfleetError:
                pass
        if not renew_s:
            try:
                reply = agent.call(Verb.RENEW, timeout_s=0.5, job_id=lease["job"]["id"], lease_id=lease["lease_id"])
            except MqfleetError:
                continue
            if not reply.get("ok"):
                raise RuntimeError(f"renewal after restart refused: {reply}")
            renew_s = time.monotonic() - started
    return health_s, renew_s


def measure_size(n_jobs: int, workdir: Path, broker_url: str, *, claims: int = 40) -> dict[str, Any]:
    prefix = new_prefix(f"count{n_jobs}")
    manifest = jobs_manifest(n_jobs, lease_s=LEASE_S, tag="job")
    t0 = time.monotonic()
    coord = CoordinatorProc(workdir / "coord", broker_url, prefix, manifest, wait_s=300)
    first_start_s = time.monotonic() - t0
    agent = SimAgent(broker_url, prefix, HOST, advert={"slots": claims + 1})
    try:
        # The first load's events and retained states go out in the background at a bounded rate;
        # the figures below are of a settled coordinator, and this is how long settling took.
        settle_deadline = time.monotonic() + 600
        while coord.client.health().republishing and time.monotonic() < settle_deadline:
            time.sleep(0.5)
        settled_s = time.monotonic() - t0
        agent.start()
        lease = agent.claim_until_granted()
        time.sleep(1.0)
        rss_loaded = psutil.Process(coord.pid).memory_info().rss / MIB
        listing_s, cli_peak_mib = _cli_jobs_json(broker_url, prefix, n_jobs)
        rss_listed = psutil.Process(coord.pid).memory_info().rss / MIB
        _, reload_s, reload_renew_max_s = _renew_during(
            agent, lease, lambda: coord.client.call_json(Verb.RELOAD))
        claim_rtts = []
        for _ in range(claims):
            c0 = time.monotonic()
            reply = agent.call(Verb.CLAIM)
            claim_rtts.append(time.monotonic() - c0)
            if not (reply.get("ok") and reply.get("job")):
                raise RuntimeError(f"claim not granted: {reply}")
        rss_end = psutil.Process(coord.pid).memory_info().rss / MIB
        coord.stop()
        restarted = time.monotonic()
        coord = CoordinatorProc(workdir / "coord", broker_url, prefix, manifest, wait=False)
        health_s, renew_s = _first_answer(coord, agent, lease, restarted)
    finally:
        agent.stop()
        coord.stop()
    return {"jobs": n_jobs, "first_start_s": first_start_s, "settled_s": settled_s, "rss_loaded_mib": rss_loaded, "rss_listed_mib": rss_listed,
            "rss_end_mib": rss_end, "jobs_json_s": listing_s, "cli_peak_mib": cli_peak_mib, "reload_s": reload_s,
            "reload_renew_max_s": reload_renew_max_s, "claim_p50_s": median(claim_rtts),
            "restart_health_s": health_s, "restart_renew_s": renew_s}


def measure_job_count(sizes: list[int], workdir: Path) -> list[dict[str, Any]]:
    with LocalBroker(workdir / "broker") as broker:
        return [measure_size(n, workdir / f"n{n}", broker.url) for n in sizes]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1000,10000,100000")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-count-") as tmp:
        print(json.dumps(measure_job_count([int(s) for s in args.sizes.split(",")], Path(tmp)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

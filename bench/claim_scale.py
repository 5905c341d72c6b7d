"""Claim latency with 100 and with 100,000 pending jobs: the cost per lease must stay flat.

Run: `python -m bench.claim_scale [--claims N]`. Each claimed job is handed back
(`shutdown`, which is free) so the pending population stays the same size.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mqfleet.coordinator.sql.postgres import open_state
from mqfleet.coordinator.tables.artifacts import Artifacts
from mqfleet.coordinator.tables.catalog import Catalog
from mqfleet.coordinator.tables.claims import Claims
from mqfleet.coordinator.tables.hosts import Hosts
from mqfleet.coordinator.tables.leases import Leases
from mqfleet.lifecycle import Cause
from mqfleet.manifest.types import FleetSettings, HostPolicy, HyperParam, JobSpec, Manifest, TrainerSpec
from mqfleet.wire.advert import parse_advert

T0 = 1_800_000_000.0
HOSTS = {
    "cpu-box": {"cuda": False, "gpus": [], "ram_gib": 32, "torch": "2.13.0", "slots": 64, "arch": "x86_64"},
    "gpu-box": {"cuda": True, "gpus": [{"index": 0, "name": "gpu", "uuid": "u0", "vram_gib": 24}], "ram_gib": 64,
                "torch": "2.13.0", "slots": 64, "arch": "x86_64"},
}


def build_manifest(n_jobs: int, seed: int = 0) -> Manifest:
    """A realistic mix: a few priorities, some CUDA-only, some preferring CUDA, one model the CPU box denies."""
    rng = random.Random(seed)
    hyper = {"n_estimators": HyperParam("n_estimators", "int", 200, min=1)}
    trainers = {m: TrainerSpec(name=m, builtin="xgboost", command=(), hyper=hyper) for m in ("gbt", "mlp")}
    jobs = []
    for i in range(n_jobs):
        roll = rng.random()
        jobs.append(JobSpec(
            id=hashlib.sha256(f"job-{i}".encode()).hexdigest(), name=f"job-{i}",
            model="mlp" if roll < 0.1 else "gbt", mode="realistic", hyper={"n_estimators": 10 + i % 7},
            require_cuda=0.1 <= roll < 0.3, prefer_cuda=0.3 <= roll < 0.4, min_ram_gib=48.0 if 0.4 <= roll < 0.45 else 0.0,
            priority=rng.choice((0, 0, 0, 1, 2)),
        ))
    policies = {"cpu-box": HostPolicy(id="cpu-box", deny_jobs=("mlp",), slots=64)}
    return Manifest(fleet=FleetSettings(), trainers=trainers, hosts=policies, jobs=tuple(jobs))


def measure(n_jobs: int, claims: int) -> tuple[list[float], float]:
    """Claim latencies in seconds over `claims` claims against `n_jobs` pending jobs, and the fill time."""
    with tempfile.TemporaryDirectory() as tmp:
        state = open_state(Path(tmp) / "bench.db")
        catalog, hosts_table = Catalog(state), Hosts(state)
        claims_made, leases = Claims(state, catalog, hosts_table), Leases(state, catalog, Artifacts(state))
        m = build_manifest(n_jobs)
        start = time.perf_counter()
        catalog.apply_manifest(m, T0)
        fill_s = time.perf_counter() - start
        for host, ad in HOSTS.items():
            hosts_table.record_advert(host, parse_advert(host, {"host": host, **ad}), T0)
            hosts_table.record_presence(host, True, T0, grace_s=m.fleet.grace_s)
        hosts = sorted(HOSTS)
        latencies = []
        for i in range(claims):
            host = hosts[i % 2]
            start = time.perf_counter()
            grant = claims_made.claim(host, T0 + i, m)
            latencies.append(time.perf_counter() - start)
            if grant is None:
                raise SystemExit(f"{host} got no job from {n_jobs} pending jobs")
            leases.fail(grant.job.id, grant.lease_id, host, Cause.SHUTDOWN, exit_code=None, output_tail="", error="", now=T0 + i)
        state.close()
    return latencies, fill_s


#: What keeps the pending jobs of `measure_beside` from the claimer, cpu-box: `allowed_hosts` (a rule in SQL,
#: issue 17's probe), the rules only Python checks (issue 25: torch, commit, arch, prefer_cuda with a CUDA host
#: online), and retries that failed on cpu-box and prefer gpu-box (judged per set of failed hosts).
BESIDE = ("foreign", "python-rejected", "retries-elsewhere")
COMMIT = "c0ffee" * 6 + "c0ff"


def measure_beside(kind: str, n_jobs: int, claims: int) -> list[float]:
    """Claim latencies of cpu-box beside `n_jobs` better-ranked pending jobs it may not take (`kind`, one of
    BESIDE), and one open job per claim: what it costs a host to be surrounded by work it cannot run."""
    with tempfile.TemporaryDirectory() as tmp:
        state = open_state(Path(tmp) / "bench.db")
        catalog, hosts_table = Catalog(state), Hosts(state)
        claims_made, leases = Claims(state, catalog, hosts_table), Leases(state, catalog, Artifacts(state))
        hyper = {"n_estimators": HyperParam("n_estimators", "int", 200, min=1)}
        trainers = {"gbt": TrainerSpec(name="gbt", builtin="xgboost", command=(), hyper=hyper)}
        jobs = [JobSpec(id=hashlib.sha256(f"{kind}-{i}".encode()).hexdigest(), name=f"{kind}-{i}", model="gbt",
                        mode="realistic", hyper={"n_estimators": 10}, priority=1, **_kept_from_cpu_box(kind, i))
                for i in range(n_jobs)]
        jobs.append(JobSpec(id="open" + "0" * 60, name="open", model="gbt", mode="realistic", hyper={"n_estimators": 10}))
        m = Manifest(fleet=FleetSettings(commit=COMMIT), trainers=trainers, hosts={}, jobs=tuple(jobs))
        catalog.apply_manifest(m, T0)
        for host, ad in HOSTS.items():
            hosts_table.record_advert(host, parse_advert(host, {"host": host, **ad, "git_commit": "0" * 40}), T0)
            hosts_table.record_presence(host, True, T0, grace_s=m.fleet.grace_s)
        if kind == "retries-elsewhere":
            with state.transaction() as c:  # as if each had failed once on cpu-box
                c.executemany("INSERT INTO retries (job_id, not_before_ts) VALUES (?, ?)", [(j.id, T0) for j in jobs[:-1]])
                c.executemany("UPDATE jobs SET failed_hosts = '[\"cpu-box\"]' WHERE id = ?", [(j.id,) for j in jobs[:-1]])
        latencies = []
        for i in range(claims):
            start = time.perf_counter()
            grant = claims_made.claim("cpu-box", T0 + i, m)
            latencies.append(time.perf_counter() - start)
            if grant is None or grant.job.name != "open":
                raise SystemExit(f"cpu-box did not get the open job beside {n_jobs} {kind} ones: {grant}")
            leases.fail(grant.job.id, grant.lease_id, "cpu-box", Cause.SHUTDOWN, exit_code=None,
                        output_tail="", error="", now=T0 + i)
        state.close()
    return latencies


def _kept_from_cpu_box(kind: str, i: int) -> dict[str, Any]:
    if kind == "foreign":
        return {"allowed_hosts": ("gpu-box",)}
    if kind == "python-rejected":
        kept: list[dict[str, Any]] = [{"min_torch": "99.0"}, {"same_commit": True}, {"arch": ("aarch64",)},
                                      {"prefer_cuda": True}]
        return kept[i % 4]
    return {}


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claims", type=int, default=400)
    parser.add_argument("--large", type=int, default=100_000)
    args = parser.parse_args(argv)
    results = {}
    for n in (100, args.large):
        latencies, fill_s = measure(n, args.claims)
        results[n] = (statistics.median(latencies), p99(latencies))
        print(f"{n:>7} pending: claim median {results[n][0] * 1e3:.3f} ms, p99 {results[n][1] * 1e3:.3f} ms "
              f"over {args.claims} claims (fill {fill_s:.1f} s)")
    small, large = results[100], results[args.large]
    ratio = large[0] / small[0]
    print(f"ratio {args.large}/100: median {ratio:.2f}x, p99 {large[1] / small[1]:.2f}x (target: median within 1.5x)")
    return 0 if ratio <= 1.5 else 1


if __name__ == "__main__":
    sys.exit(main())

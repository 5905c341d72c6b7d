"""Claims+completions/s and the claim round trip with the state on SQLite (one coordinator), on PostgreSQL
(one coordinator) and on PostgreSQL with two coordinators behind the shared subscription, in one run.

Run: `python -m bench.state_stores [--agents 50] [--seconds 10] [--claims 300]`. The churn is
`bench.throughput`'s (simulated agents looping claim -> upload_url -> complete); the round trip is
`bench.claim_rtt`'s (one agent, each grant handed back), measured after the churn on an idle fleet.
PostgreSQL is a throwaway local server (`LocalPostgres`, fsync off like the SQLite file's NORMAL sync).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.claim_rtt import time_claims
from bench.common import CoordinatorProc, SimAgent, jobs_manifest, median, new_prefix, p99
from bench.throughput import _Churn, _cpu_s, _start_agents, _stop_agents, seed_artifact
from mqfleet.local.broker import LocalBroker
from mqfleet.local.postgres import LocalPostgres

#: (label, engine, coordinators)
SETUPS = (("SQLite, 1 coordinator", "sqlite", 1), ("PostgreSQL, 1 coordinator", "postgresql", 1),
          ("PostgreSQL, 2 coordinators", "postgresql", 2))


def _coordinators(workdir: Path, broker_url: str, prefix: str, manifest: str, db_url: str | None, n: int) -> list[CoordinatorProc]:
    procs: list[CoordinatorProc] = []
    store = (workdir / "artifacts").as_uri()  # one store for every coordinator of the fleet
    try:
        for i in range(n):
            extra: tuple[str, ...] = ("--client-id", f"coordinator-{i}", "--store", store)
            if db_url:
                extra += ("--db", db_url)  # the last --db wins over CoordinatorProc's file
            procs.append(CoordinatorProc(workdir / f"coord{i}", broker_url, prefix, manifest, extra=extra))
    except BaseException:
        for proc in procs:
            proc.stop()
        raise
    return procs


def measure_setup(engine: str, coordinators: int, agents_n: int, seconds: float, claims: int, workdir: Path,
                  postgres: LocalPostgres | None, *, warmup_s: float = 2.0) -> dict[str, Any]:
    jobs = max(200, int(agents_n * 2 + (seconds + warmup_s) * 800))
    db_url = postgres.create_database(f"bench_{int(time.time() * 1000)}") if postgres and engine == "postgresql" else None
    with LocalBroker(workdir / "broker") as broker:
        prefix = new_prefix("stores")
        procs = _coordinators(workdir, broker.url, prefix, jobs_manifest(jobs, lease_s=600), db_url, coordinators)
        agents: list[SimAgent] = []
        try:
            agents = _start_agents(broker.url, prefix, agents_n, "st")
            sha, size = seed_artifact(agents[0], workdir)
            t0 = time.monotonic() + 0.5
            churn = _Churn(sha, size, t0 + warmup_s, t0 + warmup_s + seconds)
            threads = [threading.Thread(target=churn.run, args=(a,), daemon=True) for a in agents]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=seconds + warmup_s + 60)
            cpu_s = sum(_cpu_s(p.pid) for p in procs)
            rtts = time_claims(agents[0], claims)
        finally:
            _stop_agents(agents)
            for proc in procs:
                proc.stop()
    if churn.errors:
        raise RuntimeError(f"{len(churn.errors)} agent loops failed, first: {churn.errors[0]}")
    if churn.drained:
        raise RuntimeError(f"the {jobs} jobs ran out before the window ended; raise the job count")
    return {"engine": engine, "coordinators": coordinators, "agents": agents_n, "seconds": seconds,
            "ops_per_s": (churn.claims + churn.completions) / seconds, "coordinator_cpu_s": cpu_s,
            "claim_p50_s": median(rtts), "claim_p99_s": p99(rtts)}


def measure_state_stores(agents_n: int, seconds: float, claims: int, workdir: Path) -> list[dict[str, Any]]:
    """One result per SETUPS entry, same run, same machine."""
    with LocalPostgres(workdir / "postgres") as postgres:
        return [{"label": label, **measure_setup(engine, n, agents_n, seconds, claims, workdir / f"s{i}", postgres)}
                for i, (label, engine, n) in enumerate(SETUPS)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--claims", type=int, default=300)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-stores-") as tmp:
        print(json.dumps(measure_state_stores(args.agents, args.seconds, args.claims, Path(tmp)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

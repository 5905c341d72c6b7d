"""Resident memory of an idle agent and of a coordinator holding 10,000 jobs, both real subprocesses.

Run: `python -m bench.rss [--jobs 10000]`. The agent's host is denied every job
by the manifest, so it stays idle (connected, advertised, waiting for nudges).
Whether the agent loaded torch is read from /proc/PID/maps (libtorch or any file
under a `torch/` package), which catches an import by any module.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench.common import ROOT, CoordinatorProc, fleet_env, jobs_manifest, new_prefix
from mqfleet.errors import DecodeError
from mqfleet.local.broker import LocalBroker
from mqfleet.local.process import Proc

MIB = 1 << 20
IDLE_HOST = "rss-idle"


def loaded_files(pid: int, needle: str) -> list[str]:
    """Mapped files of a process whose path contains `needle`."""
    found = set()
    with open(f"/proc/{pid}/maps") as fh:
        for line in fh:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and needle in parts[5]:
                found.add(parts[5].strip())
    return sorted(found)


def measure_rss(n_jobs: int, workdir: Path, *, settle_s: float = 3.0) -> dict[str, Any]:
    """Idle agent RSS and torch check; coordinator RSS after loading `n_jobs` and after listing them all."""
    extra = f'[[hosts]]\nid = "{IDLE_HOST}"\ndeny_jobs = ["*"]\n'
    with LocalBroker(workdir / "broker") as broker:
        prefix = new_prefix("rss")
        started = time.monotonic()
        coord = CoordinatorProc(workdir / "coord", broker.url, prefix, jobs_manifest(n_jobs, extra=extra))
        coord_start_s = time.monotonic() - started
        agent = Proc("agent", [sys.executable, "-m", "mqfleet", "agent", "--host-id", IDLE_HOST, "--work-dir",
                      str(workdir / "agent"), "--repo", str(ROOT)], fleet_env(broker.url, prefix), workdir / "agent.log",
                     cwd=ROOT)
        try:
            coord.wait_online(IDLE_HOST, agent, 30)
            time.sleep(settle_s)
            agent_rss = psutil.Process(agent.pid).memory_info().rss
            torch_files = loaded_files(agent.pid, "torch")
            coord_rss_loaded = psutil.Process(coord.pid).memory_info().rss
            listed_error = ""
            try:
                coord.client.jobs()
            except DecodeError as e:
                # The coordinator built and sent the listing; the client refuses its size (see the report).
                listed_error = str(e)
            listed = sum(coord.client.health().jobs_by_status.values())
            coord_rss_listed = psutil.Process(coord.pid).memory_info().rss
        finally:
            agent.stop()
            coord.stop()
    if listed != n_jobs:
        raise RuntimeError(f"coordinator lists {listed} jobs, not {n_jobs}")
    return {"jobs": n_jobs, "agent_idle_rss_mib": agent_rss / MIB, "agent_torch_loaded": bool(torch_files),
            "agent_torch_files": torch_files[:3], "coordinator_rss_mib": coord_rss_loaded / MIB,
            "coordinator_rss_after_listing_mib": coord_rss_listed / MIB, "coordinator_start_s": coord_start_s,
            "jobs_listing_error": listed_error}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=10_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-rss-") as tmp:
        print(json.dumps(measure_rss(args.jobs, Path(tmp)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

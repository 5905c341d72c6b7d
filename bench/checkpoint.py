"""Checkpoints: what syncing costs a running trainer, and what resuming saves after an interruption.

Run: `python -m bench.checkpoint [--seconds S] [--rounds N] [--size-mib M]`.

Sync cost: a CPU-bound trainer subprocess (single-threaded numpy matrix products, counting steps) rewrites
a `--size-mib` checkpoint file (random bytes, as incompressible as float weights) every 10 s, written
then renamed. The baseline run only writes it; the measured run also has the agent's `CheckpointSync`
syncing the folder every 10 s (hard-link snapshot, tar+zstd with sha256, upload through a file:// store
URL on the same disk). The coordinator's side (it reads the bundle back to hash it) runs on the
coordinator's host in a fleet, so here it only answers. Runs alternate, baseline first; the figure is
the median steps/s with sync over the median without.

Resume saving: a real broker, coordinator and agents; a 20 s job (100 steps of 0.2 s, checkpointing every
step, synced every second) is interrupted by kill -9 of its agent at 80%, and another agent is started at
once; we time from the kill to `completed`. Same-run baseline: the same job with a trainer declared
`resumable = false`, which starts over.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, CoordinatorProc, fleet_env, median, new_prefix
from mqfleet.agent.checkpoint import MIB, CheckpointPlan, CheckpointSync
from mqfleet.local.broker import LocalBroker
from mqfleet.local.process import Proc
from mqfleet.store.files import FileStore
from mqfleet.wire.topics import Verb
from mqfleet.wire.verbs import Rep, Req, VerbSpec

#: The trainer of the sync-cost run: steps until its time is up, rewriting its checkpoint every interval.
_TRAINER = """
import json, os, sys, time
import numpy as np
seconds, size_mib, interval_s, folder = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
rng = np.random.default_rng(0)
a = rng.standard_normal((256, 256)).astype(np.float32)
weights = rng.integers(0, 256, size_mib * 1024 * 1024, dtype=np.uint8)
steps, write_s, next_save = 0, 0.0, 0.0
start = time.perf_counter()
while (now := time.perf_counter() - start) < seconds:
    if now >= next_save:
        t = time.perf_counter()
        weights[:8] = np.frombuffer(steps.to_bytes(8, "little"), dtype=np.uint8)
        tmp = os.path.join(folder, ".state.tmp")
        with open(tmp, "wb") as fh:
            fh.write(weights.tobytes())
        os.replace(tmp, os.path.join(folder, "state.bin"))
        write_s += time.perf_counter() - t
        next_save += interval_s
    for _ in range(20):
        a = np.tanh(a @ a * 0.01)
    steps += 1
print(json.dumps({"steps": steps, "elapsed_s": time.perf_counter() - start, "write_s": write_s}))
"""


class _Answers:
    """The coordinator's side of a sync, in process: a presigned (file://) PUT URL, and an acknowledgement."""

    def __init__(self, store: FileStore) -> None:
        self.store = store
        self.saved = 0

    def __call__(self, verb: VerbSpec[Req, Rep], message: Req, *, timeout_s: float | None = None) -> Rep:
        if verb.verb is Verb.CHECKPOINT_URL:
            key = self.store.checkpoint_key_for("0" * 64, str(message.to_wire()["sha256"]))
            return verb.reply.from_wire({"url": self.store.presign_put(key), "method": "PUT", "key": key,
                                         "expires_s": 600})
        self.saved += 1
        return verb.reply.from_wire({})


def _one_run(workdir: Path, seconds: float, size_mib: int, interval_s: float, *, sync: bool) -> dict[str, Any]:
    folder = workdir / "checkpoint"
    folder.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    syncer = None
    answers = _Answers(FileStore(workdir / "store"))
    if sync:
        syncer = CheckpointSync(plan=CheckpointPlan(interval_s=interval_s, max_bytes=4096 * MIB, given=None),
                                job_id="0" * 64, lease_id="bench", folder=folder, scratch=workdir, request=answers, log=lambda line: None,
                                progress=lambda: None, name="bench")
        syncer.start()
    # This process does nothing but wait while the trainer runs: its CPU time is the sync's.
    own_before = resource.getrusage(resource.RUSAGE_SELF)
    child_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        out = subprocess.run([sys.executable, "-c", _TRAINER, str(seconds), str(size_mib), str(interval_s), str(folder)],
                             env=env, capture_output=True, text=True, timeout=seconds + 120, check=True)
    finally:
        if syncer is not None:
            syncer.stop(final_sync=False)
    own_after = resource.getrusage(resource.RUSAGE_SELF)
    child_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result: dict[str, Any] = json.loads(out.stdout)
    result["steps_per_s"] = result["steps"] / result["elapsed_s"]
    result["sync_cpu_s"] = (own_after.ru_utime + own_after.ru_stime) - (own_before.ru_utime + own_before.ru_stime)
    trainer_cpu_s = (child_after.ru_utime + child_after.ru_stime) - (child_before.ru_utime + child_before.ru_stime)
    result["steps_per_cpu_s"] = result["steps"] / max(trainer_cpu_s, 1e-9)
    result["syncs"] = answers.saved
    return result


def measure_sync_cost(workdir: Path, *, seconds: float = 30.0, rounds: int = 4, size_mib: int = 256,
                      interval_s: float = 10.0) -> dict[str, Any]:
    """Trainer steps/s with and without the folder synced beside it, in alternating runs."""
    base: list[dict[str, Any]] = []
    synced: list[dict[str, Any]] = []
    for i in range(rounds):
        base.append(_one_run(workdir / f"base-{i}", seconds, size_mib, interval_s, sync=False))
        synced.append(_one_run(workdir / f"sync-{i}", seconds, size_mib, interval_s, sync=True))
    base_rate = median([r["steps_per_s"] for r in base])
    sync_rate = median([r["steps_per_s"] for r in synced])
    base_per_cpu = median([r["steps_per_cpu_s"] for r in base])
    sync_per_cpu = median([r["steps_per_cpu_s"] for r in synced])
    syncs = sum(r["syncs"] for r in synced)
    sync_cpu = sum(r["sync_cpu_s"] for r in synced)
    return {"seconds": seconds, "rounds": rounds, "size_mib": size_mib, "interval_s": interval_s,
            "base_steps_per_s": base_rate, "sync_steps_per_s": sync_rate, "ratio": sync_rate / base_rate,
            "per_cpu_ratio": sync_per_cpu / base_per_cpu, "syncs": syncs,
            "sync_cpu_s_per_sync": sync_cpu / max(syncs, 1),
            "sync_core_share": sync_cpu / sum(r["elapsed_s"] for r in synced),
            "base_runs": base, "sync_runs": synced}


_RESUME_TRAINERS = """\
[trainers.resumable]
command = ["{python}", "tests/data/trainers/resumable.py"]
[trainers.resumable.hyper]
steps = { type = "int", default = 100, min = 1 }
interval_s = { type = "float", default = 0.2, min = 0.0 }

[trainers.fresh]
command = ["{python}", "tests/data/trainers/resumable.py"]
resumable = false
[trainers.fresh.hyper]
steps = { type = "int", default = 100, min = 1 }
interval_s = { type = "float", default = 0.2, min = 0.0 }
"""


def measure_resume_saving(workdir: Path, *, grace_s: float = 2.0, at: float = 0.8) -> dict[str, Any]:
    """Seconds from kill -9 at `at` of a 20 s job to `completed` on another host: resumed, and started over.

    Each case runs in a fleet of its own (broker, coordinator, then two agents one after the other), so
    the second agent has only the interrupted job to take."""
    figures: dict[str, Any] = {}
    with LocalBroker(workdir / "broker") as broker:
        for name, model in (("resumed", "resumable"), ("restarted", "fresh")):
            manifest = (f"[fleet]\nmax_attempts = 5\nlease_s = 6\ngrace_s = {grace_s}\ncheckpoint_interval_s = 1\n\n"
                        f"{_RESUME_TRAINERS}\n[[jobs]]\nname = \"{name}\"\nmodel = \"{model}\"\n")
            prefix = new_prefix(f"resume-{name}")
            coord = CoordinatorProc(workdir / name / "coord", broker.url, prefix, manifest, sweep_interval_s=0.2)
            env = fleet_env(broker.url, prefix)
            agents: list[Proc] = []
            try:
                victim = _agent(f"{name}-1", workdir / name, env)
                agents.append(victim)
                progress = _wait_progress(coord, name, at)
                killed = time.monotonic()
                victim.kill()
                agents.append(_agent(f"{name}-2", workdir / name, env))
                deadline = time.monotonic() + 120
                while coord.client.job(name).status != "completed":
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"resume: {name} did not complete within 120 s")
                    time.sleep(0.1)
                figures[name] = {"killed_at": progress, "kill_to_completed_s": time.monotonic() - killed}
            finally:
                for agent in agents:
                    agent.stop()
                coord.stop()
    figures["job_s"] = 20.0
    figures["grace_s"] = grace_s
    figures["saving"] = 1 - figures["resumed"]["kill_to_completed_s"] / figures["restarted"]["kill_to_completed_s"]
    return figures


def _agent(host: str, workdir: Path, env: dict[str, str]) -> Proc:
    return Proc(host, [sys.executable, "-m", "mqfleet", "agent", "--host-id", host, "--work-dir", str(workdir / host),
                       "--repo", str(ROOT), "--shutdown-grace", "1", "--keepalive", "2"], env, workdir / f"{host}.log", cwd=ROOT)


def _wait_progress(coord: CoordinatorProc, name: str, at: float) -> float:
    deadline = time.monotonic() + 120
    while True:
        job = coord.client.job(name)
        reported = (job.progress or {}).get("progress")
        done = float(reported) if isinstance(reported, (int, float)) else 0.0
        if job.status == "running" and done >= at:
            return done
        if time.monotonic() > deadline:
            raise RuntimeError(f"resume: {name} did not reach {at:.0%} within 120 s")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--no-resume", dest="resume", action="store_false", help="measure the sync cost only")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-checkpoint-") as tmp:
        cost = measure_sync_cost(Path(tmp) / "cost", seconds=args.seconds, rounds=args.rounds, size_mib=args.size_mib)
        saving = measure_resume_saving(Path(tmp) / "resume") if args.resume else {}
    print(json.dumps({"sync_cost": cost, "resume": saving}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

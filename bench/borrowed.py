"""The owner takes the machine back: from `mqfleet agent pause --now` on one host to the job running on another,
and the work a yield loses; against a kill -9 of the agent (what a reboot or power-off does) in the same run.

One broker, one coordinator, two real agents (one slot each), one long resumable job that checkpoints
`--state-mib` MiB every second of work (`tests/data/trainers/resumable.py`, `save_every`). Each pause trial
pauses the host running the job with the owner's own command (`mqfleet agent pause --now`, the CLI's start
included: what the owner feels), waits until the job runs on the other host, then resumes the paused one, so
the next trial runs the other way. Each kill trial kills the running agent with SIGKILL and restarts it at
once, the job running again after the lease grace (on the other host, or on the restarted one when it claims
first). Work lost per yield: the last step the stopped
attempt printed, less the step the next attempt resumed at (both from the job's logs).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, CoordinatorProc, fleet_env, median, new_prefix, p99, wait_for
from mqfleet.local.broker import LocalBroker
from mqfleet.local.process import Proc

#: Steps of the job, and the trainer's step time: long enough for every trial.
STEPS = 100_000
STEP_S = 0.1
#: The trainer saves every this many steps: one second of work, the most a yield may lose.
SAVE_EVERY = 10
#: The agents' periodic sync: what a kill -9 may lose on top of the trainer's own interval.
SYNC_INTERVAL_S = 5.0
GRACE_S = 2.0


def _manifest(state_mib: int) -> str:
    return f"""\
[fleet]
max_attempts = 50
lease_s = 6
grace_s = {GRACE_S}
checkpoint_interval_s = {SYNC_INTERVAL_S}
checkpoint_max_mib = {max(64, state_mib * 2)}

[trainers.resumable]
command = ["{{python}}", "tests/data/trainers/resumable.py"]
[trainers.resumable.hyper]
steps = {{ type = "int", default = {STEPS}, min = 1 }}
interval_s = {{ type = "float", default = {STEP_S}, min = 0.0 }}
save_every = {{ type = "int", default = {SAVE_EVERY}, min = 1 }}
state_mib = {{ type = "int", default = {state_mib}, min = 0 }}

[[jobs]]
name = "long"
model = "resumable"
"""


def measure_yields(workdir: Path, *, pauses: int = 8, kills: int = 3, state_mib: int = 32) -> dict[str, Any]:
    """Pause-to-running-elsewhere and kill-to-running-elsewhere seconds, and the steps lost at each."""
    figures: dict[str, Any] = {"state_mib": state_mib, "save_every_steps": SAVE_EVERY, "step_s": STEP_S,
                               "sync_interval_s": SYNC_INTERVAL_S, "grace_s": GRACE_S}
    with LocalBroker(workdir / "broker") as broker:
        prefix = new_prefix("borrowed")
        coord = CoordinatorProc(workdir / "coord", broker.url, prefix, _manifest(state_mib), sweep_interval_s=0.2)
        env = fleet_env(broker.url, prefix)
        agents = {host: _agent(host, workdir, env) for host in ("a", "b")}
        try:
            wait_for(lambda: coord.client.job("long").status == "running" and _epoch(coord) >= SAVE_EVERY, 120, "a start")
            figures["pause"] = [_pause_trial(coord, workdir, env) for _ in range(pauses)]
            figures["kill"] = [_kill_trial(coord, agents, workdir, env) for _ in range(kills)]
        finally:
            for agent in agents.values():
                agent.stop()
            coord.stop()
    for kind in ("pause", "kill"):
        trials = figures[kind]
        figures[f"{kind}_p50_s"] = median([t["to_running_s"] for t in trials])
        figures[f"{kind}_p99_s"] = p99([t["to_running_s"] for t in trials])
        figures[f"{kind}_lost_steps_median"] = median([t["lost_steps"] for t in trials])
        figures[f"{kind}_lost_steps_max"] = max(t["lost_steps"] for t in trials)
    return figures


def _agent(host: str, workdir: Path, env: dict[str, str]) -> Proc:
    return Proc(host, [sys.executable, "-m", "mqfleet", "agent", "--host-id", host, "--work-dir", str(workdir / host),
                       "--repo", str(ROOT), "--kill-grace", "2", "--shutdown-grace", "1", "--keepalive", "2",
                       "--heartbeat", "2"], env, workdir / f"{host}.log", cwd=ROOT)


def _running_on(coord: CoordinatorProc) -> str:
    job = coord.client.job("long")
    return str(job.host) if job.status == "running" else ""


def _pause_trial(coord: CoordinatorProc, workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    host = _running_on(coord) or wait_for(lambda: _running_on(coord), 60, "the job running")
    wait_for(lambda: _epoch(coord) >= _resumed_at(coord) + SAVE_EVERY, 60, "a save in this attempt")
    attempt = coord.client.job("long").attempts_started
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "mqfleet", "agent", "--work-dir", str(workdir / host), "pause", "--now"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"pause failed: {done.stderr}")
    other = wait_for(lambda: (h := _running_on(coord)) and h != host and h, 60, "the job running elsewhere")
    to_running_s = time.monotonic() - started
    subprocess.run([sys.executable, "-m", "mqfleet", "agent", "--work-dir", str(workdir / host), "resume"],
                   env=env, cwd=ROOT, capture_output=True, timeout=60, check=True)
    return {"from": host, "to": other, "to_running_s": to_running_s, "lost_steps": _lost(coord, attempt)}


def _kill_trial(coord: CoordinatorProc, agents: dict[str, Proc], workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    host = _running_on(coord) or wait_for(lambda: _running_on(coord), 60, "the job running")
    wait_for(lambda: _epoch(coord) >= _resumed_at(coord) + SAVE_EVERY, 60, "a save in this attempt")
    attempt = coord.client.job("long").attempts_started
    started = time.monotonic()
    agents[host].kill()
    agents[host] = _agent(host, workdir, env)  # restarted at once, as systemd would: it may win the job back
    again = wait_for(lambda: coord.client.job("long").attempts_started > attempt and _running_on(coord), 90,
                  "the job running again")
    return {"from": host, "to": again, "to_running_s": time.monotonic() - started, "lost_steps": _lost(coord, attempt)}


def _lines(coord: CoordinatorProc, attempt: int) -> list[str]:
    return coord.client.logs("long", attempt).lines


def _lost(coord: CoordinatorProc, attempt: int) -> int:
    """Steps the stopped attempt reached that the next one did not resume from."""
    reached = max((int(m.group(1)) for line in _lines(coord, attempt) if (m := re.search(r'"epoch": (\d+)', line))),
                  default=0)
    nxt = wait_for(lambda: [m for line in _lines(coord, attempt + 1) if (m := re.search(r"resumed at step (\d+)", line))],
                30, "the next attempt's start")
    return reached - int(nxt[0].group(1))


def _resumed_at(coord: CoordinatorProc) -> int:
    attempt = coord.client.job("long").attempts_started
    found = [int(m.group(1)) for line in _lines(coord, attempt) if (m := re.search(r"resumed at step (\d+)", line))]
    return found[0] if found else 0


def _epoch(coord: CoordinatorProc) -> int:
    epoch = (coord.client.job("long").progress or {}).get("epoch")
    return int(epoch) if isinstance(epoch, (int, float)) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pauses", type=int, default=8)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--state-mib", type=int, default=32)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-borrowed-") as tmp:
        print(json.dumps(measure_yields(Path(tmp), pauses=args.pauses, kills=args.kills, state_mib=args.state_mib),
                         indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

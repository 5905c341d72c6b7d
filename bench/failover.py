"""Failover: kill -9 of the agent running a job -> the job pending, and -> running on another, idle host.

Run: `python -m bench.failover [--trials N] [--grace-s S]`.

Two real `python -m mqfleet agent`s: `failover-busy` runs a long trainer, `failover-idle` sits idle.
We SIGKILL the busy one and time, from the kill, the coordinator's `pending` event for the job and
then its `running` event on the idle host. The path: the broker sees the socket close and publishes
the agent's will (`offline`), the coordinator shortens the host's leases to `grace_s`, the next sweep
(every `--sweep-interval`, 1 s by default) expires them and nudges the idle host, which claims and
starts the trainer. Expected: grace_s + up to one sweep + a claim. Baselines, from the same run:
without the nudge the idle host claims at its idle poll, so kill -> running would be kill -> pending
plus half an idle poll at the median (`IDLE_POLL_S / 2`, uniform phase); and the original design
noticed a dead worker only when its heartbeat was 600 s stale (stated, not run).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, CoordinatorProc, fleet_env, jobs_manifest, median, new_prefix, p99
from mqfleet import defaults
from mqfleet.agent.daemon import IDLE_POLL_S
from mqfleet.local.broker import LocalBroker
from mqfleet.local.process import Proc
from mqfleet.mqtt.config import BrokerConfig
from mqfleet.mqtt.connection import Connection
from mqfleet.mqtt.inbox import Message
from mqfleet.wire.topics import Topics

#: The original design's stale-heartbeat sweep: a worker was presumed dead after this long.
ORIGINAL_STALE_S = 600.0


def _agent(host: str, workdir: Path, env: dict[str, str], log: Path) -> Proc:
    # --shutdown-grace 1: a stopped spare hands its job back at once instead of waiting 30 s
    return Proc(host, [sys.executable, "-m", "mqfleet", "agent", "--host-id", host, "--work-dir", str(workdir / host),
                       "--repo", str(ROOT), "--shutdown-grace", "1"], env, log, cwd=ROOT)


def measure_failover(trials: int, workdir: Path, *, grace_s: float = defaults.GRACE_S,
                     sweep_interval_s: float = defaults.SWEEP_INTERVAL_S) -> dict[str, Any]:
    """Per trial (fresh agents each time): seconds from SIGKILL of the busy agent to `pending`, and to `running`
    on the idle agent."""
    with LocalBroker(workdir / "broker") as broker:
        prefix = new_prefix("failover")
        topics = Topics(prefix)
        manifest = jobs_manifest(1, grace_s=grace_s, sleep_s=600, max_attempts=trials + 2, tag="failover")
        coord = CoordinatorProc(workdir / "coord", broker.url, prefix, manifest, sweep_interval_s=sweep_interval_s)
        env = fleet_env(broker.url, prefix)
        last: dict[tuple[str, str], float] = {}
        seen = threading.Condition()

        def on_event(msg: Message) -> None:
            change = msg.json()
            with seen:
                last[(str(change.get("to")), str(change.get("host")))] = time.perf_counter()
                seen.notify_all()

        def wait_for(to: str, host: str, timeout_s: float, what: str) -> float:
            with seen:
                if not seen.wait_for(lambda: (to, host) in last, timeout=timeout_s):
                    raise RuntimeError(f"failover: {what} did not happen within {timeout_s:g}s")
                return last[(to, host)]

        watcher = Connection(BrokerConfig(url=broker.url), client_id=f"{prefix}-watch", reply_prefix=prefix)
        watcher.subscribe(topics.events, on_event)
        to_pending: list[float] = []
        to_running: list[float] = []
        agents: list[Proc] = []
        try:
            watcher.start()
            for i in range(trials):
                with seen:
                    last.clear()
                busy = _agent("failover-busy", workdir, env, workdir / f"busy-{i}.log")
                agents.append(busy)
                wait_for("running", "failover-busy", 60, f"trial {i}: the job running on failover-busy")
                idle = _agent("failover-idle", workdir, env, workdir / f"idle-{i}.log")
                agents.append(idle)
                # its first claim (at connect) found nothing: from here only a nudge or its idle poll makes it claim
                wait_for_log(idle, "online", 60)
                time.sleep(1.0)
                killed = time.perf_counter()
                busy.kill()
                to_pending.append(wait_for("pending", "None", grace_s + 60, f"trial {i}: pending") - killed)
                to_running.append(wait_for("running", "failover-idle", IDLE_POLL_S + 30,
                                           f"trial {i}: running on failover-idle") - killed)
                idle.stop()  # hands the job back (shutdown), so the next trial starts from pending
                wait_for("pending", "None", 30, f"trial {i}: the job handed back")
        finally:
            for agent in agents:
                agent.stop()
            watcher.stop()
            coord.stop()
    poll_baseline = [p + IDLE_POLL_S / 2 for p in to_pending]
    return {"trials": trials, "grace_s": grace_s, "sweep_interval_s": sweep_interval_s, "idle_poll_s": IDLE_POLL_S,
            "p50_s": median(to_pending), "p99_s": p99(to_pending), "max_s": max(to_pending),
            "running_p50_s": median(to_running), "running_p99_s": p99(to_running), "running_max_s": max(to_running),
            "running_s": to_running, "pending_s": to_pending,
            "poll_baseline_p50_s": median(poll_baseline), "baseline_s": ORIGINAL_STALE_S}


def wait_for_log(proc: Proc, needle: str, timeout_s: float) -> None:
    """Bounded wait for a line in a process's log (the agent logs `agent HOST online` once connected)."""
    deadline = time.monotonic() + timeout_s
    while needle not in proc.log_tail(20_000):
        if time.monotonic() > deadline or not proc.alive():
            raise RuntimeError(f"failover: no '{needle}' in the agent log:\n{proc.log_tail()}")
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--grace-s", type=float, default=defaults.GRACE_S)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
        print(json.dumps(measure_failover(args.trials, Path(tmp), grace_s=args.grace_s), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

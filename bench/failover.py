"""Time from kill -9 of an agent running a job to that job being pending again, beside the original 600 s stale sweep.

Run: `python -m bench.failover [--trials N] [--grace-s S]`.

A real `python -m mqfleet agent` runs a long trainer; we SIGKILL the agent and
time until the coordinator's `pending` event for the job. The path is: the
broker sees the socket close and publishes the agent's will (`offline`), the
coordinator shortens the host's leases to `grace_s`, and the next sweep (every
`--sweep-interval`, 1 s by default) expires them. So the expected time is
grace_s plus up to one sweep interval. The original design noticed a dead
worker only when its heartbeat was 600 s stale; that baseline is stated, not
run (it would take 10 minutes per trial).
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

from bench.common import ROOT, CoordinatorProc, Proc, fleet_env, jobs_manifest, median, new_prefix, p99
from mqfleet import defaults
from mqfleet.mqtt import BrokerConfig, Connection, Message
from mqfleet.protocol import Topics
from mqfleet.services.broker import LocalBroker

#: The original design's stale-heartbeat sweep: a worker was presumed dead after this long.
ORIGINAL_STALE_S = 600.0


def measure_failover(trials: int, workdir: Path, *, grace_s: float = defaults.GRACE_S,
                     sweep_interval_s: float = defaults.SWEEP_INTERVAL_S) -> dict[str, Any]:
    """Seconds from SIGKILL of the agent to the job's `pending` event, once per trial (a new agent each time)."""
    with LocalBroker(workdir / "broker") as broker:
        prefix = new_prefix("failover")
        topics = Topics(prefix)
        manifest = jobs_manifest(1, grace_s=grace_s, sleep_s=600, max_attempts=trials + 2, tag="failover")
        coord = CoordinatorProc(workdir / "coord", broker.url, prefix, manifest, sweep_interval_s=sweep_interval_s)
        last: dict[str, float] = {}
        seen = threading.Condition()

        def on_event(msg: Message) -> None:
            change = msg.json()
            with seen:
                last[str(change.get("to"))] = time.perf_counter()
                seen.notify_all()

        watcher = Connection(BrokerConfig(url=broker.url), client_id=f"{prefix}-watch", reply_prefix=prefix)
        watcher.subscribe(topics.events, on_event)
        times: list[float] = []
        agent: Proc | None = None
        try:
            watcher.start()
            for i in range(trials):
                with seen:
                    last.clear()
                agent = Proc([sys.executable, "-m", "mqfleet", "agent", "--host-id", "failover-host", "--work-dir",
                              str(workdir / "agent"), "--repo", str(ROOT)], fleet_env(broker.url, prefix),
                             workdir / f"agent-{i}.log")
                with seen:
                    if not seen.wait_for(lambda: "running" in last, timeout=60):
                        raise RuntimeError(f"failover trial {i}: job never ran:\n{agent.log_tail()}")
                killed = time.perf_counter()
                agent.kill9()
                with seen:
                    if not seen.wait_for(lambda: "pending" in last, timeout=grace_s + 60):
                        raise RuntimeError(f"failover trial {i}: job not pending again within {grace_s + 60:g}s")
                    times.append(last["pending"] - killed)
                agent.stop()
        finally:
            if agent is not None:
                agent.stop()
            watcher.stop()
            coord.stop()
    return {"trials": trials, "grace_s": grace_s, "sweep_interval_s": sweep_interval_s,
            "p50_s": median(times), "p99_s": p99(times), "max_s": max(times), "baseline_s": ORIGINAL_STALE_S}


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

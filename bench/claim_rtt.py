"""Claim round trip through mosquitto to a coordinator subprocess, beside a raw MQTT v5 request/reply through the same broker.

Run: `python -m bench.claim_rtt [-n N]`. Each granted job is handed back (`fail`
with cause `shutdown`, which never counts) so the pending population stays the
same. The raw round trip is measured in two halves, before and after the claims,
so a change in machine load during the run shows in both figures alike.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import CoordinatorProc, SimAgent, jobs_manifest, median, new_prefix, p99
from bench.rpc_raw import raw_round_trip
from mqfleet.lifecycle import Cause
from mqfleet.local.broker import LocalBroker
from mqfleet.wire.topics import Verb


def time_claims(agent: SimAgent, n: int, *, warmup: int = 20) -> list[float]:
    """Seconds per claim request/reply, `n` in sequence; each grant is handed back untimed."""
    first = agent.claim_until_granted()
    _hand_back(agent, first)
    times: list[float] = []
    for i in range(warmup + n):
        started = time.perf_counter()
        reply = agent.call(Verb.CLAIM)
        elapsed = time.perf_counter() - started
        if not reply.get("ok") or not reply.get("job"):
            raise RuntimeError(f"claim {i} got no job: {reply}")
        if i >= warmup:
            times.append(elapsed)
        _hand_back(agent, reply["job"])
    return times


def _hand_back(agent: SimAgent, grant: dict[str, Any]) -> None:
    reply = agent.call(Verb.FAIL, job_id=grant["job"]["id"], lease_id=grant["lease_id"], cause=Cause.SHUTDOWN.value)
    if not reply.get("ok"):
        raise RuntimeError(f"hand-back refused: {reply}")


def measure_claim_rtt(n: int, workdir: Path) -> dict[str, Any]:
    """Claim p50/p99 and raw request/reply p50/p99 (seconds) through one private broker, and their ratio."""
    with LocalBroker(workdir / "broker") as broker:
        prefix = new_prefix("rtt")
        coord = CoordinatorProc(workdir / "coord", broker.url, prefix, jobs_manifest(100))
        agent = SimAgent(broker.url, prefix, "rtt-host")
        try:
            agent.start()
            raw = raw_round_trip(broker.url, max(1, n // 2))
            claims = time_claims(agent, n)
            raw += raw_round_trip(broker.url, max(1, n - n // 2))
        finally:
            agent.stop()
            coord.stop()
    return {
        "n": n,
        "claim_p50_s": median(claims), "claim_p99_s": p99(claims),
        "raw_p50_s": median(raw), "raw_p99_s": p99(raw),
        "p50_ratio": median(claims) / median(raw), "p99_ratio": p99(claims) / p99(raw),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=1000, help="claims (and raw round trips) to time")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-rtt-") as tmp:
        print(json.dumps(measure_claim_rtt(args.n, Path(tmp)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Raw MQTT v5 request/reply latency through mosquitto, with no coordinator behind it: the floor every RPC pays."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from mqfleet.local.broker import LocalBroker
from mqfleet.mqtt.config import BrokerConfig
from mqfleet.mqtt.connection import Connection
from mqfleet.mqtt.inbox import Message


def raw_round_trip(url: str, n: int, *, warmup: int = 20) -> list[float]:
    """Seconds per request/reply (QoS 1 both ways) between two Connections, `n` in sequence after a warmup."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    config = BrokerConfig(url=url)
    server = Connection(config, client_id=f"{prefix}-server", reply_prefix=prefix)
    server.subscribe(f"{prefix}/rpc/#", lambda msg: _echo(server, msg))
    client = Connection(config, client_id=f"{prefix}-client", reply_prefix=prefix)
    try:
        server.start()
        client.start()
        topic = f"{prefix}/rpc/query/{prefix}-client/echo"
        for i in range(warmup):
            client.request(topic, {"i": i}, timeout_s=5)
        times: list[float] = []
        for i in range(n):
            started = time.perf_counter()
            client.request(topic, {"i": i}, timeout_s=5)
            times.append(time.perf_counter() - started)
        return times
    finally:
        client.stop()
        server.stop()


def _echo(server: Connection, msg: Message) -> None:
    server.reply(msg, {"ok": True, "i": msg.json().get("i")})


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=2000, help="requests to time")
    parser.add_argument("--broker", help="an existing broker URL; default: start a private mosquitto")
    args = parser.parse_args(argv)
    if args.broker:
        times = raw_round_trip(args.broker, args.n)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-broker-") as workdir, LocalBroker(Path(workdir)) as broker:
            times = raw_round_trip(broker.url, args.n)
    print(f"raw MQTT v5 request/reply, QoS 1, n={len(times)}: "
          f"p50 {percentile(times, 0.50) * 1e3:.2f} ms, p99 {percentile(times, 0.99) * 1e3:.2f} ms, "
          f"mean {statistics.fmean(times) * 1e3:.2f} ms, {len(times) / sum(times):.0f} requests/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The floor of this stack: a minimal claim server on the same parts, and the coordinator under the same load.

Run: `python -m bench.claim_floor [--clients 50] [--seconds 10]`. The minimal server
is what issue 17 measured as the floor: paho, one SQLite `UPDATE ... RETURNING` per
claim (WAL, synchronous NORMAL, as the coordinator), TCP_NODELAY, one QoS 1 publish
per reply, handled on paho's own thread. Both servers run as subprocesses behind the
same private mosquitto and get the same clients (mqfleet Connections, one per
simulated host, each claiming in a loop); the figures are claims per second and the
server's CPU seconds per claim, so the coordinator's cost is read as a ratio to the
floor measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from bench.common import ROOT, CoordinatorProc, SimAgent, jobs_manifest, new_prefix
from mqfleet.errors import MqfleetError
from mqfleet.local.broker import LocalBroker
from mqfleet.mqtt.config import BrokerConfig
from mqfleet.mqtt.connection import Connection
from mqfleet.wire.topics import Verb


def serve_floor(broker_url: str, prefix: str, db_path: Path, n_jobs: int) -> None:
    """The minimal server: runs until killed."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS jobs (seq INTEGER PRIMARY KEY, status TEXT NOT NULL, host TEXT)")
    db.execute("CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq)")
    db.executemany("INSERT INTO jobs (status) VALUES ('pending')", [()] * n_jobs)
    host, port = broker_url.removeprefix("mqtt://").rsplit(":", 1)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"floor-{uuid.uuid4().hex[:6]}",
                         protocol=paho.MQTTv5)

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.subscribe(f"{prefix}/floor/claim/+", qos=1)
        print("ready", flush=True)

    def on_message(c: Any, userdata: Any, msg: Any) -> None:
        who = msg.topic.rsplit("/", 1)[-1]
        row = db.execute("UPDATE jobs SET status = 'claimed', host = ? WHERE seq = "
                         "(SELECT seq FROM jobs WHERE status = 'pending' ORDER BY seq LIMIT 1) RETURNING seq",
                         (who,)).fetchone()
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.CorrelationData = msg.properties.CorrelationData
        c.publish(msg.properties.ResponseTopic, json.dumps({"ok": True, "job": row[0] if row else None}),
                  qos=1, properties=props)

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(host, int(port))
    client.loop_forever()


def _drive(agents: list[Any], call: Any, seconds: float, warmup_s: float = 1.0) -> tuple[int, list[str]]:
    """Every agent claims in a loop; claims answered inside the timed window, and errors."""
    t_start = time.monotonic() + warmup_s
    t_end = t_start + seconds
    lock = threading.Lock()
    counted = [0]
    errors: list[str] = []

    def loop(agent: Any) -> None:
        while time.monotonic() < t_end:
            try:
                reply = call(agent)
            except MqfleetError as e:
                with lock:
                    errors.append(str(e))
                return
            now = time.monotonic()
            if not reply.get("ok") or reply.get("job") is None:
                with lock:
                    errors.append(f"claim not granted: {str(reply)[:200]}")
                return
            if t_start <= now < t_end:
                with lock:
                    counted[0] += 1

    threads = [threading.Thread(target=loop, args=(a,), daemon=True) for a in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + warmup_s + 60)
    return counted[0], errors


def _cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def measure_floor(broker_url: str, workdir: Path, clients: int, seconds: float) -> dict[str, Any]:
    prefix = new_prefix("floor")
    proc = subprocess.Popen([sys.executable, "-m", "bench.claim_floor", "serve", "--broker", broker_url, "--prefix",
                             prefix, "--db", str(workdir / "floor.db"), "--jobs", str(400_000)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    conns: list[Connection] = []
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the floor server did not start")
        for i in range(clients):
            conn = Connection(BrokerConfig(url=broker_url), client_id=f"floor-client-{i}", reply_prefix=prefix)
            conn.start(wait_s=30)
            conns.append(conn)
        cpu0 = _cpu_s(proc.pid)
        claims, errors = _drive(conns, lambda c: c.request(f"{prefix}/floor/claim/{c.client_id}", {}, timeout_s=30),
                                seconds)
        cpu_s = _cpu_s(proc.pid) - cpu0
    finally:
        for conn in conns:
            conn.stop()
        proc.kill()
        proc.wait(timeout=10)
    if errors:
        raise RuntimeError(f"floor clients failed: {errors[:3]}")
    return {"claims": claims, "claims_per_s": claims / seconds, "cpu_s": cpu_s, "cpu_per_claim_s": cpu_s / max(1, claims)}


def _claim_and_hand_back(agent: SimAgent) -> dict[str, Any]:
    """A claim, then its lease handed back (`fail`, cause shutdown: the job is pending again), as in the claim
    round-trip benchmark: the host holds one lease at a time, as a real agent's slot does. Two requests."""
    reply = agent.call(Verb.CLAIM)
    grant = reply.get("job")
    if reply.get("ok") and grant:
        back = agent.call(Verb.FAIL, job_id=grant["job"]["id"], lease_id=grant["lease_id"], cause="shutdown")
        if not back.get("ok"):
            return back
    return reply


def measure_coordinator(broker_url: str, workdir: Path, clients: int, seconds: float) -> dict[str, Any]:
    prefix = new_prefix("coordfloor")
    coord = CoordinatorProc(workdir / "coord", broker_url, prefix, jobs_manifest(1_000, lease_s=600), wait_s=300)
    agents = [SimAgent(broker_url, prefix, f"floor-host-{i}") for i in range(clients)]
    try:
        for agent in agents:
            agent.start()
        for agent in agents:
            grant = agent.claim_until_granted()
            agent.call(Verb.FAIL, job_id=grant["job"]["id"], lease_id=grant["lease_id"], cause="shutdown")
        while coord.client.health().republishing:
            time.sleep(0.2)
        cpu0 = _cpu_s(coord.pid)
        claims, errors = _drive(agents, _claim_and_hand_back, seconds)
        cpu_s = _cpu_s(coord.pid) - cpu0
    finally:
        for agent in agents:
            agent.stop()
        coord.stop()
    if errors:
        raise RuntimeError(f"coordinator clients failed: {errors[:3]}")
    # each counted claim was two requests (the claim and its hand-back)
    return {"claims": claims, "claims_per_s": claims / seconds, "cpu_s": cpu_s, "cpu_per_claim_s": cpu_s / max(1, claims),
            "requests": 2 * claims, "cpu_per_request_s": cpu_s / max(1, 2 * claims)}


def measure_claim_floor(clients: int, seconds: float, workdir: Path) -> dict[str, Any]:
    """The floor server and the coordinator under the same claim load, through one broker, in one run."""
    with LocalBroker(workdir / "broker") as broker:
        floor = measure_floor(broker.url, workdir, clients, seconds)
        coordinator = measure_coordinator(broker.url, workdir, clients, seconds)
    return {"clients": clients, "seconds": seconds, "floor": floor, "coordinator": coordinator,
            "load": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="cmd")
    serve = sub.add_parser("serve")
    serve.add_argument("--broker", required=True)
    serve.add_argument("--prefix", required=True)
    serve.add_argument("--db", type=Path, required=True)
    serve.add_argument("--jobs", type=int, default=400_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        serve_floor(args.broker, args.prefix, args.db, args.jobs)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        print(json.dumps(measure_claim_floor(args.clients, args.seconds, Path(tmp)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Host-driven growth and forged output (findings 3 and 6), tried against the project's mTLS broker.

A host holding its own certificate floods the coordinator with long request ids, with huge log
lines for jobs it does not hold, and with log lines for another host's job. Each test asserts the
coordinator's database and memory stay bounded and no job's log shows what the host forged.
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any

import psutil

from mqfleet.agent.capability import detect_advert
from mqfleet.mqtt.connection import Connection
from mqfleet.wire.topics import MAX_REQUEST_ID_CHARS, Role, encode, log_batches
from tests.fixtures.common import wait_until
from tests.fixtures.fleet import manifest_text
from tests.fixtures.tls import OPERATOR, T, TlsFleet

MiB = 1024 * 1024


def _host(fleet: TlsFleet, host: str) -> Connection:
    conn = Connection(fleet.broker_config(host), client_id=f"agent-{host}", reply_prefix=T.prefix)
    conn.start(wait_s=10)
    conn.publish_wait(T.advert(host), encode(detect_advert(host, slots=1).to_wire()), retain=True)
    return conn


def _db_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def test_five_thousand_requests_with_4_kb_request_ids_are_refused_and_the_database_does_not_grow(
    tls_fleet: TlsFleet,
) -> None:
    tls_fleet.write_manifest(manifest_text({"name": "parked", "model": "ok", "allowed_hosts": ["nowhere"]}))
    tls_fleet.start_coordinator()
    attacker = _host(tls_fleet, "host-a")
    replies: list[dict[str, Any]] = []
    lock = threading.Lock()

    def on_reply(msg: Any) -> None:
        with lock:
            replies.append(json.loads(msg.payload))

    reply_topic = f"{T.reply('agent-host-a')}/flood"
    attacker.subscribe(reply_topic, on_reply)
    try:
        ok_id = "r" * MAX_REQUEST_ID_CHARS
        accepted = attacker.request(T.rpc(Role.AGENT, "host-a", "claim"), {"request_id": ok_id}, timeout_s=10)
        assert accepted["ok"] is True, accepted
        before = _db_bytes(tls_fleet.db_path)
        for i in range(5000):
            body = {"request_id": f"{i:05d}" + "x" * 4091, "job_id": "j", "lease_id": "l"}
            attacker.publish(T.rpc(Role.AGENT, "host-a", "renew"), encode(body), response_topic=reply_topic)
        wait_until(lambda: len(replies) >= 5000, timeout_s=120, interval_s=0.5, what="5000 replies")
        with lock:
            assert {r.get("error") for r in replies} == {"bad_request"}
            assert "request_id" in replies[0]["message"]
        grown = _db_bytes(tls_fleet.db_path) - before
        print(f"database grew {grown} bytes over 5000 refused requests")  # the figure, with pytest -s
        assert grown < 1 * MiB
    finally:
        attacker.stop(timeout_s=2)
    assert tls_fleet.client().job("parked").status == "pending"


def test_two_hundred_batches_of_250_kib_lines_for_invented_jobs_leave_the_coordinators_memory_bounded(
    tls_fleet: TlsFleet,
) -> None:
    tls_fleet.write_manifest(manifest_text({"name": "parked", "model": "ok", "allowed_hosts": ["nowhere"]}))
    coordinator = tls_fleet.start_coordinator()
    attacker = _host(tls_fleet, "host-a")
    client = tls_fleet.client()
    try:
        wait_until(lambda: any(w.id == "host-a" for w in client.workers()), timeout_s=10)
        rss_before = psutil.Process(coordinator.pid).memory_info().rss
        line = "A" * (250 * 1024)
        for i in range(200):
            job_id = uuid.uuid4().hex + uuid.uuid4().hex
            attacker.publish_wait(T.log("host-a", job_id), encode({"job_id": job_id, "lines": [line]}), qos=0)
            if i % 50 == 49:  # paced a little, so the broker's queue for the coordinator does not overflow
                sent = i + 1
                wait_until(lambda: client.health().log_batches_refused >= sent - 10, timeout_s=30)  # noqa: B023
        wait_until(lambda: client.health().log_batches_refused >= 200, timeout_s=30, what="200 refused batches")
        growth = psutil.Process(coordinator.pid).memory_info().rss - rss_before
        print(f"coordinator RSS grew {growth / MiB:.1f} MiB over 200 refused 250 KiB batches")
        assert growth < 20 * MiB, f"coordinator RSS grew {growth / MiB:.1f} MiB"
    finally:
        attacker.stop(timeout_s=2)


def test_a_log_line_forged_by_another_host_never_shows_in_the_jobs_logs(tls_fleet: TlsFleet) -> None:
    tls_fleet.write_manifest(manifest_text({"name": "a-job", "model": "ok", "allowed_hosts": ["host-a"],
                                            "hyper": {"sleep": 30.0}}))
    tls_fleet.start_coordinator()
    tls_fleet.start_agent("host-a")
    tls_fleet.wait_for_status({"a-job": "running"}, timeout_s=30)
    job_id = tls_fleet.client().job("a-job").id
    attacker = _host(tls_fleet, "host-b")
    try:
        forged = encode({"job_id": job_id, "lines": ["FORGED: loss=0.0, ship it"]})
        attacker.publish_wait(T.log("host-b", job_id), forged, qos=0)
        wait_until(lambda: tls_fleet.client().health().log_batches_refused >= 1, timeout_s=10)
    finally:
        attacker.stop(timeout_s=2)
    wait_until(lambda: "ok.py: job" in tls_fleet.cli_as(OPERATOR, "logs", "a-job").stdout, timeout_s=20,
               what="the real trainer's lines")
    logs = tls_fleet.cli_as(OPERATOR, "logs", "a-job")
    assert logs.returncode == 0, logs.stderr
    assert "FORGED" not in logs.stdout


def test_a_host_flooding_its_own_jobs_log_with_long_lines_is_held_to_the_size_budget(tls_fleet: TlsFleet) -> None:
    tls_fleet.write_manifest(manifest_text({"name": "b-job", "model": "ok", "allowed_hosts": ["host-b"]},
                                           fleet="[fleet]\nlease_s = 60\ngrace_s = 10\n"))
    tls_fleet.start_coordinator()
    host = _host(tls_fleet, "host-b")
    try:
        grant = wait_until(lambda: host.request(T.rpc(Role.AGENT, "host-b", "claim"),
                                                {"request_id": uuid.uuid4().hex}, timeout_s=10).get("job"),
                           timeout_s=15, what="a claim by host-b")
        job_id = grant["job"]["id"]
        line = "L" * 8192
        # 2800 lines of 8 KiB (22 MiB, past the 16 MiB budget), in the batches an agent sends.
        lines = [f"{batch:02d}:{i:04d} {line}" for batch in range(7) for i in range(400)]
        for batch_lines in log_batches(lines):
            host.publish_wait(T.log("host-b", job_id), encode({"job_id": job_id, "lines": batch_lines,
                                                               "attempt": grant["attempt"]}), qos=1, timeout_s=30)
        client = tls_fleet.client(timeout_s=30)
        stored = wait_until(lambda: (got := client.logs(job_id).lines) and len(got) >= 2800 and got,
                            timeout_s=60, interval_s=1.0, what="the 2800 lines stored")
    finally:
        host.stop(timeout_s=2)
    total = sum(len(s) for s in stored)
    assert total < 16 * MiB + 2800 * 600, f"{total / MiB:.1f} MiB stored for one attempt"
    assert stored[0].startswith("00:0000 LLL") and len(stored[0]) > 8000  # the start is kept whole
    assert stored[-1].startswith("06:0399 LLL") and stored[-1].endswith("[cut: output over budget]")

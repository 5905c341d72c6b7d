"""The coordinator answers only inside the requester's own reply namespace (docs/SECURITY.md, "Replies").

Each test is the attack an enrolled but hostile client tried: make the coordinator publish on an
agent verb, another host's advert or control topic, with wildcards, or from a retained request.
Each asserts that nothing changed: no phantom host, no claimed job, the advert intact.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from mqfleet.mqtt.config import BrokerConfig
from mqfleet.mqtt.connection import Connection
from mqfleet.wire.topics import Role, Topics, encode
from tests.fixtures.common import wait_until
from tests.fixtures.fleet import Fleet, manifest_text


def _raw(fleet: Fleet, name: str) -> Connection:
    conn = Connection(BrokerConfig(url=fleet.broker_url), client_id=f"{name}-{uuid.uuid4().hex[:6]}",
                      reply_prefix=fleet.prefix)
    conn.start(wait_s=10)
    return conn


def _publish_request(conn: Connection, topic: str, response_topic: str, *, retain: bool = False) -> None:
    """A request with a Response Topic of the sender's choosing, as `mosquitto_pub -D publish response-topic` sends."""
    conn.publish(topic, encode({"request_id": uuid.uuid4().hex}), response_topic=response_topic, retain=retain)


def _jobs_by_status(fleet: Fleet) -> dict[str, str]:
    with fleet.client() as client:
        return {str(j["name"]): str(j["status"]) for j in client.jobs()}


def _hosts(fleet: Fleet) -> list[str]:
    with fleet.client() as client:
        return [w.id for w in client.workers()]


def test_a_query_whose_response_topic_is_an_agent_claim_makes_no_phantom_host_claim(fleet: Fleet) -> None:
    fleet.write_manifest(manifest_text(*({"name": f"j{i}", "model": "ok", "seed": i} for i in range(4))))
    fleet.start_coordinator()
    t = Topics(fleet.prefix)
    attacker = _raw(fleet, "mon")
    try:
        for _ in range(12):
            _publish_request(attacker, t.rpc(Role.QUERY, "mon", "health"), t.rpc(Role.AGENT, "ghost-1", "claim"))
        # The coordinator stays up and answers; nothing was claimed and no host appeared.
        wait_until(lambda: fleet.client().health().requests_dropped >= 12, timeout_s=10)
        assert set(_jobs_by_status(fleet).values()) == {"pending"}
        assert "ghost-1" not in _hosts(fleet)
    finally:
        attacker.stop()


def test_a_response_topic_naming_another_hosts_advert_or_control_topic_is_dropped(fleet: Fleet) -> None:
    fleet.write_manifest(manifest_text({"name": "j", "model": "ok", "hyper": {"sleep": 30.0}}))
    fleet.start_coordinator()
    fleet.start_agent("host-a")
    fleet.wait_for_status({"j": "running"})
    t = Topics(fleet.prefix)
    seen: list[Any] = []
    watcher = _raw(fleet, "watch")
    watcher.subscribe(t.advert("host-a"), lambda m: seen.append(("advert", m.payload)))
    watcher.subscribe(t.control("host-a"), lambda m: seen.append(("control", m.payload)))
    wait_until(lambda: any(kind == "advert" for kind, _ in seen), timeout_s=10)
    seen.clear()
    attacker = _raw(fleet, "mon")
    try:
        for target in (t.advert("host-a"), t.status("host-a"), t.control("host-a"), t.reply("agent-host-a"),
                       t.job_state("x"), f"{fleet.prefix}/reply/+", f"{fleet.prefix}/#"):
            _publish_request(attacker, t.rpc(Role.QUERY, "mon", "health"), target)
        wait_until(lambda: fleet.client().health().requests_dropped >= 7, timeout_s=10)
        time.sleep(0.5)
        assert seen == []
        with fleet.client() as client:
            worker = next(w for w in client.workers() if w.id == "host-a")
            assert worker.online and "state" not in worker.advert
        assert _jobs_by_status(fleet) == {"j": "running"}
    finally:
        attacker.stop()
        watcher.stop()


def test_a_reply_inside_the_senders_own_namespace_is_answered(fleet: Fleet) -> None:
    fleet.write_manifest(manifest_text({"name": "j", "model": "ok"}))
    fleet.start_coordinator()
    t = Topics(fleet.prefix)
    conn = _raw(fleet, "me")
    try:
        got: list[bytes] = []
        conn.subscribe(f"{t.reply(conn.client_id)}/sub", lambda m: got.append(m.payload))
        _publish_request(conn, t.rpc(Role.QUERY, conn.client_id, "health"), f"{t.reply(conn.client_id)}/sub")
        wait_until(lambda: got, timeout_s=10)
        assert b'"ok":true' in got[0]
    finally:
        conn.stop()


def test_a_retained_request_is_dropped_and_deleted_so_a_restarted_coordinator_finds_nothing_to_run(
    fleet: Fleet,
) -> None:
    fleet.write_manifest(manifest_text({"name": "j", "model": "ok"}))
    coordinator = fleet.start_coordinator()
    t = Topics(fleet.prefix)
    attacker = _raw(fleet, "mon")
    topic = t.rpc(Role.QUERY, attacker.client_id, "health")
    try:
        got: list[bytes] = []
        attacker.subscribe(t.reply(attacker.client_id), lambda m: got.append(m.payload))
        _publish_request(attacker, topic, t.reply(attacker.client_id), retain=True)
        wait_until(lambda: fleet.client().health().requests_dropped >= 1, timeout_s=10)
        health = fleet.client().health()
        assert health.requests_dropped == 1 and health.retained_cleared == 1
        coordinator.stop()
        fleet.start_coordinator()
        retained: list[bytes] = []
        probe = _raw(fleet, "probe")
        marker = f"{fleet.prefix}/test-marker/{probe.client_id}"
        probe.subscribe(topic, lambda m: retained.append(m.payload))
        probe.subscribe(marker, lambda m: retained.append(b"marker"))
        probe.publish(marker, b"x", qos=1)  # after the subscription, so a retained request would come first
        wait_until(lambda: b"marker" in retained, timeout_s=10, what="the probe's own marker")
        probe.stop()
        assert retained == [b"marker"] and fleet.client().health().requests_dropped == 0
        assert got == []
    finally:
        attacker.stop()


def test_a_claim_from_a_host_with_no_hosts_entry_and_no_advert_is_refused_and_creates_nothing(fleet: Fleet) -> None:
    fleet.write_manifest(manifest_text({"name": "j", "model": "ok"}))
    fleet.start_coordinator()
    t = Topics(fleet.prefix)
    ghost = Connection(BrokerConfig(url=fleet.broker_url), client_id=t.client_id("agent-ghost"),
                       reply_prefix=fleet.prefix)
    ghost.start(wait_s=10)
    try:
        reply = ghost.request(t.rpc(Role.AGENT, "ghost", "claim"), {"request_id": "c1"}, timeout_s=10)
        assert reply["ok"] is False and reply["error"] == "unknown_host"
        assert "ghost" not in _hosts(fleet)
        assert _jobs_by_status(fleet) == {"j": "pending"}
    finally:
        ghost.stop()

"""Client-id takeover, tried against the project's mTLS broker.

Finding 8: host B's certificate connects with host A's client id `agent-host-a` while A's agent runs a job.
Mosquitto lets it: the broker cannot bind client ids to certificates in its file ACL without making every
certificate one connection at most (docs/SECURITY.md, "Trade-offs and residual risks"). What the test pins
down is that the takeover gains nothing: the intruder cannot publish as A, cannot read A's control
messages, and A's job completes on A with its own artifact once A's agent is back.

Issue 25 item 2: a local account with no certificate at all could do the same through the loopback
listener; it no longer can, and the coordinator logs and counts a takeover of its own client id.
"""

from __future__ import annotations

import functools
import json
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from mqfleet.client import FleetClient
from mqfleet.errors import MqfleetError
from mqfleet.local.broker import BrokerPki, LocalBroker
from mqfleet.local.ports import free_port
from mqfleet.wire.topics import Role, Verb
from tests.fixtures.common import scrape_metrics, wait_until
from tests.fixtures.fleet import manifest_text
from tests.fixtures.tls import T, TlsFleet

NOT_AUTHORIZED = 0x87


def test_host_b_taking_host_a_client_id_cannot_act_as_host_a_and_a_job_completes_on_a(tls_fleet: TlsFleet) -> None:
    tls_fleet.write_manifest(manifest_text({"name": "a-job", "model": "ok", "allowed_hosts": ["host-a"],
                                            "hyper": {"sleep": 2.0}}, fleet="[fleet]\nlease_s = 20\ngrace_s = 10\n"))
    tls_fleet.start_coordinator()
    tls_fleet.start_agent("host-a")
    tls_fleet.wait_for_status({"a-job": "running"}, timeout_s=30)
    job = tls_fleet.client().job("a-job").to_wire()
    cert, key = tls_fleet.pki.cert("host-b")
    intruder = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="agent-host-a", protocol=mqtt.MQTTv5,
                           reconnect_on_failure=False)
    intruder.tls_set(ca_certs=str(tls_fleet.pki.ca), certfile=str(cert), keyfile=str(key))
    received: list[str] = []
    acks: dict[int, int] = {}
    intruder.on_message = lambda c, u, msg: received.append(msg.topic)
    intruder.on_publish = lambda c, u, mid, rc, p: acks.__setitem__(mid, rc.value)
    host, port = tls_fleet.broker_url.removeprefix("mqtts://").split(":")
    intruder.connect(host, int(port), keepalive=10)
    intruder.loop_start()
    try:
        wait_until(intruder.is_connected, timeout_s=10, what="the intruder's CONNACK")
        intruder.subscribe([(T.control("host-a"), 1), (f"{T.reply('agent-host-a')}/#", 1)])
        forged = {"request_id": uuid.uuid4().hex, "job_id": job["id"], "lease_id": job["lease"]["lease_id"],
                  "sha256": "0" * 64, "size": 1, "metrics": {}}
        mids = [intruder.publish(T.rpc(Role.AGENT, "host-a", Verb.COMPLETE), json.dumps(forged), qos=1).mid,
                intruder.publish(T.advert("host-a"), json.dumps({"slots": 99}), qos=1, retain=True).mid,
                intruder.publish(T.status("host-a"), json.dumps({"state": "offline"}), qos=1, retain=True).mid]
        wait_until(lambda: all(m in acks for m in mids), timeout_s=10, what="PUBACKs")
        assert [acks[m] for m in mids] == [NOT_AUTHORIZED] * 3
        time.sleep(1.0)
        assert not [t for t in received if "/control/" in t], received
    finally:
        intruder.loop_stop()
        intruder.disconnect()
    done = tls_fleet.wait_for_status({"a-job": "completed"}, timeout_s=60)
    assert done[0]["host"] == "host-a"
    workers = {w.id: w.to_wire() for w in tls_fleet.client().workers()}
    assert workers["host-a"]["advert"]["slots"] == 1 and "host-b" not in workers


def _loopback_connack(port: int, client_id: str) -> str:
    """What the loopback listener answers a CONNECT with no certificate and no password under `client_id`."""
    answers: list[str] = []
    local = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                        reconnect_on_failure=False)
    local.on_connect = lambda c, u, flags, rc, p: answers.append(rc.getName())
    local.connect("127.0.0.1", port, keepalive=10)
    local.loop_start()
    try:
        wait_until(lambda: answers, timeout_s=10, what=f"the loopback listener's CONNACK to {client_id}")
    finally:
        local.loop_stop()
        local.disconnect()
    return answers[0]


def test_a_local_account_without_a_certificate_cannot_take_the_coordinators_or_an_agents_client_id(
    tls_fleet: TlsFleet, tls_broker: tuple[LocalBroker, BrokerPki]
) -> None:
    """Issue 25 item 2 (X1): any local account connected to the anonymous loopback listener as `coordinator` or
    `agent-HOST`, disconnected it and ended its session; in a 20 s takeover war 4 of 6 `health` calls failed."""
    broker = tls_broker[0]
    tls_fleet.write_manifest(manifest_text({"name": "a-job", "model": "ok", "allowed_hosts": ["host-a"],
                                            "hyper": {"sleep": 4.0}}, fleet="[fleet]\nlease_s = 20\ngrace_s = 10\n"))
    tls_fleet.start_coordinator()
    tls_fleet.start_agent("host-a")
    tls_fleet.wait_for_status({"a-job": "running"}, timeout_s=30)
    client = tls_fleet.client(timeout_s=3.0)
    mark = len(broker.log_path.read_text(errors="replace"))
    answered = 0
    for _ in range(6):
        for client_id in ("coordinator", "agent-host-a"):
            assert _loopback_connack(broker.port, client_id) == "Not authorized"
        client.health()  # raises when the coordinator does not answer within 3 s
        answered += 1
    assert answered == 6
    assert client.health().session_takeovers == 0
    assert "already connected" not in broker.log_path.read_text(errors="replace")[mark:]
    done = tls_fleet.wait_for_status({"a-job": "completed"}, timeout_s=60)
    assert done[0]["host"] == "host-a" and len(tls_fleet.client().job("a-job").attempts_detail) == 1


def test_the_coordinator_logs_and_counts_a_certificate_holder_taking_its_client_id(
    tls_fleet: TlsFleet, tls_broker: tuple[LocalBroker, BrokerPki]
) -> None:
    """A certificate holder may still take any client id (docs/SECURITY.md): the coordinator says so in its log,
    its `health` and its metrics, and takes the id back (Mosquitto 2.0.11 sends no DISCONNECT 0x8E, so it reads
    the broker's own connection log)."""
    port = free_port()
    tls_fleet.write_manifest(manifest_text())
    tls_fleet.start_coordinator(extra=("--metrics-port", str(port)))
    client = tls_fleet.client(timeout_s=3.0)
    assert client.health().session_takeovers == 0
    cert, key = tls_fleet.pki.cert("host-b")
    host, broker_port = tls_fleet.broker_url.removeprefix("mqtts://").split(":")
    tries = 0
    while client.health().session_takeovers == 0 and tries < 5:  # the first may come before the watch subscribed
        tries += 1
        intruder = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="coordinator", protocol=mqtt.MQTTv5,
                               reconnect_on_failure=False)
        intruder.tls_set(ca_certs=str(tls_fleet.pki.ca), certfile=str(cert), keyfile=str(key))
        intruder.connect(host, int(broker_port), keepalive=10)
        intruder.loop_start()
        try:
            wait_until(intruder.is_connected, timeout_s=10, what="the intruder's CONNACK")
            wait_until(functools.partial(_is_disconnected, intruder), timeout_s=15,
                       what="the coordinator to take its id back")
        finally:
            intruder.loop_stop()
            intruder.disconnect()
        wait_until(lambda: _answers(client), timeout_s=15, what="the coordinator to answer again")
    takeovers = client.health().session_takeovers
    assert 1 <= takeovers <= tries  # each takeover once; the coordinator's own reconnects are not counted
    assert scrape_metrics(port)["mqfleet_session_takeovers_total"][()] == takeovers
    assert tls_fleet.coordinator is not None
    log = tls_fleet.coordinator.log()
    assert "client id coordinator taken by a client from 127.0.0.1:" in log and "as user 'host-b'" in log


def _answers(client: FleetClient) -> bool:
    try:
        client.health()
    except MqfleetError:
        return False
    return True


def _is_disconnected(client: mqtt.Client) -> bool:
    return not client.is_connected()

"""Client-id takeover (finding 8), tried against the project's mTLS broker: host B's certificate connects
with host A's client id `agent-host-a` while A's agent runs a job.

Mosquitto lets it: the broker cannot bind client ids to certificates in its file ACL without making every
certificate one connection at most (docs/SECURITY.md, "Trade-offs and residual risks"). What the test pins
down is that the takeover gains nothing: the intruder cannot publish as A, cannot read A's control
messages, and A's job completes on A with its own artifact once A's agent is back.
"""

from __future__ import annotations

import json
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from mqfleet.wire.topics import Role, Verb
from tests.fixtures.common import wait_until
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

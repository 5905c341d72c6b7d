"""The operator token on the bus (findings 4 and 9), tried against the project's mTLS broker.

Whoever reads `rpc/operator/#` (here with the coordinator's own certificate; a local account on the
loopback listener reads nothing there at all) sees signed requests, never the token; replaying what it saw,
or the request id of an accepted request with a wrong token, changes nothing.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

from mqfleet.mqtt.connection import Connection
from mqfleet.mqtt.inbox import Message
from mqfleet.wire.topics import Role, Verb
from tests.fixtures.common import wait_until
from tests.fixtures.fleet import OPERATOR_TOKEN, manifest_text
from tests.fixtures.tls import OPERATOR, T, TlsFleet


def _status(fleet: TlsFleet, name: str) -> str:
    return str(fleet.client().job(name).status)


def test_a_reader_of_operator_requests_learns_no_token_and_its_replays_change_nothing(tls_fleet: TlsFleet) -> None:
    tls_fleet.write_manifest(manifest_text({"name": "parked", "model": "ok", "allowed_hosts": ["nowhere"]}))
    tls_fleet.start_coordinator()
    captured: list[Message] = []
    lock = threading.Lock()

    def keep(msg: Message) -> None:
        with lock:
            captured.append(msg)

    # The loopback listener no longer shows operator requests to local accounts (test_broker_security);
    # here the sniffer holds the coordinator's certificate, the strongest reader there is.
    sniffer = Connection(tls_fleet.broker_config("coordinator"), client_id=f"sniff-{uuid.uuid4().hex[:6]}",
                         reply_prefix=T.prefix)
    sniffer.subscribe(f"{T.prefix}/rpc/operator/#", keep)
    sniffer.start(wait_s=10)
    try:
        assert tls_fleet.cli_as(OPERATOR, "cancel", "parked").returncode == 0
        wait_until(lambda: captured, timeout_s=10, what="the cancel request on the bus")
        cancel = captured[0]
        assert OPERATOR_TOKEN.encode() not in cancel.payload
        body: dict[str, Any] = json.loads(cancel.payload)
        assert "token" not in body and set(body["auth"]) == {"ts", "mac"}
        assert tls_fleet.cli_as(OPERATOR, "requeue", "parked").returncode == 0
        assert _status(tls_fleet, "parked") == "pending"

        operator = Connection(tls_fleet.broker_config(OPERATOR), client_id=f"op-{uuid.uuid4().hex[:6]}",
                              reply_prefix=T.prefix)
        operator.start(wait_s=10)
        try:
            topic = T.rpc(Role.OPERATOR, operator.client_id, "cancel")
            # The captured bytes, replayed from another client: same signature, so refused as a replay.
            replay = operator.request_raw(topic, cancel.payload, timeout_s=10)
            assert replay["ok"] is False and replay["error"] == "unauthorized" and "replayed" in replay["message"]
            # The same request id with a signature by a wrong token: never the remembered `ok`.
            forged = {**body, "auth": {"ts": body["auth"]["ts"], "mac": "0" * 64}}
            original_topic = cancel.topic
            wrong = operator.request_raw(original_topic.replace(original_topic.split("/")[-2], operator.client_id),
                                         json.dumps(forged).encode(), timeout_s=10)
            assert wrong["ok"] is False and wrong["error"] == "unauthorized", wrong
            # The token in clear, as older clients sent it: refused too.
            clear = {"request_id": uuid.uuid4().hex, "job": "parked", "token": OPERATOR_TOKEN}
            refused = operator.request(topic, clear, timeout_s=10)
            assert refused["ok"] is False and refused["error"] == "unauthorized" and "not signed" in refused["message"]
        finally:
            operator.stop(timeout_s=2)
    finally:
        sniffer.stop(timeout_s=2)
    assert _status(tls_fleet, "parked") == "pending"


def test_a_redelivered_signed_request_gets_the_remembered_reply_and_runs_once(tls_fleet: TlsFleet) -> None:
    tls_fleet.write_manifest(manifest_text({"name": "parked", "model": "ok", "allowed_hosts": ["nowhere"]}))
    tls_fleet.start_coordinator()
    client = tls_fleet.client()
    captured: list[bytes] = []
    sniffer = Connection(tls_fleet.broker_config("coordinator"), client_id=f"sniff-{uuid.uuid4().hex[:6]}",
                         reply_prefix=T.prefix)
    sniffer.subscribe(f"{T.prefix}/rpc/operator/{client.client_id}/cancel", lambda m: captured.append(m.payload))
    sniffer.start(wait_s=10)
    try:
        first = client.call_json(Verb.CANCEL, job="parked")
        wait_until(lambda: captured, timeout_s=10)
        client.call_json(Verb.REQUEUE, job="parked")
        # The same bytes on the same topic (a QoS 1 redelivery): answered from memory, nothing runs again.
        again = client.conn.request_raw(T.rpc(Role.OPERATOR, client.client_id, "cancel"), captured[0], timeout_s=10)
    finally:
        sniffer.stop(timeout_s=2)
    assert again["ok"] is True and again["job"]["status"] == first["job"]["status"] == "cancelled"
    assert _status(tls_fleet, "parked") == "pending"

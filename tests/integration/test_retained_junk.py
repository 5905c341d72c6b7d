"""Retained messages nobody reads, tried against the project's mTLS broker (issue 25 item 9, X6).

The ACL cannot forbid the retain flag on a topic it allows, so a host could park retained messages on its
RPC and log topics, and any certificate on `rpc/query/{own client id}/{verb}`; the broker kept each (up to
its 4 MiB packet limit) in memory and persistence for good. The ACL now allows only the topics each role
uses (tests/integration/test_broker_security.py), and the coordinator deletes every retained request and
log batch it sees after dropping it.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid

from mqfleet.wire.topics import Role, Verb
from tests.fixtures.common import wait_until
from tests.fixtures.fleet import manifest_text
from tests.fixtures.tls import OPERATOR, T, TlsFleet


def _publish_retained(fleet: TlsFleet, cn: str, client_id: str, topic: str, payload: str) -> None:
    cert, key = fleet.pki.cert(cn)
    host, port = fleet.broker_url.removeprefix("mqtts://").split(":")
    done = subprocess.run(["mosquitto_pub", "-h", host, "-p", port, "-V", "5", "--cafile", str(fleet.pki.ca),
                           "--cert", str(cert), "--key", str(key), "-i", client_id, "-q", "1", "-r", "-t", topic,
                           "-m", payload], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def _retained_on_the_broker(fleet: TlsFleet) -> list[str]:
    """Topics under the prefix holding a retained message, as the coordinator's certificate sees them."""
    cert, key = fleet.pki.cert("coordinator")
    host, port = fleet.broker_url.removeprefix("mqtts://").split(":")
    done = subprocess.run(["mosquitto_sub", "-h", host, "-p", port, "--cafile", str(fleet.pki.ca), "--cert",
                           str(cert), "--key", str(key), "-i", f"probe-{uuid.uuid4().hex[:8]}", "-t",
                           f"{T.prefix}/#", "--retained-only", "-W", "2", "-F", "%t"],
                          capture_output=True, text=True, timeout=30, env=os.environ.copy())
    assert done.returncode in (0, 27), done.stderr  # 27: the wait ended, as it always does here
    return done.stdout.split()


def test_retained_requests_and_log_batches_are_dropped_and_deleted_from_the_broker(tls_fleet: TlsFleet) -> None:
    tls_fleet.write_manifest(manifest_text({"name": "j", "model": "ok", "allowed_hosts": ["nowhere"]}))
    tls_fleet.start_coordinator()
    client = tls_fleet.client()
    before = client.health()
    request = json.dumps({"request_id": uuid.uuid4().hex})
    parked = [
        ("host-a", "agent-host-a", T.rpc(Role.AGENT, "host-a", Verb.CLAIM)),
        ("host-a", "agent-host-a", T.log("host-a", "invented-job")),
        ("host-b", "cli-b", T.rpc(Role.QUERY, "cli-b", Verb.HEALTH)),
        (OPERATOR, "cli-op", T.rpc(Role.OPERATOR, "cli-op", Verb.DRAIN)),
    ]
    for cn, client_id, topic in parked:
        _publish_retained(tls_fleet, cn, client_id, topic, request)
    wait_until(lambda: client.health().retained_cleared >= before.retained_cleared + len(parked), timeout_s=15,
               what="the coordinator to delete every retained request and log batch")
    left = [topic for topic in _retained_on_the_broker(tls_fleet) if "/rpc/" in topic or "/log/" in topic]
    assert left == []
    health = client.health()
    assert health.requests_dropped >= before.requests_dropped + 3  # the log batch is not a request
    assert health.retained_cleared == before.retained_cleared + len(parked)  # its own deletions are not counted
    assert client.workers() == [] and client.job("j").status == "pending"  # the retained claim and drain never ran

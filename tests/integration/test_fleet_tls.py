"""The whole fleet over mutual TLS: a real coordinator, real agents and the CLI, each with its own certificate.

The broker runs the project's own `mosquitto.conf` (rendered by `mosquitto_conf.render_broker_conf` through
`LocalBroker(tls_dir=...)`) with certificates from `certs` and the ACL `acl.render_acl` makes from the
hosts. Every process connects to its TLS listener as its own CN; nothing uses the loopback listener.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from mqfleet.client import FleetClient
from mqfleet.errors import BrokerUnavailableError, NotAuthorizedError
from mqfleet.mqtt.connection import Connection
from mqfleet.trust.certs import CertRole, issue_cert, make_ca
from mqfleet.wire.topics import JsonObject, Role, Verb, encode
from tests.fixtures.common import wait_until
from tests.fixtures.fleet import manifest_text
from tests.fixtures.tls import OPERATOR, T, TlsFleet

#: How long a request the broker dropped is waited for: it never gets an answer.
DROPPED_WAIT_S = 1.5


@pytest.fixture
def hostile(tls_fleet: TlsFleet) -> Iterator[Connection]:
    """A client holding host A's certificate, under A's own client id, that tries to act as host B."""
    conn = Connection(tls_fleet.broker_config("host-a"), client_id="agent-host-a", reply_prefix=T.prefix)
    conn.start(wait_s=10)
    try:
        yield conn
    finally:
        conn.stop(timeout_s=2)


def _by_name(client: FleetClient) -> dict[str, JsonObject]:
    return {str(j["name"]): j for j in client.jobs()}


def test_host_a_certificate_cannot_advert_claim_or_complete_as_host_b_and_b_job_is_unaffected(
    tls_fleet: TlsFleet, hostile: Connection
) -> None:
    b_only = {"model": "ok", "allowed_hosts": ["host-b"]}
    tls_fleet.write_manifest(manifest_text({**b_only, "name": "b-job", "hyper": {"sleep": 4.0}},
                                           {**b_only, "name": "b-next", "hyper": {"tag": "next"}}))
    tls_fleet.start_coordinator()
    tls_fleet.start_agent("host-b")
    client = tls_fleet.client()
    tls_fleet.wait_for_status({"b-job": "running"}, timeout_s=30)
    b_job = client.job("b-job").to_wire()
    lease = {**b_job["lease"], "job_id": b_job["id"]}
    before = _by_name(client)

    forged_advert = {"host": "host-b", "slots": 99, "labels": ["forged"], "cuda": True, "ts": time.time()}
    for topic, payload in ((T.advert("host-b"), forged_advert), (T.status("host-b"), {"state": "offline"})):
        with pytest.raises(BrokerUnavailableError, match="Not authorized"):
            hostile.publish_wait(topic, payload, timeout_s=5)
    forged_complete = {"request_id": uuid.uuid4().hex, "job_id": lease["job_id"], "lease_id": lease["lease_id"],
                       "sha256": "0" * 64, "size": 1, "metrics": {}, "output_tail": "", "host": "host-b"}
    for verb, body in ((Verb.CLAIM, {"request_id": uuid.uuid4().hex}), (Verb.COMPLETE, forged_complete)):
        with pytest.raises(NotAuthorizedError, match="Not authorized"):
            hostile.request_raw(T.rpc(Role.AGENT, "host-b", verb), encode(body), timeout_s=DROPPED_WAIT_S)
    # On its own topic the broker lets it through, and the coordinator goes by the topic, not the payload's host.
    for verb in (Verb.COMPLETE, Verb.FAIL):
        body = {**forged_complete, "request_id": uuid.uuid4().hex, "cause": "app", "exit_code": 1}
        reply = hostile.request(T.rpc(Role.AGENT, "host-a", verb), body, timeout_s=5)
        assert reply["ok"] is False and reply["error"] == "lease_lost", reply

    after = _by_name(client)
    assert {n: (j["status"], j["host"], j["attempts"]) for n, j in after.items()} == {
        n: (j["status"], j["host"], j["attempts"]) for n, j in before.items()
    }
    assert after["b-next"]["status"] == "pending"
    workers = {w.id: w.to_wire() for w in client.workers()}
    assert "forged" not in str(workers["host-b"]) and workers["host-b"]["slots"] == 1, workers["host-b"]
    assert workers["host-b"]["online"] is True
    assert "host-a" not in workers, "the hostile client never adverted itself, so the coordinator must not know it"

    done = tls_fleet.wait_for_status("completed", timeout_s=60)
    assert {j["name"]: (j["host"], j["attempts"]) for j in done} == {"b-job": ("host-b", 0), "b-next": ("host-b", 0)}


def test_an_agent_certificate_cannot_cancel_requeue_or_reload_and_the_operator_certificate_can(
    tls_fleet: TlsFleet,
) -> None:
    tls_fleet.write_manifest(manifest_text({"model": "ok", "name": "parked", "allowed_hosts": ["nowhere"]}))
    tls_fleet.start_coordinator()
    client = tls_fleet.client()

    for args in (("cancel", "parked"), ("requeue", "parked"), ("reload",)):
        result = tls_fleet.cli_as("host-a", *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "refused the request" in result.stderr and "Not authorized" in result.stderr, result.stderr
    assert client.job("parked").status == "pending"

    refused = tls_fleet.cli_as(OPERATOR, "cancel", "parked", token="not-the-token")
    assert refused.returncode == 1 and "unauthorized" in refused.stderr.lower(), refused.stderr
    assert client.job("parked").status == "pending"

    done = tls_fleet.cli_as(OPERATOR, "cancel", "parked")
    assert done.returncode == 0, done.stderr
    assert client.job("parked").status == "cancelled"


def test_no_certificate_another_ca_or_an_expired_certificate_fails_with_exit_3(tls_fleet: TlsFleet) -> None:
    other = tls_fleet.dir / "other-ca"
    make_ca(other)
    issue_cert(other, cn="host-a", role=CertRole.AGENT)
    expired = tls_fleet.dir / "expired"
    issue_cert(tls_fleet.pki.dir, cn="host-a", role=CertRole.AGENT, days=-1, out_dir=expired)
    ca = str(tls_fleet.pki.ca)
    attempts = {
        "no certificate": {"MQFLEET_CA": ca},
        "a certificate from another CA": {"MQFLEET_CA": ca, "MQFLEET_CERT": str(other / "host-a.crt"),
                                          "MQFLEET_KEY": str(other / "host-a.key")},
        "an expired certificate": {"MQFLEET_CA": ca, "MQFLEET_CERT": str(expired / "host-a.crt"),
                                   "MQFLEET_KEY": str(expired / "host-a.key")},
        "a broker signed by a CA we do not trust": {**tls_fleet.pki.env("host-a"), "MQFLEET_CA": str(other / "ca.crt")},
    }
    for what, tls in attempts.items():
        started = time.monotonic()
        result = tls_fleet.cli_as(None, "jobs", "--json", tls=tls, timeout="30")
        assert result.returncode == 3, (what, result.stdout, result.stderr)
        assert "not reached" in result.stderr, (what, result.stderr)
        assert result.stdout == "", what
        assert time.monotonic() - started < 15, what  # refused at once, not after the 30 s wait
    untrusted = tls_fleet.cli_as(None, "jobs", tls=attempts["a broker signed by a CA we do not trust"])
    assert "TLS verification failed" in untrusted.stderr, untrusted.stderr


def test_query_verbs_answer_any_certificate_of_the_fleets_ca(tls_fleet: TlsFleet) -> None:
    tls_fleet.write_manifest(manifest_text({"model": "ok", "name": "parked", "allowed_hosts": ["nowhere"]}))
    tls_fleet.start_coordinator()
    wait_until(lambda: tls_fleet.cli_as("host-b", "health").returncode == 0, timeout_s=10, what="health over TLS")
    result = tls_fleet.cli_as("host-a", "jobs", "--json")
    assert result.returncode == 0, result.stderr
    assert '"parked"' in result.stdout

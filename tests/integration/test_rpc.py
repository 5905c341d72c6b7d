"""The coordinator's RPC surface, driven by a hand-made agent: leases, duplicates, bad uploads, bad payloads."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mqfleet.agent.capability import detect_advert
from mqfleet.mqtt.config import BrokerConfig
from mqfleet.mqtt.connection import Connection
from mqfleet.store.bundle import pack_artifact
from mqfleet.store.transfer import upload_to_url
from mqfleet.wire.topics import Role, Topics, Verb, encode
from tests.fixtures.common import wait_until
from tests.fixtures.fleet import Fleet, manifest_text


class RawAgent:
    """Speaks the agent protocol by hand, so tests can send what a real agent never would."""

    def __init__(self, fleet: Fleet, host: str) -> None:
        self.host = host
        self.topics = Topics(fleet.prefix)
        self.conn = Connection(BrokerConfig(url=fleet.broker_url), client_id=Topics(fleet.prefix).client_id(f"agent-{host}"), reply_prefix=fleet.prefix)
        self.conn.start(wait_s=10)
        advert = detect_advert(host, slots=4).to_wire()
        self.conn.publish_wait(self.topics.advert(host), encode(advert), retain=True)
        self.conn.publish_wait(self.topics.status(host), encode({"state": "online"}), retain=True)

    def call(self, verb: str, request_id: str | None = None, **fields: Any) -> dict[str, Any]:
        body = {"request_id": request_id or uuid.uuid4().hex, **fields}
        return self.conn.request(self.topics.rpc(Role.AGENT, self.host, verb), body, timeout_s=10)

    def raw(self, verb: str, payload: bytes) -> dict[str, Any]:
        """Send bytes as they are and wait for the reply."""
        return self.conn.request_raw(self.topics.rpc(Role.AGENT, self.host, verb), payload, timeout_s=10)

    def claim(self) -> dict[str, Any]:
        def granted() -> dict[str, Any] | None:
            reply = self.call("claim")
            return reply["job"] if reply.get("job") else None

        job: dict[str, Any] = wait_until(granted, timeout_s=10, interval_s=0.2, what=f"a claim by {self.host}")
        return job

    def close(self) -> None:
        self.conn.stop()


@pytest.fixture
def rpc_fleet(fleet: Fleet) -> Iterator[Fleet]:
    fleet.write_manifest(manifest_text(*[{"name": f"j{i}", "model": "ok", "mode": "m", "seed": i} for i in range(3)]))
    fleet.start_coordinator()
    yield fleet


@pytest.fixture
def agent(rpc_fleet: Fleet) -> Iterator[RawAgent]:
    a = RawAgent(rpc_fleet, "raw-a")
    yield a
    a.close()


def _artifact(tmp_path: Path, content: bytes) -> tuple[Path, str, int]:
    out = tmp_path / f"out-{uuid.uuid4().hex[:6]}"
    out.mkdir()
    (out / "model.bin").write_bytes(content)
    bundle = tmp_path / f"{out.name}.tar.zst"
    sha, size = pack_artifact(out, bundle)
    return bundle, sha, size


def test_renew_on_a_superseded_lease_is_refused_with_lease_lost(rpc_fleet: Fleet, agent: RawAgent) -> None:
    grant = agent.claim()
    job_id, old_lease = grant["job"]["id"], grant["lease_id"]
    client = rpc_fleet.client()
    client.call_json(Verb.CANCEL, job=job_id)
    client.call_json(Verb.REQUEUE, job=job_id)
    wait_until(lambda: client.job(job_id).status == "pending", timeout_s=5)

    reply = agent.call("renew", job_id=job_id, lease_id=old_lease, progress=None)

    assert reply["ok"] is False and reply["error"] == "lease_lost"


def test_complete_from_another_host_is_refused_with_lease_lost(rpc_fleet: Fleet, agent: RawAgent, tmp_path: Path) -> None:
    grant = agent.claim()
    intruder = RawAgent(rpc_fleet, "raw-b")
    try:
        _, sha, size = _artifact(tmp_path, b"x" * 100)
        reply = intruder.call("complete", job_id=grant["job"]["id"], lease_id=grant["lease_id"], sha256=sha, size=size)
    finally:
        intruder.close()
    assert reply["ok"] is False and reply["error"] == "lease_lost"


def test_a_duplicated_claim_request_is_answered_with_the_same_grant_and_executed_once(rpc_fleet: Fleet, agent: RawAgent) -> None:
    request_id = uuid.uuid4().hex
    first = agent.call("claim", request_id=request_id)
    again = agent.call("claim", request_id=request_id)

    assert first["job"] is not None
    assert again == first
    jobs = rpc_fleet.client().jobs()
    assert sum(1 for j in jobs if j["status"] == "claimed") == 1


def test_a_corrupted_upload_never_reaches_completed(rpc_fleet: Fleet, agent: RawAgent, tmp_path: Path) -> None:
    grant = agent.claim()
    job_id, lease = grant["job"]["id"], grant["lease_id"]
    bundle, sha, size = _artifact(tmp_path, b"the real model" * 1000)
    upload = agent.call("upload_url", job_id=job_id, lease_id=lease, sha256=sha, size=size)
    assert upload["ok"] and upload["exists"] is False
    corrupted = tmp_path / "corrupted.tar.zst"
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupted.write_bytes(bytes(data))
    upload_to_url(upload["url"], corrupted)

    reply = agent.call("complete", job_id=job_id, lease_id=lease, sha256=sha, size=size, metrics={})

    assert reply["ok"] is False and reply["error"] == "artifact_mismatch"
    job = rpc_fleet.client().job(job_id)
    assert job.status != "completed" and job.artifact is None
    # the bad object was removed, so a later `exists` can never point at it
    assert agent.call("upload_url", job_id=job_id, lease_id=lease, sha256=sha, size=size)["exists"] is False


def test_a_good_upload_completes_and_a_second_complete_is_refused(rpc_fleet: Fleet, agent: RawAgent, tmp_path: Path) -> None:
    grant = agent.claim()
    job_id, lease = grant["job"]["id"], grant["lease_id"]
    bundle, sha, size = _artifact(tmp_path, b"model" * 500)
    assert hashlib.sha256(bundle.read_bytes()).hexdigest() == sha
    upload = agent.call("upload_url", job_id=job_id, lease_id=lease, sha256=sha, size=size)
    upload_to_url(upload["url"], bundle)

    done = agent.call("complete", job_id=job_id, lease_id=lease, sha256=sha, size=size, metrics={"acc": 0.9})
    again = agent.call("complete", job_id=job_id, lease_id=lease, sha256=sha, size=size, metrics={"acc": 0.9})

    assert done["ok"] and done["status"] == "completed"
    assert again["ok"] is False and again["error"] == "lease_lost"
    assert rpc_fleet.client().job(job_id).artifact == sha


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"[1, 2]", b'{"request_id": 5}', b'{"job_id": 1, "lease_id": []}', b"\xff\xfe", b"{" * 10_000, b"x" * 300_000],
)
def test_a_malformed_payload_gets_an_error_reply_and_the_coordinator_keeps_serving(
    rpc_fleet: Fleet, agent: RawAgent, payload: bytes
) -> None:
    reply = agent.raw("renew", payload)

    assert reply["ok"] is False
    assert reply["error"] in ("bad_payload", "bad_request", "not_found", "lease_lost")
    assert rpc_fleet.client().health().state == "online"


def test_an_unknown_verb_is_answered_with_unknown_verb(rpc_fleet: Fleet, agent: RawAgent) -> None:
    reply = agent.call("explode")
    assert reply == {"ok": False, "error": "unknown_verb", "message": reply["message"]}

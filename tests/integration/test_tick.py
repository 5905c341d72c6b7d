"""The coordinator's sweep driven in-process with an injected clock: `Coordinator.tick(now)` decides
lease expiry, the grace after a host's will and the pruning of the request memory, so these tests
move time by calling it, never by sleeping. The broker is real; the agent is a bare connection that
speaks the wire through the one RPC client."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mqfleet import defaults
from mqfleet.coordinator.core import CoordinatorConfig
from mqfleet.coordinator.service import Coordinator
from mqfleet.coordinator.sweep import STATUS_INTERVAL_S
from mqfleet.mqtt.config import BrokerConfig
from mqfleet.mqtt.connection import Connection
from mqfleet.mqtt.rpc import RpcClient
from mqfleet.wire.requests import Health
from mqfleet.wire.topics import Role, Topics, Verb, encode
from tests.fixtures.common import Clock, wait_until
from tests.fixtures.fleet import manifest_text

LEASE_S = 6.0  # FAST_FLEET's lease_s and grace_s
GRACE_S = 2.0


@pytest.fixture
def coordinator(tmp_path: Path, broker_url: str, topic_prefix: str, clock: Clock) -> Iterator[Coordinator]:
    manifest = tmp_path / "fleet.toml"
    manifest.write_text(manifest_text({"name": "j1", "model": "ok", "mode": "m", "seed": 1}))
    config = CoordinatorConfig(
        manifest_path=manifest, db_path=tmp_path / "state.db", broker=BrokerConfig(url=broker_url),
        store_url=(tmp_path / "store").as_uri(), prefix=topic_prefix,
        # the sweep thread never runs in these tests: time moves only when a test calls tick()
        sweep_interval_s=3600.0,
    )
    coord = Coordinator(config, clock=clock)
    coord.start(wait_s=10)
    yield coord
    coord.stop()


class SimAgent:
    """An agent's wire presence: retained advert and status (its will says offline) and agent verbs."""

    def __init__(self, connect: Callable[..., Connection], topics: Topics, host: str) -> None:
        self.topics, self.host = topics, host
        self.conn = connect(topics.client_id(f"agent-{host}"), reply_prefix=topics.prefix,
                            will=(topics.status(host), encode({"state": "offline"}), True))
        self.rpc = RpcClient(self.conn, topics, host, timeout_s=5.0)
        advert = {"host": host, "hostname": host, "os": "linux", "python": "3.11", "cpu_cores": 4, "ram_gib": 16,
                  "cuda": False, "gpus": [], "slots": 1, "labels": []}
        self.conn.publish(topics.advert(host), advert, qos=1, retain=True)
        self.conn.publish(topics.status(host), {"state": "online"}, qos=1, retain=True)

    def claim(self) -> dict[str, Any]:
        def granted() -> dict[str, Any] | None:
            job = self.rpc.call_json(Verb.CLAIM).get("job")
            return dict(job) if job else None

        # the coordinator learns the advert asynchronously; until then a claim gets nothing or unknown_host
        return dict(wait_until(lambda: _ignoring_refusals(granted), timeout_s=10, what=f"a grant for {self.host}"))


def _ignoring_refusals(ask: Callable[[], dict[str, Any] | None]) -> dict[str, Any] | None:
    try:
        return ask()
    except Exception:
        return None


def _lease_expiry(coord: Coordinator, job_id: str) -> float | None:
    lease = coord.catalog.lease(job_id)
    return float(lease.expires_ts) if lease else None


def test_a_lease_expires_exactly_at_its_term_and_the_job_goes_back_to_pending(
    coordinator: Coordinator, mqtt_connect: Callable[..., Connection], clock: Clock
) -> None:
    agent = SimAgent(mqtt_connect, coordinator.topics, "h1")
    grant = agent.claim()
    job_id = grant["job"]["id"]
    granted_at = clock.now
    assert grant["lease_s"] == LEASE_S and grant["expires_ts"] == granted_at + LEASE_S

    assert coordinator.tick(granted_at + LEASE_S - 0.001) == []
    assert coordinator.catalog.job(job_id).status == "claimed"
    assert coordinator.tick(granted_at + LEASE_S) == [job_id]
    row = coordinator.catalog.job(job_id)
    assert (row.status, row.attempts) == ("pending", 1)
    assert [a.cause for a in coordinator.catalog.attempts(job_id)] == ["lost"]
    # the old lease is gone for good: its renewal is refused
    with pytest.raises(Exception, match="lease_lost"):
        agent.rpc.call_json(Verb.RENEW, job_id=job_id, lease_id=grant["lease_id"], progress=None)


def test_a_renewal_moves_the_expiry_so_the_same_tick_no_longer_expires_it(
    coordinator: Coordinator, mqtt_connect: Callable[..., Connection], clock: Clock
) -> None:
    agent = SimAgent(mqtt_connect, coordinator.topics, "h1")
    grant = agent.claim()
    job_id = grant["job"]["id"]
    clock.advance(LEASE_S - 1)
    reply = agent.rpc.call_json(Verb.RENEW, job_id=job_id, lease_id=grant["lease_id"], progress=None)
    assert reply["expires_ts"] == clock.now + LEASE_S
    assert coordinator.tick(grant["expires_ts"]) == []
    assert coordinator.catalog.job(job_id).status == "running"


def test_a_will_shortens_the_lease_to_the_grace_and_the_tick_after_the_grace_ends_the_attempt(
    coordinator: Coordinator, mqtt_connect: Callable[..., Connection], clock: Clock
) -> None:
    agent = SimAgent(mqtt_connect, coordinator.topics, "h1")
    grant = agent.claim()
    job_id = grant["job"]["id"]
    clock.advance(1.0)
    will_at = clock.now
    # what the broker publishes for a host that vanished: its retained will
    agent.conn.publish(coordinator.topics.status("h1"), {"state": "offline"}, qos=1, retain=True)
    wait_until(lambda: _lease_expiry(coordinator, job_id) == will_at + GRACE_S, timeout_s=10,
               what="the lease cut to the grace")

    assert coordinator.tick(will_at + GRACE_S - 0.001) == []
    assert coordinator.tick(will_at + GRACE_S) == [job_id]
    assert coordinator.catalog.job(job_id).status == "pending"


def test_a_host_back_inside_the_grace_keeps_its_job_by_renewing(
    coordinator: Coordinator, mqtt_connect: Callable[..., Connection], clock: Clock
) -> None:
    agent = SimAgent(mqtt_connect, coordinator.topics, "h1")
    grant = agent.claim()
    job_id = grant["job"]["id"]
    will_at = clock.now
    agent.conn.publish(coordinator.topics.status("h1"), {"state": "offline"}, qos=1, retain=True)
    wait_until(lambda: _lease_expiry(coordinator, job_id) == will_at + GRACE_S, timeout_s=10, what="the grace")
    clock.advance(GRACE_S / 2)
    agent.conn.publish(coordinator.topics.status("h1"), {"state": "online"}, qos=1, retain=True)
    agent.rpc.call_json(Verb.RENEW, job_id=job_id, lease_id=grant["lease_id"], progress=None, attempts=2)
    assert coordinator.tick(will_at + GRACE_S) == []
    assert coordinator.catalog.job(job_id).status == "running"


def test_the_request_memory_answers_a_redelivery_until_the_tick_prunes_it(
    coordinator: Coordinator, mqtt_connect: Callable[..., Connection], clock: Clock
) -> None:
    agent = SimAgent(mqtt_connect, coordinator.topics, "h1")
    grant = agent.claim()
    job_id = grant["job"]["id"]
    fields = {"job_id": job_id, "lease_id": grant["lease_id"], "progress": None}
    first = agent.rpc.send(Verb.RENEW, fields, request_id="renew-1")
    assert first["ok"] is True
    clock.advance(1.0)
    # a redelivery (same request id) is answered from memory: the same reply, not a second renewal
    assert agent.rpc.send(Verb.RENEW, fields, request_id="renew-1") == first
    key = f"{Role.AGENT.value}/h1/{Verb.RENEW.value}/renew-1"
    assert coordinator.state.remembered_reply(key) is not None

    # kept while younger than the memory's span, whenever the sweep looks
    coordinator.tick(clock.now + STATUS_INTERVAL_S)
    assert coordinator.state.remembered_reply(key) is not None
    # gone once older: the tick that publishes the status prunes it
    coordinator.tick(clock.now + defaults.REQUEST_MEMORY_S + 2 * STATUS_INTERVAL_S)
    assert coordinator.state.remembered_reply(key) is None


def test_health_is_the_typed_health_message_and_reads_back_whole(coordinator: Coordinator, clock: Clock) -> None:
    report = coordinator.health(clock.now).to_wire()
    health = Health.from_wire(report)
    assert set(report) == {f.name for f in dataclasses.fields(Health)}
    assert health.to_wire() == report
    # db_ok is what the database check found, not a constant (coordinator/health.py)
    assert (health.db_ok, health.checks["database"].ok) == (True, True)
    assert health.jobs_by_status["pending"] == 1 and health.role == "leader"

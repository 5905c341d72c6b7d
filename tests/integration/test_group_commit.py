"""Group commit: requests that arrive together run in one transaction, each in its own savepoint, and
are committed once; a refused request leaves the others' effects and replies as they would be alone,
and a redelivery inside the same group is answered once, from the reply memory (docs/RELIABILITY.md,
"Group commit"). The coordinator runs in-process, so a test can hold its lock while a burst of
requests queues up behind a first one; the broker and the database are real."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mqfleet.coordinator.core import CoordinatorConfig
from mqfleet.coordinator.service import Coordinator
from mqfleet.errors import ConstraintError, StateStoreError
from mqfleet.mqtt.config import BrokerConfig
from mqfleet.mqtt.connection import Connection
from mqfleet.mqtt.rpc import Reply, RpcClient
from mqfleet.wire.topics import Topics, Verb, encode
from tests.fixtures.common import Clock, wait_until
from tests.fixtures.fleet import manifest_text


@pytest.fixture
def coordinator(tmp_path: Path, broker_url: str, topic_prefix: str, clock: Clock) -> Iterator[Coordinator]:
    manifest = tmp_path / "fleet.toml"
    manifest.write_text(manifest_text(*({"name": f"j{i}", "model": "ok", "mode": "m", "seed": i} for i in (1, 2))))
    config = CoordinatorConfig(
        manifest_path=manifest, db_path=tmp_path / "state.db", broker=BrokerConfig(url=broker_url),
        store_url=(tmp_path / "store").as_uri(), prefix=topic_prefix, sweep_interval_s=3600.0,
    )
    coord = Coordinator(config, clock=clock)
    coord.start(wait_s=10)
    yield coord
    coord.stop()


def _agent(connect: Callable[..., Connection], topics: Topics, host: str) -> RpcClient:
    conn = connect(topics.client_id(f"agent-{host}"), reply_prefix=topics.prefix,
                   will=(topics.status(host), encode({"state": "offline"}), True))
    advert = {"host": host, "hostname": host, "os": "linux", "python": "3.11", "cpu_cores": 4, "ram_gib": 16,
              "cuda": False, "gpus": [], "slots": 1, "labels": []}
    conn.publish(topics.advert(host), advert, qos=1, retain=True)
    conn.publish(topics.status(host), {"state": "online"}, qos=1, retain=True)
    return RpcClient(conn, topics, host, timeout_s=10.0)


def _claim(rpc: RpcClient) -> dict[str, Any]:
    def granted() -> dict[str, Any] | None:
        try:
            job = rpc.call_json(Verb.CLAIM).get("job")
        except Exception:
            return None  # the advert may not have been recorded yet
        return dict(job) if job else None

    return dict(wait_until(granted, timeout_s=10, what=f"a grant for {rpc.client}"))


def _blocker(coord: Coordinator, connect: Callable[..., Connection]) -> RpcClient:
    """A third host, known to the coordinator (its advert handled), whose claim holds the dispatcher."""
    rpc = _agent(connect, coord.topics, "h3")
    wait_until(lambda: coord.is_known_host("h3"), timeout_s=10, what="h3's advert recorded")
    return rpc


def _burst(coord: Coordinator, blocker: Callable[[], Reply], sends: list[Callable[[], Reply]]) -> list[Reply]:
    """Send every request while the coordinator's lock is held, behind a first request (`blocker`) that holds
    the dispatcher at the lock meanwhile: the others wait in its inbox together and run as one group."""
    replies: list[Any] = [None] * len(sends)
    first = threading.Thread(target=blocker)

    def send(i: int) -> None:
        try:
            replies[i] = sends[i]()
        except Exception as e:  # kept, so the assertion names it
            replies[i] = e

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(sends))]
    with coord.lock:
        first.start()
        time.sleep(0.5)  # the blocker now waits for the lock
        for t in threads:
            t.start()
        time.sleep(1.0)  # every request reaches the coordinator's socket meanwhile
    for t in [first, *threads]:
        t.join(15)
    return replies


def test_requests_arriving_together_commit_once_and_a_refused_one_leaves_the_others_intact(
    coordinator: Coordinator, mqtt_connect: Callable[..., Connection], clock: Clock
) -> None:
    h1, h2 = (_agent(mqtt_connect, coordinator.topics, h) for h in ("h1", "h2"))
    g1, g2 = _claim(h1), _claim(h2)
    clock.advance(1.0)
    grouped_before = coordinator.grouped_requests
    blocker = _blocker(coordinator, mqtt_connect)
    replies = _burst(coordinator, lambda: blocker.send(Verb.CLAIM, {}), [
        lambda: h1.send(Verb.FAIL, {"job_id": g1["job"]["id"], "lease_id": "0" * 32, "cause": "shutdown"}),
        lambda: h2.send(Verb.FAIL, {"job_id": g2["job"]["id"], "lease_id": g2["lease_id"], "cause": "shutdown"}),
        lambda: h1.send(Verb.RENEW, {"job_id": g1["job"]["id"], "lease_id": g1["lease_id"]}),
    ])
    # the two hand-backs together (the renewal goes first, in a group of renewals only)
    assert coordinator.grouped_requests - grouped_before >= 2
    refused, handed_back, renewed = replies
    assert renewed["ok"] is True and renewed["expires_ts"] == clock.now + g1["lease_s"]
    assert refused["ok"] is False and refused["error"] == "lease_lost"
    assert handed_back["ok"] is True
    # each request's effects: the renewal moved the lease, the refusal touched nothing, the hand-back took
    lease = coordinator.catalog.lease(g1["job"]["id"])
    assert lease is not None and (lease.lease_id, lease.expires_ts) == (g1["lease_id"], clock.now + g1["lease_s"])
    assert coordinator.catalog.job(g2["job"]["id"]).status == "pending"
    assert coordinator.catalog.lease(g2["job"]["id"]) is None


def test_a_request_redelivered_inside_the_same_group_is_run_once_and_answered_alike(
    coordinator: Coordinator, mqtt_connect: Callable[..., Connection], clock: Clock
) -> None:
    h1 = _agent(mqtt_connect, coordinator.topics, "h1")
    grant = _claim(h1)
    job_id = grant["job"]["id"]
    back = {"job_id": job_id, "lease_id": grant["lease_id"], "cause": "shutdown"}
    grouped_before = coordinator.grouped_requests
    blocker = _blocker(coordinator, mqtt_connect)
    first, again = _burst(coordinator, lambda: blocker.send(Verb.CLAIM, {}), [lambda: h1.send(Verb.FAIL, back, request_id="hand-back-1"),
                                        lambda: h1.send(Verb.FAIL, back, request_id="hand-back-1")])
    assert coordinator.grouped_requests - grouped_before >= 2
    # run once: a second run would have found no lease and answered lease_lost
    assert first["ok"] is True and again == first
    assert [a.number for a in coordinator.catalog.attempts(job_id)] == [1]
    assert coordinator.catalog.job(job_id).status == "pending"


def test_a_group_whose_commit_fails_leaves_nothing_and_each_request_runs_again_when_resent(
    coordinator: Coordinator, mqtt_connect: Callable[..., Connection], monkeypatch: pytest.MonkeyPatch
) -> None:
    h1, h2 = (_agent(mqtt_connect, coordinator.topics, h) for h in ("h1", "h2"))
    g1, g2 = _claim(h1), _claim(h2)
    backs = [{"job_id": g["job"]["id"], "lease_id": g["lease_id"], "cause": "shutdown"} for g in (g1, g2)]
    grouped_before = coordinator.grouped_requests
    blocker = _blocker(coordinator, mqtt_connect)
    commit = coordinator.state.conn.commit
    failures: list[int] = []

    def commit_failing_once() -> None:
        # the group's commit: the one whose transaction has ended h1's lease (its hand-back ran in it)
        handed_back = coordinator.state.conn.execute("SELECT 1 FROM leases WHERE job_id = ?",
                                                     (g1["job"]["id"],)).fetchone() is None
        if handed_back and not failures:
            failures.append(1)
            coordinator.state.conn.rollback()  # what a failed COMMIT leaves behind, closed
            raise StateStoreError("disk I/O error (injected)")
        commit()

    monkeypatch.setattr(coordinator.state.conn, "commit", commit_failing_once)
    # the blocker is refused (a wrong lease): its transaction rolls back, only its refusal is remembered
    replies = _burst(coordinator, lambda: blocker.send(Verb.FAIL, {**backs[0], "lease_id": "0" * 32}), [
        lambda: h1.send(Verb.FAIL, backs[0], request_id="back-1"),
        lambda: h2.send(Verb.FAIL, backs[1], request_id="back-2"),
    ])
    assert failures and coordinator.grouped_requests == grouped_before
    assert [(r["ok"], r["error"]) for r in replies] == [(False, "internal")] * 2
    for g in (g1, g2):  # neither hand-back took: both leases are as granted
        lease = coordinator.catalog.lease(g["job"]["id"])
        assert lease is not None and lease.lease_id == g["lease_id"]
    # nothing was remembered: the same requests sent again run, and this time take effect
    assert h1.send(Verb.FAIL, backs[0], request_id="back-1")["ok"] is True
    assert h2.send(Verb.FAIL, backs[1], request_id="back-2")["ok"] is True
    assert coordinator.catalog.job(g1["job"]["id"]).status == coordinator.catalog.job(g2["job"]["id"]).status == "pending"


def test_a_database_fault_inside_a_request_is_answered_internal_naming_no_sql_and_is_not_remembered(
    coordinator: Coordinator, mqtt_connect: Callable[..., Connection], monkeypatch: pytest.MonkeyPatch
) -> None:
    h1 = _agent(mqtt_connect, coordinator.topics, "h1")
    grant = _claim(h1)
    back = {"job_id": grant["job"]["id"], "lease_id": grant["lease_id"], "cause": "shutdown"}

    def failing_fail(*args: object, **kwargs: object) -> None:
        raise ConstraintError("state database: UNIQUE constraint failed: leases.lease_id (injected)")

    with monkeypatch.context() as patch:
        patch.setattr(coordinator.leases, "fail", failing_fail)
        refused = h1.send(Verb.FAIL, back, request_id="back-1")
    assert (refused["ok"], refused["error"]) == (False, "internal")
    assert "constraint" not in refused["message"], "the database's text stays in the coordinator's log"
    # the fault was the coordinator's, not the request's: the same request sent again runs
    assert h1.send(Verb.FAIL, back, request_id="back-1")["ok"] is True
    assert coordinator.catalog.job(grant["job"]["id"]).status == "pending"

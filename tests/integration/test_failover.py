"""Recovery at the speed of detection: a dead host's job runs on an idle host within the grace, not at its next poll."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mqfleet.agent.daemon import IDLE_POLL_S
from mqfleet.errors import RequestTimeoutError
from mqfleet.local.broker import LocalBroker
from mqfleet.mqtt.config import BrokerConfig
from mqfleet.mqtt.connection import Connection
from tests.fixtures.broker import project_broker
from tests.fixtures.common import require_real_part, wait_until
from tests.fixtures.fleet import FAST_FLEET, Fleet, manifest_text

#: The fixture's agents run with --keepalive 2 and the coordinator with --sweep-interval 0.2.
KEEPALIVE_S = 2
SWEEP_S = 0.2


def test_killed_busy_agent_job_runs_on_the_idle_host_within_grace_detection_and_one_sweep(fleet: Fleet) -> None:
    # A long lease: only the will, the grace and a nudge can move the job this fast.
    settings = FAST_FLEET.replace("lease_s = 6", "lease_s = 120")
    fleet.write_manifest(manifest_text({"name": "long", "model": "ok", "mode": "m", "hyper": {"sleep": 60.0}},
                                       fleet=settings))
    fleet.start_coordinator()
    busy = fleet.start_agent("busy")
    client = fleet.client()
    wait_until(lambda: client.job("long").status == "running", timeout_s=30, what="the job to run on busy")
    fleet.start_agent("idle")
    wait_until(lambda: any(w.id == "idle" and w.online for w in client.workers()), timeout_s=30,
               what="the idle agent online")
    # The idle agent's first claim found nothing; from here only a nudge or its idle poll makes it claim.

    killed_at = time.monotonic()
    busy.signal(signal.SIGKILL)
    wait_until(lambda: (j := client.job("long")).status == "running" and j.host == "idle",
               timeout_s=IDLE_POLL_S + 30, interval_s=0.05, what="the job running on the idle host")
    failover_s = time.monotonic() - killed_at

    grace_s = 2.0
    bound_s = grace_s + 1.5 * KEEPALIVE_S + SWEEP_S + 2.0
    print(f"failover kill -9 -> running elsewhere: {failover_s:.2f}s (bound {bound_s:.1f}s, idle poll {IDLE_POLL_S:g}s)")
    # Wide margin for a loaded machine, yet well short of the idle poll that was the only way before.
    assert failover_s < bound_s + 6.0 < IDLE_POLL_S, failover_s
    attempts = client.job("long").attempts_detail
    assert [(a.host, a.cause) for a in attempts][:1] == [("busy", "lost")]


def _query_right_after_restart(fleet: Fleet, restart: Callable[[], object]) -> None:
    fleet.write_manifest(manifest_text({"name": "one", "model": "ok", "mode": "m"}))
    fleet.start_coordinator()
    restart()  # returns the moment the broker accepts connections, before the coordinator is back

    started = time.monotonic()
    result = fleet.cli("jobs", "--json", "--timeout", "10")
    elapsed_s = time.monotonic() - started
    print(f"query right after a broker restart answered in {elapsed_s:.2f}s")
    assert result.returncode == 0, result.stderr
    assert [j["name"] for j in json.loads(result.stdout)] == ["one"]


def test_a_query_sent_the_moment_a_restarted_broker_accepts_connections_is_answered(
        own_broker_fleet: Fleet, broker: LocalBroker) -> None:
    # Persistence on: the coordinator's session survives, so the broker queues the request for it.
    _query_right_after_restart(own_broker_fleet, broker.restart)


def test_a_query_is_answered_after_a_restart_of_a_broker_that_kept_no_session(
        tmp_path: Path, topic_prefix: str, file_store_url: str) -> None:
    # Persistence off: nobody is subscribed when the query arrives; the client sends it again.
    require_real_part(LocalBroker.available(), "mosquitto")
    with project_broker(tmp_path / "mosquitto", persistence=False) as broker:
        fleet = Fleet(tmp_path, broker.url, topic_prefix, file_store_url, {})
        try:
            _query_right_after_restart(fleet, broker.restart)
        finally:
            fleet.close()


def test_a_request_that_timed_out_while_the_broker_was_down_is_never_delivered_later(
        tmp_path: Path, topic_prefix: str) -> None:
    require_real_part(LocalBroker.available(), "mosquitto")
    with project_broker(tmp_path / "mosquitto", persistence=False) as broker:
        seen: list[str] = []
        config = BrokerConfig(url=broker.url)
        responder = Connection(config, client_id="responder", reply_prefix=topic_prefix)
        responder.subscribe(f"{topic_prefix}/rpc/#", lambda m: seen.append(m.topic))
        requester = Connection(config, client_id="requester", reply_prefix=topic_prefix)
        try:
            responder.start()
            requester.start()
            broker.stop()
            with pytest.raises(RequestTimeoutError):
                requester.request(f"{topic_prefix}/rpc/query/requester/jobs", {"request_id": "late"}, timeout_s=1.0)
            broker.start()
            wait_until(lambda: requester.connected and responder.connected, timeout_s=30, what="both reconnected")
            # Fresh publishes go through (sent until the responder has resubscribed and sees one); the
            # timed-out request must not come along with them.
            marker = f"{topic_prefix}/rpc/query/requester/marker"

            def marker_seen() -> bool:
                if not seen:
                    requester.publish(marker, b"{}")
                return bool(seen)

            wait_until(marker_seen, timeout_s=10, interval_s=0.2, what="the marker")
            # Anything paho held back goes out at the reconnect, before any new publish, and the broker keeps
            # one client's order: had the request come along, it would be here before the marker.
            assert set(seen) == {marker}, seen
        finally:
            requester.stop(timeout_s=2)
            responder.stop(timeout_s=2)


def test_nudges_name_only_the_idle_hosts_that_can_take_the_job(fleet: Fleet) -> None:
    pinned = {"model": "ok", "mode": "m", "allowed_hosts": ["beta"]}
    fleet.write_manifest(manifest_text({"name": "first", **pinned}, {"name": "later", **pinned, "seed": 2}))
    fleet.start_coordinator()
    client = fleet.client()
    assert fleet.cli("drain", "beta").returncode == 0
    assert fleet.cli("cancel", "later").returncode == 0
    nudges: list[dict[str, object]] = []
    watcher = Connection(BrokerConfig(url=fleet.broker_url), client_id=f"watch-{time.monotonic_ns()}",
                         reply_prefix=fleet.prefix)
    watcher.subscribe(f"{fleet.prefix}/work", lambda m: nudges.append(m.json()), qos=0)
    watcher.start()
    try:
        fleet.start_agent("alpha")
        fleet.start_agent("beta")
        wait_until(lambda: sum(w.online for w in client.workers()) == 2, timeout_s=30, what="both agents online")
        assert client.job("first").status == "pending"  # beta drains, alpha is not allowed

        assert fleet.cli("undrain", "beta").returncode == 0
        fleet.wait_for_status({"first": "completed"}, timeout_s=30)
        assert client.job("first").host == "beta"
        assert {"reason": "undrain", "hosts": ["beta"]}.items() <= next(
            n for n in nudges if n.get("reason") == "undrain").items()

        # requeued: claimable again, and of the two idle hosts only beta may take it
        assert fleet.cli("requeue", "later").returncode == 0
        fleet.wait_for_status({"later": "completed"}, timeout_s=30)
        requeue = next(n for n in nudges if n.get("reason") == "requeue")
        assert requeue["hosts"] == ["beta"] and requeue["jobs"] == [client.job("later").id]
    finally:
        watcher.stop(timeout_s=2)

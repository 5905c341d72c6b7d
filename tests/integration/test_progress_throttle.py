"""Progress reaches watchers through the retained job state at most once a second per job, the latest winning."""

from __future__ import annotations

import threading
import uuid
from typing import Any

from mqfleet.mqtt.config import BrokerConfig
from mqfleet.mqtt.connection import Connection
from mqfleet.mqtt.inbox import Message
from mqfleet.wire.topics import Verb
from tests.fixtures.common import wait_until
from tests.fixtures.fleet import Fleet, manifest_text
from tests.fixtures.sim_agent import SimAgent

RENEWALS = 30


def test_a_burst_of_progress_renewals_republishes_the_state_about_once_a_second_and_ends_on_the_last(
    fleet: Fleet,
) -> None:
    fleet.write_manifest(manifest_text({"name": "busy", "model": "ok", "mode": "m"},
                                       extra='[[hosts]]\nid = "sim"\n'))
    fleet.start_coordinator()
    agent = SimAgent(fleet.broker_url, fleet.prefix, "sim")
    grant = wait_until(lambda: agent.call(Verb.CLAIM, timeout_s=5).get("job"), timeout_s=30, what="a lease")
    job_id = grant["job"]["id"]
    states: list[dict[str, Any]] = []
    lock = threading.Lock()

    def on_state(msg: Message) -> None:
        if not msg.retain:
            with lock:
                states.append(msg.json())

    watcher = Connection(BrokerConfig(url=fleet.broker_url), client_id=f"watch-{uuid.uuid4().hex[:8]}",
                         reply_prefix=fleet.prefix)
    watcher.subscribe(f"{fleet.prefix}/jobs/{job_id}/state", on_state)
    watcher.start(wait_s=10)
    agent.call(Verb.RENEW, timeout_s=5, job_id=job_id, lease_id=grant["lease_id"])  # claimed -> running
    wait_until(lambda: any(s["status"] == "running" for s in states), timeout_s=10, what="the running state")
    with lock:
        states.clear()
    for i in range(1, RENEWALS + 1):  # far faster than once a second
        reply = agent.call(Verb.RENEW, timeout_s=5, job_id=job_id, lease_id=grant["lease_id"],
                           progress={"progress": i / RENEWALS, "step": i})
        assert reply["ok"], reply

    def last_progress_published() -> bool:
        with lock:
            return bool(states) and (states[-1].get("progress") or {}).get("step") == RENEWALS

    wait_until(last_progress_published, timeout_s=10, what="the last progress in the retained state")
    with lock:
        published = len(states)
    assert published < RENEWALS // 3, f"{published} states published for {RENEWALS} progress renewals"
    watcher.stop()
    agent.stop()

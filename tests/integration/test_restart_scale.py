"""A coordinator restarted over many jobs answers at once and repairs stale retained states in the background.

The coordinator is killed (-9) just after a reload changed every job's priority,
so almost none of the new states reached the broker. The restarted one must
answer an agent's renewals within a second while it is still republishing, and
in the end every retained `jobs/{id}/state` must agree with the database.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from mqfleet.errors import RequestTimeoutError
from mqfleet.mqtt.config import BrokerConfig
from mqfleet.mqtt.connection import Connection
from mqfleet.mqtt.inbox import Message
from mqfleet.wire.topics import Verb
from tests.fixtures.common import wait_until
from tests.fixtures.fleet import Fleet, manifest_text
from tests.fixtures.sim_agent import SimAgent

#: Enough jobs that republishing them all takes the restarted coordinator several seconds.
N_JOBS = 10_000
HOST = "sim-renewer"
FLEET = "[fleet]\nmax_attempts = 3\nlease_s = 30\ngrace_s = 10\n"


def _manifest(priority: int) -> str:
    tags = ", ".join(f'"t{i}"' for i in range(N_JOBS))
    sweep = f'[[sweeps]]\nname = "grid"\nmodel = "ok"\nmode = "m"\npriority = {priority}\nhyper = {{ tag = [{tags}] }}\n'
    return manifest_text(fleet=FLEET, extra=f'[[hosts]]\nid = "{HOST}"\n\n{sweep}')


class RetainedStates:
    """The latest `jobs/+/state` per job, and how many arrived live (not as the retained snapshot)."""

    def __init__(self, fleet: Fleet) -> None:
        self.lock = threading.Lock()
        self.latest: dict[str, dict[str, Any]] = {}
        self.live = 0
        self.conn = Connection(BrokerConfig(url=fleet.broker_url), client_id=f"watch-{uuid.uuid4().hex[:8]}",
                               reply_prefix=fleet.prefix)
        self.conn.subscribe(f"{fleet.prefix}/jobs/+/state", self._on_state)
        self.conn.start(wait_s=10)

    def _on_state(self, msg: Message) -> None:
        state = msg.json()
        with self.lock:
            self.latest[str(state["id"])] = state
            self.live += 0 if msg.retain else 1


def test_restart_with_many_jobs_renews_at_once_while_stale_states_are_republished(fleet: Fleet) -> None:
    fleet.write_manifest(_manifest(priority=0))
    coordinator = fleet.start_coordinator()
    agent = SimAgent(fleet.broker_url, fleet.prefix, HOST)
    grant = wait_until(lambda: agent.call(Verb.CLAIM, timeout_s=5).get("job"), timeout_s=30, what="a lease")
    lease = {"job_id": grant["job"]["id"], "lease_id": grant["lease_id"]}

    # Every job's priority changes; the coordinator dies before it could republish (most of) them.
    fleet.write_manifest(_manifest(priority=5))
    fleet.client(timeout_s=60).call_json(Verb.RELOAD)
    coordinator.kill()

    states = RetainedStates(fleet)
    fleet.start_coordinator(wait=False)
    started = time.monotonic()

    def first_renewal() -> bool:
        try:
            return bool(agent.call(Verb.RENEW, timeout_s=1.0, **lease).get("ok"))
        except RequestTimeoutError:
            return False

    wait_until(first_renewal, timeout_s=30, what="the restarted coordinator to answer a renewal")
    answered_after_s = time.monotonic() - started
    # Once it answers, each renewal is answered within a second though republishing goes on.
    for _ in range(5):
        reply = agent.call(Verb.RENEW, timeout_s=1.0, **lease)
        assert reply["ok"], reply
        with states.lock:
            republished = states.live
        assert republished < N_JOBS, f"all {republished} states were republished before the renewal was answered"
        time.sleep(0.1)

    listing = fleet.client(timeout_s=30).jobs()
    assert len(listing) == N_JOBS and all(j["priority"] == 5 for j in listing)

    def all_states_agree() -> bool:
        with states.lock:
            latest = dict(states.latest)
        return all((latest.get(str(j["id"])) or {}).get("priority") == 5
                   and latest[str(j["id"])]["status"] == j["status"] for j in listing)

    wait_until(all_states_agree, timeout_s=120, interval_s=0.5, what="every retained state to agree with the database")
    # A restart republishes only what changed: the stale states, not every job twice.
    assert states.live <= N_JOBS + 10, f"{states.live} states republished for {N_JOBS} jobs"
    print(f"first renewal answered {answered_after_s:.2f} s after the restart began")
    agent.stop()
    states.conn.stop()

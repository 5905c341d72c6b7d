"""Regression tests for faults the chaos soak (mqfleet.soak) found; each names the fault it replays."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.fixtures.fleet import Fleet, manifest_text

#: Grace long enough for a reconnect (paho backs off 1 s) plus one renewal, on a loaded machine.
FLEET_WITH_GRACE_3 = """\
[fleet]
max_attempts = 3
lease_s = 6
grace_s = 3
"""


@pytest.mark.timeout(120)
def test_host_back_inside_grace_keeps_its_job_when_a_renewal_was_lost_while_the_coordinator_was_down(
    own_broker_fleet: Fleet, broker: Any
) -> None:
    # Found by the soak (seed 3): a renewal sent while the coordinator was down is never answered, and the
    # renewer used to wait the full 10 s request timeout for it. A broker restart then (will -> lease cut to
    # the grace) expired the lease although the agent reconnected within a second.
    fleet = own_broker_fleet
    fleet.write_manifest(manifest_text({"name": "long", "model": "ok", "hyper": {"sleep": 6.0}}, fleet=FLEET_WITH_GRACE_3))
    fleet.start_coordinator()
    fleet.start_agent("a1")
    fleet.wait_for_status("running", timeout_s=30)

    assert fleet.coordinator is not None
    fleet.coordinator.kill()
    time.sleep(2.5)  # at least one renewal (every 2 s) goes out while nobody answers
    fleet.start_coordinator()
    broker.restart()

    fleet.wait_for_status("completed", timeout_s=60)
    detail = fleet.client().job("long").attempts_detail
    assert [a.cause for a in detail if a.cause] == [], detail
    assert len(detail) == 1, detail

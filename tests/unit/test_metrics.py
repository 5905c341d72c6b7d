"""The metrics endpoint's state collector against a real SQLite file and a real PostgreSQL database:
its counts agree with the state, and a scrape reads through its own connection, never the state's lock."""

from __future__ import annotations

import threading

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mqfleet.coordinator.metrics import CoordinatorMetrics
from mqfleet.lifecycle import Cause
from tests.fixtures.common import held_by_another_thread
from tests.fixtures.state import CoordinatorState
from tests.unit.test_db import T0, bring_online, job, manifest


def _samples(metrics: CoordinatorMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_scrape_counts_the_state_through_its_own_connection_while_the_state_lock_is_held(state_target: str) -> None:
    db = CoordinatorState(state_target)
    db.apply_manifest(manifest(job("a"), job("b"), job("c")), T0)
    bring_online(db, "h1")
    grant = db.claim("h1", T0)
    assert grant is not None
    db.fail(grant.job.id, grant.lease_id, "h1", Cause.CANCELLED, exit_code=None, output_tail="", error="", now=T0)
    by_status = {str(r[0]): int(r[1]) for r in db.state.read("SELECT status, COUNT(*) FROM jobs GROUP BY status")}
    assert sum(by_status.values()) == 3 and by_status.get("pending") == 2
    metrics = CoordinatorMetrics(db.state, last_sweep_ts=lambda: T0, clock=lambda: T0 + 2)
    metrics.observe_request("claim", {"ok": True}, 0.002)
    metrics.observe_request("claim", {"ok": True}, 0.003)
    metrics.observe_request("claim", {"ok": False, "error": "lease_lost"}, 0.001)
    metrics.observe_request("nonsense", {"ok": True}, 0.001)
    scraped: list[dict[tuple[str, tuple[tuple[str, str], ...]], float]] = []
    try:
        with held_by_another_thread(db.state.lock):
            scraper = threading.Thread(target=lambda: scraped.append(_samples(metrics)))
            scraper.start()
            scraper.join(10)
            assert not scraper.is_alive(), "the scrape waited for the state lock"
    finally:
        metrics.stop()
        db.close()
    samples = scraped[0]
    for status in ("pending", "claimed", "running", "completed", "failed", "cancelled"):
        assert samples[("mqfleet_jobs", (("status", status),))] == by_status.get(status, 0), status
    assert samples[("mqfleet_hosts_online", ())] == 1
    assert samples[("mqfleet_attempts_ended_total", (("cause", "cancelled"),))] == 1
    assert samples[("mqfleet_sweep_lag_seconds", ())] == 2
    assert samples[("mqfleet_requests_total", (("outcome", "ok"), ("verb", "claim")))] == 2
    assert samples[("mqfleet_requests_total", (("outcome", "lease_lost"), ("verb", "claim")))] == 1
    assert samples[("mqfleet_request_seconds_count", (("verb", "claim"),))] == 3
    assert not any(labels and ("verb", "nonsense") in labels for _, labels in samples)

"""Claims filter allowed_hosts and host policy before reading a spec: a host never reads the jobs it may not run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mqfleet.coordinator.tables.rows import spec_from_json
from mqfleet.manifest.types import HostPolicy
from tests.fixtures.state import CoordinatorState
from tests.unit.test_db import T0, bring_online, claimed, job, manifest


@pytest.fixture
def db(state_target: str) -> Iterator[CoordinatorState]:
    database = CoordinatorState(state_target)
    yield database
    database.close()


def _parsed_specs() -> int:
    return spec_from_json.cache_info().misses + spec_from_json.cache_info().hits


def test_jobs_limited_to_another_host_are_never_read_by_a_claim(db: CoordinatorState) -> None:
    limited = [job(f"a{i}", allowed_hosts=("host-a",), priority=5) for i in range(300)]
    db.apply_manifest(manifest(*limited, job("open")), T0)
    bring_online(db, "host-a")
    bring_online(db, "host-b")
    before = _parsed_specs()
    assert claimed(db, "host-b").job.name == "open"
    assert _parsed_specs() - before == 1  # the open job's, one per requirement set read: not 300 specs parsed
    assert db.claim("host-b", T0) is None
    assert claimed(db, "host-a").job.name == "a0"


def test_open_and_limited_jobs_are_merged_in_rank_order(db: CoordinatorState) -> None:
    jobs = [job("open-low"), job("mine-high", allowed_hosts=("h",), priority=3), job("open-mid", priority=2),
            job("mine-mid", allowed_hosts=("h", "x"), priority=2), job("theirs-top", allowed_hosts=("x",), priority=9)]
    db.apply_manifest(manifest(*jobs, hosts=(HostPolicy(id="h", slots=10),)), T0)
    bring_online(db, "h")
    # equal priority: the older job (open-mid was added before mine-mid) first
    assert [claimed(db, "h").job.name for _ in range(4)] == ["mine-high", "open-mid", "mine-mid", "open-low"]
    assert db.claim("h", T0) is None


def test_a_host_whose_policy_denies_every_model_claims_nothing_without_reading_a_job(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(*(job(f"j{i}") for i in range(50)), hosts=(HostPolicy(id="h", deny_jobs=("*",)),)), T0)
    bring_online(db, "h")
    before = _parsed_specs()
    assert db.claim("h", T0) is None
    assert _parsed_specs() == before


def test_a_reload_that_drops_allowed_hosts_opens_the_job_to_every_host(db: CoordinatorState) -> None:
    db.apply_manifest(manifest(job("j", allowed_hosts=("x",))), T0)
    bring_online(db, "h")
    assert db.claim("h", T0) is None
    db.apply_manifest(manifest(job("j")), T0 + 1)
    assert claimed(db, "h", T0 + 1).job.name == "j"

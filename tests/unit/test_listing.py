"""Keyset pages of the jobs listing: every job once, in order, at any depth, with filters."""

from __future__ import annotations

import fnmatch

import pytest

from mqfleet.coordinator.tables.listing import JobFilter
from mqfleet.errors import BadRequestError
from tests.fixtures.state import CoordinatorState
from tests.unit.test_db import T0, job, manifest

NAMES = [f"{'lr' if i % 3 else 'depth'}-{i}" for i in range(257)]


@pytest.fixture
def db(state_target: str) -> CoordinatorState:
    database = CoordinatorState(state_target)
    database.apply_manifest(manifest(*(job(n) for n in NAMES)), T0)
    return database


def _walk(db: CoordinatorState, where: JobFilter, *, limit: int, newest_first: bool = False) -> list[str]:
    names: list[str] = []
    after: int | None = None
    for _ in range(1000):
        page, after, total = db.job_page(where, limit=limit, after=after, newest_first=newest_first)
        assert len(page) <= limit
        names += [str(r["name"]) for r in page]
        if after is None:
            return names
    raise AssertionError("the keyset walk never ended")


@pytest.mark.parametrize("limit", [1, 7, 256, 257, 2000])
def test_keyset_pages_yield_every_job_once_in_creation_order(db: CoordinatorState, limit: int) -> None:
    assert _walk(db, JobFilter(), limit=limit) == NAMES
    assert _walk(db, JobFilter(), limit=limit, newest_first=True) == NAMES[::-1]


def test_a_page_says_how_many_jobs_match_and_rows_keep_the_wire_fields(db: CoordinatorState) -> None:
    page, after, total = db.job_page(JobFilter(), limit=10)
    assert total == len(NAMES) and after is not None
    assert set(page[0]) == set(db.jobs()[0].to_wire()) and "seq" not in page[0]
    assert page == [j.to_wire() for j in db.jobs()[:10]]


def test_name_glob_and_status_filter_in_sql_like_a_shell_glob(db: CoordinatorState) -> None:
    for glob in ("depth-*", "lr-1?", "lr-[12]*", "lr-[!12]*", "nothing*"):
        expected = [n for n in NAMES if fnmatch.fnmatchcase(n, glob)]
        assert _walk(db, JobFilter(name_glob=glob), limit=5) == expected, glob
        assert db.job_page(JobFilter(name_glob=glob), limit=1)[2] == len(expected)
    assert _walk(db, JobFilter(status="pending", name_glob="depth-*"), limit=50) == [n for n in NAMES if n.startswith("depth")]
    assert _walk(db, JobFilter(status="completed"), limit=50) == []


def test_position_pages_still_serve_clients_that_send_an_offset(db: CoordinatorState) -> None:
    page, after, _ = db.job_page(JobFilter(), limit=10, offset=250)
    assert [r["name"] for r in page] == NAMES[250:257] and after is None


def test_unknown_status_and_oversized_glob_are_refused_by_name() -> None:
    with pytest.raises(BadRequestError, match="unknown status 'done'"):
        JobFilter(status="done")
    with pytest.raises(BadRequestError, match="field 'name'"):
        JobFilter(name_glob="x" * 201)

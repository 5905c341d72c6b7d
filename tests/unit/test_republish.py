"""Retained states are republished only when they differ from what was last published; the manifest memo."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mqfleet.coordinator.republish import StateRepublisher, record_published, state_page
from mqfleet.coordinator.tables.manifest_memo import manifest_digest
from mqfleet.coordinator.tables.rows import manifest_rows
from mqfleet.wire.topics import JsonObject, decode
from tests.fixtures.common import wait_until
from tests.fixtures.state import CoordinatorState
from tests.unit.test_db import T0, job, manifest

N = 450


@pytest.fixture
def db(tmp_path: Path) -> CoordinatorState:
    state = CoordinatorState(tmp_path / "state.db")
    state.apply_manifest(manifest(*(job(f"j{i}") for i in range(N))), T0)
    return state


def _republisher(db: CoordinatorState, sent: list[tuple[str, bytes]]) -> StateRepublisher:
    return StateRepublisher(
        lock=db.state.lock, read_page=lambda after, limit: state_page(db.state, after, limit),
        write_digests=lambda digests: record_published(db.state, digests),
        publish=lambda topic, data: sent.append((topic, data)), topic_of=lambda job_id: f"jobs/{job_id}/state",
        publish_events=lambda limit: (0, False), queued=lambda: 0,
    )


def _sweep(rep: StateRepublisher) -> None:
    rep.start()
    try:
        rep.request_sweep()
        wait_until(lambda: not rep.is_sweeping(), timeout_s=30, what="the sweep to finish")
    finally:
        rep.stop()


def test_first_sweep_publishes_every_state_and_a_second_one_publishes_nothing(db: CoordinatorState) -> None:
    sent: list[tuple[str, bytes]] = []
    _sweep(_republisher(db, sent))
    assert len(sent) == N and len({topic for topic, _ in sent}) == N
    assert {decode(data)["id"] for _, data in sent} == {j.id for j in db.catalog.jobs()}
    again: list[tuple[str, bytes]] = []
    _sweep(_republisher(db, again))  # a restart: digests come from the database
    assert again == []


def test_a_sweep_republishes_only_the_states_that_changed_since_published(db: CoordinatorState) -> None:
    _sweep(_republisher(db, []))
    changed = db.catalog.jobs()[7].id
    with db.transaction() as c:
        c.execute("UPDATE jobs SET priority = 9 WHERE id = ?", (changed,))
    sent: list[tuple[str, bytes]] = []
    _sweep(_republisher(db, sent))
    assert [decode(data)["id"] for _, data in sent] == [changed]
    assert decode(sent[0][1])["priority"] == 9


def test_a_state_published_on_the_request_path_is_not_republished_by_the_sweep(db: CoordinatorState) -> None:
    sent: list[tuple[str, bytes]] = []
    rep = _republisher(db, sent)
    with db.state.lock:
        for row in db.catalog.jobs():
            rep.publish_state(row.id, row.to_wire())
    assert len(sent) == N
    _sweep(rep)
    assert len(sent) == N


def test_manifest_memo_gives_back_the_header_for_the_same_text_and_path_only(db: CoordinatorState) -> None:
    m = manifest(job("a"), job("b"))
    text = "[fleet]\n# the file's text\n"
    object.__setattr__(m, "text", text)
    object.__setattr__(m, "source", "/etc/fleet.toml")
    db.catalog.apply_manifest(manifest_rows(m), T0)
    recalled = db.catalog.resume_manifest(manifest_digest(text, "/etc/fleet.toml"))
    assert recalled is not None
    header, jobs = recalled
    assert jobs == 2 and header.jobs == () and header.fleet == m.fleet and header.trainers == m.trainers
    assert db.catalog.resume_manifest(manifest_digest(text + " ", "/etc/fleet.toml")) is None
    assert db.catalog.resume_manifest(manifest_digest(text, "/elsewhere.toml")) is None


def test_lock_is_held_per_page_so_others_get_it_between_pages(db: CoordinatorState) -> None:
    holds: list[int] = []
    lock = db.state.lock
    rep = _republisher(db, [])
    real_read = rep._read_page

    def read(after: int, limit: int) -> list[tuple[int, JsonObject, str | None]]:
        # the page is read with the lock held, and released before the next page
        holds.append(threading.get_ident())
        assert lock._is_owned()  # type: ignore[attr-defined]
        return real_read(after, limit)

    rep._read_page = read
    _sweep(rep)
    assert len(holds) == N // 200 + 1

"""Several coordinators on one PostgreSQL database, real mosquitto, real agents and trainers: kill -9 of the
leader and of the other, each restarted, while jobs stream through; and the bad --db inputs a user meets."""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mqfleet.errors import RemoteError
from mqfleet.local.postgres import LocalPostgres
from mqfleet.local.process import Proc
from mqfleet.mqtt.config import BrokerConfig
from mqfleet.mqtt.connection import Connection
from mqfleet.wire.topics import Verb
from tests.fixtures.common import wait_until
from tests.fixtures.fleet import ROOT, Fleet, manifest_text

#: Long enough that a loaded test machine never loses a live host's lease, short enough to matter.
FLEET = """\
[fleet]
max_attempts = 3
lease_s = 12
grace_s = 3
"""


def _jobs(n: int) -> list[dict[str, Any]]:
    return [{"name": f"j{i:02d}", "model": "ok", "mode": "m", "hyper": {"sleep": 1.5, "tag": f"t{i}"}} for i in range(n)]


def _start(fleet: Fleet, url: str, name: str, password: str) -> Proc:
    argv = [sys.executable, "-m", "mqfleet", "coordinator", "--manifest", str(fleet.manifest_path), "--db", url,
            "--store", fleet.store_url, "--sweep-interval", "0.2", "--client-id", name]
    return Proc(name, argv, {**fleet.env, "MQFLEET_DB_PASSWORD": password}, fleet.dir / f"{name}.log", cwd=ROOT)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.username}@{parts.hostname}:{parts.port}").geturl()


def _wait_leader(fleet: Fleet, leader: str, after: float) -> float:
    """Seconds from `after` until `leader` answers health as the leader."""
    client = fleet.client(timeout_s=1.0)

    def leads() -> bool:
        try:
            health = client.health()
        except Exception:
            return False
        return bool(health.coordinator == leader and health.role == "leader")

    wait_until(leads, timeout_s=60, interval_s=0.1, what=f"{leader} to lead")
    return time.monotonic() - after


def test_two_coordinators_survive_kill_9_of_each_with_every_job_done_exactly_once(
    fleet: Fleet, postgres: LocalPostgres, postgres_url: str,
) -> None:
    url = _without_password(postgres_url)  # the password comes from MQFLEET_DB_PASSWORD
    fleet.write_manifest(manifest_text(*_jobs(12), fleet=FLEET))
    events: list[dict[str, Any]] = []
    watcher = Connection(BrokerConfig(url=fleet.broker_url), client_id=f"watch-{time.monotonic_ns()}")
    watcher.subscribe(f"{fleet.prefix}/events", lambda m: events.append(json.loads(m.payload)))
    watcher.start(wait_s=10)
    procs = {name: _start(fleet, url, name, postgres.password) for name in ("c1", "c2")}
    client = fleet.client(timeout_s=2.0)
    wait_until(lambda: len([c for c in _health(client).get("coordinators", []) if c["alive"]]) == 2,
               timeout_s=60, what="both coordinators in the coordinators table")
    for host in ("a1", "a2", "a3"):
        fleet.start_agent(host)
    wait_until(lambda: sum(j["status"] == "completed" for j in _jobs_now(client)) >= 2, timeout_s=90,
               what="the first completions")

    moves: list[float] = []
    for round_ in range(2):
        health = _health(client)
        leader = next(c["id"] for c in health["coordinators"] if c["alive"] and c["role"] == "leader")
        other = "c2" if leader == "c1" else "c1"
        killed = time.monotonic()
        procs[leader].signal(signal.SIGKILL)
        moves.append(_wait_leader(fleet, other, killed))
        # a change of hands is the one lead message an operator is warned of
        assert re.search(rf"WARNING .*coordinator {other}: took the lead from {leader} ", procs[other].log()), procs[other].log()
        if round_ == 0:
            # more work while one coordinator is down: the survivor reloads, the restarted one follows
            fleet.write_manifest(manifest_text(*_jobs(20), fleet=FLEET))
            assert fleet.cli("reload").returncode == 0
        procs[leader] = _start(fleet, url, leader, postgres.password)
        def is_follower(name: str = leader) -> bool:
            return any(c["id"] == name and c["alive"] and c["role"] == "follower"
                       for c in _health(client).get("coordinators", []))

        wait_until(is_follower, timeout_s=60, what=f"{leader} back as a follower")
        time.sleep(3)  # let jobs flow through both before the next kill
    print(f"leader moved after kill -9 in {', '.join(f'{m:.2f}s' for m in moves)}")

    try:
        jobs = fleet.wait_for_status("completed", timeout_s=240)
        assert len(jobs) == 20
        for job in jobs:
            attempts = client_attempts(fleet, job["id"])
            assert [a["outcome"] for a in attempts].count("completed") == 1, (job["name"], attempts)
            # a live host's lease is never lost: no attempt ended as lost
            assert all(a["cause"] != "lost" for a in attempts), (job["name"], attempts)
    finally:
        for proc in procs.values():
            proc.stop()
        watcher.stop()
    completions = Counter(e["job_id"] for e in events if e.get("to") == "completed")
    assert not [j for j, n in completions.items() if n > 1], completions  # each change published once
    assert all(m < 15 for m in moves), moves


def _jobs_now(client: Any) -> list[dict[str, Any]]:
    try:
        return list(client.jobs())
    except Exception:
        return []


def client_attempts(fleet: Fleet, job_id: str) -> list[dict[str, Any]]:
    return [a.to_wire() for a in fleet.client().job(job_id).attempts_detail]


def test_bad_db_urls_exit_2_naming_the_url_without_its_password_and_the_fix(
    fleet: Fleet, postgres: LocalPostgres, tmp_path: Path,
) -> None:
    fleet.write_manifest(manifest_text(*_jobs(1)))
    wrong = postgres.url().replace(f":{postgres.password}@", ":not-it@")
    run = fleet.cli("coordinator", "--manifest", str(fleet.manifest_path), "--db", wrong, "--store", fleet.store_url)
    assert run.returncode == 2, run.stderr
    assert "not-it" not in run.stderr and "postgresql://mqfleet:***@127.0.0.1" in run.stderr
    assert "password authentication failed" in run.stderr and "MQFLEET_DB_PASSWORD" in run.stderr
    gone = "postgresql://u:p@127.0.0.1:9/x"
    run = fleet.cli("coordinator", "--manifest", str(fleet.manifest_path), "--db", gone, "--store", fleet.store_url)
    assert run.returncode == 2 and "postgresql://u:***@127.0.0.1:9/x" in run.stderr and "listen_addresses" in run.stderr
    run = fleet.cli("coordinator", "--manifest", str(fleet.manifest_path), "--db", postgres.url())
    assert run.returncode == 2 and "needs --store" in run.stderr


def test_migrate_from_sqlite_copies_a_stopped_fleet_with_counts_checked(
    fleet: Fleet, postgres: LocalPostgres, postgres_url: str,
) -> None:
    fleet.write_manifest(manifest_text(*_jobs(3)[:2], fleet=FLEET))
    fleet.start_coordinator()
    fleet.start_agent("a1")
    before = fleet.wait_for_status("completed", timeout_s=90)
    fleet.agents.pop("a1").stop()
    assert fleet.coordinator is not None
    fleet.coordinator.stop()

    target = postgres_url  # an empty database
    argv = ["coordinator", "--manifest", str(fleet.manifest_path), "--db", target, "--store", fleet.store_url,
            "--migrate-from", f"sqlite:{fleet.db_path}", "--client-id", "pg"]
    migrated = Proc("migrated", [sys.executable, "-m", "mqfleet", *argv], fleet.env, fleet.dir / "migrated.log",
                    cwd=ROOT)
    client = fleet.client(timeout_s=2.0)
    try:
        wait_until(lambda: _answers(client), timeout_s=60, what="the migrated coordinator to answer")
        assert "migrated: " in migrated.log() and "jobs 2" in migrated.log()
        after = {j["id"]: (j["status"], j["artifact"]) for j in client.jobs()}
        assert after == {j["id"]: (j["status"], j["artifact"]) for j in before}
        assert len(client.call_json(Verb.ARTIFACTS)["artifacts"]) == 2
        health = client.health()
        assert health.state_store == "postgresql" and health.role == "leader"
    finally:
        migrated.stop()
    again = fleet.cli(*argv)  # into a database that now holds the fleet: refused, nothing written
    assert again.returncode == 2 and "already holds a fleet (2 jobs)" in again.stderr


def _health(client: Any) -> dict[str, Any]:
    """The health reply, or {} while no coordinator answers (one is being killed or started)."""
    try:
        health: dict[str, Any] = client.health().to_wire()
        return health
    except Exception:
        return {}


def _answers(client: Any) -> bool:
    try:
        client.health()
        return True
    except Exception:
        return False



def test_a_postgresql_outage_is_answered_unavailable_and_nothing_is_lost_when_it_returns(
    fleet: Fleet, tmp_path_factory: Any,
) -> None:
    with LocalPostgres(tmp_path_factory.mktemp("outage")) as server:
        jobs = [{"name": f"o{i}", "model": "ok", "mode": "m", "hyper": {"sleep": 5.0, "tag": f"o{i}"}} for i in range(4)]
        fleet.write_manifest(manifest_text(*jobs, fleet=FLEET))
        coordinator = _start(fleet, _without_password(server.url()), "c1", server.password)
        client = fleet.client(timeout_s=3.0)
        try:
            wait_until(lambda: _answers(client), timeout_s=60, what="the coordinator to answer")
            fleet.start_agent("a1")
            fleet.start_agent("a2")
            wait_until(lambda: sum(j["status"] == "running" for j in _jobs_now(client)) == 2, timeout_s=60,
                       what="two jobs running")
            server.halt()
            try:
                client.jobs()
                raise AssertionError("a query answered while the database was down")
            except RemoteError as e:
                assert e.code == "unavailable", e
            time.sleep(8)  # longer than a renewal period, and the running jobs finish meanwhile
            assert coordinator.alive(), coordinator.log()[-3000:]
            server.revive()
            done = fleet.wait_for_status("completed", timeout_s=120)
            for job in done:
                attempts = client_attempts(fleet, job["id"])
                assert [a["outcome"] for a in attempts] == ["completed"], (job["name"], attempts)
            agent_logs = fleet.agents["a1"].log() + fleet.agents["a2"].log()
            assert "coordinator unavailable" in agent_logs or "renew refused: unavailable" in agent_logs
        finally:
            coordinator.stop()


def test_a_second_coordinator_on_the_same_sqlite_file_is_refused_naming_the_way_to_run_several(fleet: Fleet) -> None:
    fleet.write_manifest(manifest_text(*_jobs(1)))
    first = fleet.start_coordinator()
    run = fleet.cli("coordinator", "--manifest", str(fleet.manifest_path), "--db", str(fleet.db_path),
                    "--store", fleet.store_url, "--client-id", "second", timeout_s=60)
    assert run.returncode == 2, run.stderr
    assert f"pid {first.pid}" in run.stderr and "--db postgresql://" in run.stderr
    assert first.alive()
    first.signal(signal.SIGKILL)  # a killed coordinator's lock goes with it: a restart is never refused
    first.popen.wait(10)
    fleet.start_coordinator()


#: The lead message's time: ISO 8601 in UTC to the millisecond, e.g. 2025-06-01T12:00:00.123+00:00.
ISO_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00"


def test_taking_the_lead_is_info_with_an_iso_time_and_a_warning_only_when_the_lead_changes_hands(fleet: Fleet) -> None:
    fleet.write_manifest(manifest_text(*_jobs(1)))

    def lead_lines(proc: Proc, start: int) -> list[str]:
        proc.signal(signal.SIGKILL)  # killed leading: its row in the coordinators table still says leader
        proc.popen.wait(10)
        return [line for line in proc.log()[start:].splitlines() if "took the lead" in line]

    first = fleet.start_coordinator()
    assert [line.split(" ", 3)[2] for line in lead_lines(first, 0)] == ["INFO"]
    assert re.search(rf"INFO mqfleet\.coordinator\.service: coordinator coordinator: took the lead at {ISO_TIME}$",
                     first.log(), re.MULTILINE), first.log()
    # the same coordinator back after a crash: its own row, no change of hands
    offset = len(first.log())
    again = fleet.start_coordinator()
    assert [line.split(" ", 3)[2] for line in lead_lines(again, offset)] == ["INFO"]

    offset = len(again.log())
    other = fleet.start_coordinator(extra=("--client-id", "c-other"))
    lines = lead_lines(other, offset)
    assert len(lines) == 1 and " WARNING " in lines[0], lines
    assert re.search(rf"coordinator c-other: took the lead from coordinator on \S+ \(its last heartbeat at {ISO_TIME}\) "
                     rf"at {ISO_TIME}$", lines[0]), lines

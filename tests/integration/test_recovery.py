"""Failures mid-run: coordinator and broker restarts, cancel, graceful agent stop, a stalled host."""

from __future__ import annotations

import signal
import subprocess
from typing import Any

import psutil

from mqfleet.wire.topics import Verb
from tests.fixtures.common import wait_until
from tests.fixtures.fleet import FAST_FLEET, Fleet, manifest_text, trainer_processes

SLOW_TRAINER_EXTRA = """\
[trainers.stubborn]
command = ["{python}", "tests/data/trainers/ignores_sigterm.py"]
"""


def _completed_once(fleet: Fleet) -> None:
    """Every job completed, with exactly one completed attempt and one artifact."""
    client = fleet.client()
    for job in client.jobs():
        assert job["status"] == "completed", job
        detail = client.job(str(job["id"])).attempts_detail
        finished = [a for a in detail if a.cause in (None, "", "completed")]
        assert len(finished) == 1, detail


def test_coordinator_killed_and_restarted_mid_run_loses_no_job_and_completes_none_twice(fleet: Fleet) -> None:
    jobs = [{"name": f"r{i}", "model": "ok", "mode": "m", "seed": i, "hyper": {"sleep": 0.6}} for i in range(4)]
    fleet.write_manifest(manifest_text(*jobs))
    coordinator = fleet.start_coordinator()
    fleet.start_agent("alpha")
    fleet.start_agent("beta")
    client = fleet.client()
    wait_until(lambda: any(j["status"] == "running" for j in client.jobs()), timeout_s=30, what="a running job")

    coordinator.signal(signal.SIGKILL)
    coordinator.popen.wait(5)
    fleet.start_coordinator()

    fleet.wait_for_status("completed", timeout_s=90)
    _completed_once(fleet)


def test_broker_restarted_mid_run_agents_reconnect_by_themselves_and_finish(own_broker_fleet: Fleet, broker: Any) -> None:
    fleet = own_broker_fleet
    jobs = [{"name": f"b{i}", "model": "ok", "mode": "m", "seed": i, "hyper": {"sleep": 0.8}} for i in range(3)]
    fleet.write_manifest(manifest_text(*jobs))
    fleet.start_coordinator()
    fleet.start_agent("alpha")
    client = fleet.client()
    wait_until(lambda: any(j["status"] == "running" for j in client.jobs()), timeout_s=30, what="a running job")

    broker.restart()

    fleet.wait_for_status("completed", timeout_s=90)
    _completed_once(fleet)


def test_cancel_reaches_a_trainer_that_ignores_sigterm_and_leaves_no_process(fleet: Fleet) -> None:
    fleet.write_manifest(manifest_text({"name": "stubborn", "model": "stubborn", "mode": "m"}, extra=SLOW_TRAINER_EXTRA))
    fleet.start_coordinator()
    fleet.start_agent("alpha")
    client = fleet.client()
    wait_until(lambda: client.job("stubborn").status == "running", timeout_s=30)
    work = fleet.dir / "work" / "alpha"
    wait_until(lambda: len(trainer_processes(work)) >= 2, timeout_s=10, what="trainer and its child")
    procs = trainer_processes(work)

    client.call_json(Verb.CANCEL, job="stubborn")

    assert client.job("stubborn").status == "cancelled"
    # kill grace is 2 s in the fixture: SIGTERM is ignored, then the whole tree is killed
    wait_until(lambda: not any(_alive(p) for p in procs), timeout_s=10, what="the trainer tree to die")
    assert trainer_processes(work) == []
    detail = client.job("stubborn").attempts_detail
    assert detail[-1].cause == "cancelled"


def test_sigterm_to_an_agent_hands_its_job_back_as_shutdown_without_using_an_attempt(fleet: Fleet) -> None:
    fleet.write_manifest(manifest_text({"name": "handed", "model": "ok", "mode": "m", "hyper": {"sleep": 3.0}}))
    fleet.start_coordinator()
    agent = fleet.start_agent("alpha")
    client = fleet.client()
    wait_until(lambda: client.job("handed").status == "running", timeout_s=30)

    agent.signal(signal.SIGTERM)
    assert agent.popen.wait(30) == 0

    job = client.job("handed")
    assert job.status == "pending"
    assert job.attempts == 0
    assert job.attempts_detail[-1].cause == "preempted"  # a clean shutdown is a preemption: free (issue 29)
    assert trainer_processes(fleet.dir / "work" / "alpha") == []
    fleet.start_agent("beta")
    fleet.wait_for_status("completed", timeout_s=60)


def test_a_stalled_host_that_returns_inside_the_grace_keeps_its_job(fleet: Fleet) -> None:
    generous = FAST_FLEET.replace("lease_s = 6", "lease_s = 30").replace("grace_s = 2", "grace_s = 8")
    fleet.write_manifest(manifest_text({"name": "kept", "model": "ok", "mode": "m", "hyper": {"sleep": 2.5}}, fleet=generous))
    fleet.start_coordinator()
    agent = fleet.start_agent("alpha")
    client = fleet.client()
    wait_until(lambda: client.job("kept").status == "running", timeout_s=30)
    host, port = fleet.broker_url.removeprefix("mqtt://").split(":")
    watch = subprocess.Popen(
        ["mosquitto_sub", "-h", host, "-p", port, "-t", f"{fleet.prefix}/hosts/alpha/status", "-R", "-C", "1", "-W", "30"],
        stdout=subprocess.PIPE, text=True,
    )

    agent.signal(signal.SIGSTOP)  # a network stall: the broker's keepalive check fires the will
    try:
        out, _ = watch.communicate(timeout=35)
        assert '"offline"' in out
    finally:
        agent.signal(signal.SIGCONT)

    fleet.wait_for_status("completed", timeout_s=60)
    detail = client.job("kept").attempts_detail
    assert len(detail) == 1 and detail[0].host == "alpha"


def _alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def test_a_cancel_sent_while_the_agent_was_cut_off_reaches_its_trainer_after_it_reconnects(fleet: Fleet) -> None:
    generous = FAST_FLEET.replace("lease_s = 6", "lease_s = 60").replace("grace_s = 2", "grace_s = 30")
    fleet.write_manifest(manifest_text({"name": "stubborn", "model": "stubborn", "mode": "m"},
                                       fleet=generous, extra=SLOW_TRAINER_EXTRA))
    fleet.start_coordinator()
    agent = fleet.start_agent("alpha")
    client = fleet.client()
    wait_until(lambda: client.job("stubborn").status == "running", timeout_s=30)
    work = fleet.dir / "work" / "alpha"
    wait_until(lambda: len(trainer_processes(work)) >= 2, timeout_s=10, what="trainer and its child")
    procs = trainer_processes(work)
    host, port = fleet.broker_url.removeprefix("mqtt://").split(":")
    watch = subprocess.Popen(
        ["mosquitto_sub", "-h", host, "-p", port, "-t", f"{fleet.prefix}/hosts/alpha/status", "-R", "-C", "1", "-W", "30"],
        stdout=subprocess.PIPE, text=True,
    )

    agent.signal(signal.SIGSTOP)  # cut off: the broker drops it and keeps its session
    try:
        out, _ = watch.communicate(timeout=35)
        assert '"offline"' in out
        client.call_json(Verb.CANCEL, job="stubborn")  # queued in the agent's persistent session
        assert client.job("stubborn").status == "cancelled"
    finally:
        agent.signal(signal.SIGCONT)

    wait_until(lambda: not any(_alive(p) for p in procs), timeout_s=20, what="the trainer tree to die after reconnect")
    assert "stopping trainer (cancelled)" in agent.log()

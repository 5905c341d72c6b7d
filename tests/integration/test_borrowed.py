"""Borrowed machines (issue 29) on the real broker, coordinator and agents: the owner's pause hands a job back
`preempted` after a final checkpoint and another host resumes it; preemptions never use up attempts nor
quarantine a host; hours keep a host from claiming until its window opens; `when_busy` yields to a CPU hog
outside the fleet; a trainer past its memory limit ends `oom` and its retry goes to the host with more memory;
trainers run at low CPU and I/O priority.
"""

from __future__ import annotations

import datetime as dt
import grp
import os
import pwd
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

from mqfleet.agent.limits import memory_mechanism
from mqfleet.client import FleetClient
from tests.fixtures.common import wait_until
from tests.fixtures.fleet import FAST_FLEET, RESUMABLE_TRAINER, Fleet, manifest_text, trainer_processes
from tests.fixtures.users import OTHER_USER, need_root_and_other_user

#: 60 steps of 0.25 s: 15 s of training, long enough to take the host back in the middle.
SLOW = {"steps": 60, "interval_s": 0.25}
KILL_GRACE_S = 2.0  # the fleet fixture's --kill-grace
MEMORY_TRAINER = """\
[trainers.memhog]
command = ["{python}", "tests/data/trainers/memory_hog.py"]
[trainers.memhog.hyper]
mib = { type = "int", default = 64, min = 16 }
hold_s = { type = "float", default = 1.0, min = 0.0 }
"""


def _settings(interval_s: float, extra: str = "") -> str:
    return FAST_FLEET + f"checkpoint_interval_s = {interval_s}\n" + extra


def _epoch(client: FleetClient, job: str) -> int:
    epoch = (client.job(job).progress or {}).get("epoch")
    return int(epoch) if isinstance(epoch, (int, float)) else 0


def _causes(client: FleetClient, job: str) -> list[str | None]:
    return [a.cause or a.outcome for a in client.job(job).attempts_detail]


def _resumed_steps(client: FleetClient, job: str) -> list[int]:
    return [int(m.group(1)) for line in client.logs(job).lines if (m := re.search(r"resumed at step (\d+)", line))]


def _owner_wait(client: FleetClient, host: str) -> str:
    worker = next((w for w in client.workers() if w.id == host), None)
    return (worker.owner_wait or "") if worker is not None else ""


def _pause(fleet: Fleet, host: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = fleet.cli("agent", "--work-dir", str(fleet.dir / "work" / host), "pause", *args, token=None)
    assert done.returncode == 0, done.stderr
    return done


def _resume(fleet: Fleet, host: str) -> None:
    done = fleet.cli("agent", "--work-dir", str(fleet.dir / "work" / host), "resume", token=None)
    assert done.returncode == 0, done.stderr


def test_a_paused_agent_hands_its_job_back_preempted_and_another_host_resumes_it_to_an_identical_artifact(
    s3_fleet: Fleet,
) -> None:
    # No periodic sync: whatever the next attempt resumes from came from the final sync before the hand-back.
    victim = {"name": "victim", "model": "resumable", "mode": "paused", "priority": 1, "hyper": SLOW}
    twin = {"name": "twin", "model": "resumable", "mode": "uninterrupted", "allowed_hosts": ["b"], "hyper": SLOW}
    s3_fleet.write_manifest(manifest_text(victim, twin, fleet=_settings(600), trainers=RESUMABLE_TRAINER))
    s3_fleet.start_coordinator()
    s3_fleet.start_agent("a")
    client = s3_fleet.client()
    wait_until(lambda: _epoch(client, "victim") >= 8, timeout_s=60, what="victim at step 8 on a")
    started = time.monotonic()
    said = _pause(s3_fleet, "a", "--now")
    assert "paused by owner" in said.stdout and "victim" in said.stdout, said.stdout
    wait_until(lambda: client.job("victim").status == "pending", timeout_s=30, what="victim handed back")
    handback_s = time.monotonic() - started
    # SIGTERM, the trainer's exit within the kill grace, then the final checkpoint sync and the hand-back
    assert handback_s < KILL_GRACE_S + 10, f"handed back {handback_s:.1f} s after the pause"
    row = client.job("victim")
    assert _causes(client, "victim") == ["preempted"]
    assert row.attempts_charged == 0, "a preemption uses up no attempt"
    assert "paused by owner" in _owner_wait(client, "a")
    reasons = {w.host: w.reason for w in row.why_waiting}
    assert "paused by owner" in (reasons.get("a") or ""), reasons
    s3_fleet.start_agent("b", slots=2)
    s3_fleet.wait_for_status("completed", timeout_s=120)
    victim_row, twin_row = client.job("victim"), client.job("twin")
    assert victim_row.host == "b"
    resumed = _resumed_steps(client, "victim")
    assert resumed and resumed[0] >= 8, "the second host resumed from the final checkpoint, not from zero"
    assert victim_row.artifact == twin_row.artifact, "a resumed run must produce the uninterrupted run's bytes"
    print(f"pause to hand-back: {handback_s:.2f} s; resumed at step {resumed[0]}")


def test_jobs_preempted_three_times_with_max_attempts_1_still_complete_and_the_host_is_not_quarantined(
    fleet: Fleet,
) -> None:
    jobs: list[dict[str, Any]] = [
        {"name": f"job{i}", "model": "resumable", "mode": f"m{i}", "hyper": {"steps": 40, "interval_s": 0.2}}
        for i in range(2)]
    settings = _settings(0.3).replace("max_attempts = 3", "max_attempts = 1") + "quarantine_after = 2\n"
    fleet.write_manifest(manifest_text(*jobs, fleet=settings, trainers=RESUMABLE_TRAINER))
    fleet.start_coordinator()
    fleet.start_agent("a", slots=2)
    client = fleet.client()
    for round_ in range(1, 4):
        wait_until(lambda: all(client.job(j["name"]).status == "running" for j in jobs)
                   and all(_epoch(client, j["name"]) >= 2 for j in jobs), timeout_s=60, what=f"both running, round {round_}")
        _pause(fleet, "a", "--now")
        wait_until(lambda: all(client.job(j["name"]).status == "pending" for j in jobs), timeout_s=30,
                   what=f"both handed back, round {round_}")
        _resume(fleet, "a")
    fleet.wait_for_status("completed", timeout_s=120)
    for job in jobs:
        assert _causes(fleet.client(), job["name"]) == ["preempted"] * 3 + ["completed"]
        resumed = _resumed_steps(client, job["name"])
        assert resumed and resumed[0] >= 2, "each attempt resumed from a checkpoint"
    worker = next(w for w in client.workers() if w.id == "a")
    assert not worker.quarantined, "six preemptions over two jobs are no failures"


def test_a_pause_under_the_manifests_on_yield_finish_lets_the_running_job_finish_and_takes_no_other(fleet: Fleet) -> None:
    jobs = [{"name": n, "model": "resumable", "mode": n, "priority": p, "hyper": {"steps": 25, "interval_s": 0.2}}
            for n, p in (("first", 1), ("second", 0))]
    hosts = '[[hosts]]\nid = "a"\non_yield = "finish"\n'
    fleet.write_manifest(manifest_text(*jobs, fleet=_settings(600), trainers=RESUMABLE_TRAINER, extra=hosts))
    fleet.start_coordinator()
    fleet.start_agent("a")
    client = fleet.client()
    wait_until(lambda: _epoch(client, "first") >= 2, timeout_s=60, what="first running")
    said = _pause(fleet, "a")  # no --now: the manifest's on_yield, which the agent's config left unset
    assert "finish first" in said.stdout, said.stdout
    fleet.wait_for_status({"first": "completed"}, timeout_s=60)
    assert _causes(client, "first") == ["completed"], "never stopped"
    assert client.job("second").status == "pending"
    assert "paused by owner" in {w.host: w.reason for w in client.job("second").why_waiting}.get("a", "")
    _resume(fleet, "a")
    fleet.wait_for_status("completed", timeout_s=60)


def test_hours_that_exclude_now_keep_a_host_from_claiming_and_it_claims_as_soon_as_the_window_opens(
    fleet: Fleet,
) -> None:
    # The window opens at the next whole minute (at least 10 s away); it comes as the manifest's default.
    now = dt.datetime.now(dt.timezone.utc)
    opens = (now + dt.timedelta(seconds=70 if now.second >= 50 else 60)).replace(second=0, microsecond=0)
    closes = opens + dt.timedelta(minutes=30)
    window = f"{opens:%H:%M}-{closes:%H:%M}"
    hosts = f'[[hosts]]\nid = "a"\nhours = ["{window}"]\ntimezone = "UTC"\n'
    fleet.write_manifest(manifest_text({"name": "j", "model": "ok", "mode": "hours"}, extra=hosts))
    fleet.start_coordinator()
    fleet.start_agent("a")
    client = fleet.client()
    reason = f"outside hours until {opens:%H:%M} (UTC)"
    wait_until(lambda: reason in _owner_wait(client, "a"), timeout_s=30, what="the host outside its hours")
    policy = next(w for w in client.workers() if w.id == "a").advert.get("owner_policy")
    assert isinstance(policy, dict) and policy.get("hours") == [window], "the manifest's default reached the agent"
    waits = {w.host: w.reason for w in client.job("j").why_waiting}
    assert reason in (waits.get("a") or ""), waits
    assert client.job("j").status == "pending"
    fleet.wait_for_status("completed", timeout_s=100)
    started = client.job("j").attempts_detail[0].started_ts
    assert started is not None and started >= opens.timestamp() - 0.5, "claimed before its window opened"
    print(f"claimed {started - opens.timestamp():.2f} s after the window opened")


def test_when_busy_yields_to_a_cpu_hog_outside_the_fleet_and_takes_work_again_after_the_calm(
    fleet: Fleet, tmp_path: Path,
) -> None:
    need_root_and_other_user()
    calm_s = 4
    config = tmp_path / "agent.toml"
    config.write_text(f'[when_busy]\ncpu_percent = 10\nbusy_s = 1\ncalm_s = {calm_s}\nusers = ["{OTHER_USER}"]\n')
    job = {"name": "j", "model": "resumable", "mode": "busy", "hyper": {"steps": 80, "interval_s": 0.2}}
    fleet.write_manifest(manifest_text(job, fleet=_settings(0.5), trainers=RESUMABLE_TRAINER))
    fleet.start_coordinator()
    fleet.start_agent("a", extra=("--config", str(config)))
    client = fleet.client()
    wait_until(lambda: _epoch(client, "j") >= 4, timeout_s=60, what="j at step 4")
    # the owner's busy program: two busy loops, well over 10% of the machine however busy it is already
    hog = subprocess.Popen(["sh", "-c", "while :; do :; done & while :; do :; done"], user=OTHER_USER,
                           group=pwd.getpwnam(OTHER_USER).pw_gid, extra_groups=[], start_new_session=True)
    try:
        wait_until(lambda: client.job("j").status == "pending", timeout_s=30, what="the host to yield")
        assert _causes(client, "j") == ["preempted"]
        wait_until(lambda: "yielding: owner busy" in _owner_wait(client, "a"), timeout_s=10, what="the reason shown")
    finally:
        os.killpg(hog.pid, signal.SIGKILL)  # its group: the loops it started
        hog.wait(5)
    calm_from = time.monotonic()
    wait_until(lambda: client.job("j").status == "running", timeout_s=60, what="work taken again after the calm")
    back_after_s = time.monotonic() - calm_from
    assert back_after_s >= calm_s - 1, f"took work again {back_after_s:.1f} s after the hog ended (calm_s = {calm_s})"
    fleet.wait_for_status("completed", timeout_s=90)
    assert _causes(client, "j") == ["preempted", "completed"]
    resumed = _resumed_steps(client, "j")
    assert resumed and resumed[0] >= 4


def test_a_trainer_past_its_memory_limit_ends_oom_and_its_retry_goes_to_the_host_with_more_memory(
    fleet: Fleet,
) -> None:
    job = {"name": "big", "model": "memhog", "mode": "oom", "max_memory_gib": 2, "hyper": {"mib": 400, "hold_s": 1.0}}
    fleet.write_manifest(manifest_text(job, trainers=MEMORY_TRAINER))
    fleet.start_coordinator()
    fleet.start_agent("small", extra=("--max-memory-gib", "0.25"))
    client = fleet.client()
    wait_until(lambda: client.job("big").status == "running", timeout_s=60, what="big running on small")
    fleet.start_agent("large", extra=("--max-memory-gib", "1.5"))
    wait_until(lambda: any(w.id == "large" and w.online for w in client.workers()), timeout_s=30, what="large online")
    fleet.wait_for_status("completed", timeout_s=90)
    row = client.job("big")
    first, last = row.attempts_detail[0], row.attempts_detail[-1]
    mechanism = memory_mechanism()
    print(f"memory limit enforced by: {mechanism}; first attempt's error: {first.error}")
    assert (first.host, first.cause) == ("small", "oom")
    assert "limit of 0.25 GiB" in (first.error or "") and "at their peak" in (first.error or "")
    assert f"enforced by {mechanism}" in (first.error or "")
    assert (last.host, last.outcome) == ("large", "completed")
    assert len(row.attempts_detail) == 2, "the small host did not take the retry back"


def test_trainers_run_at_nice_10_and_io_best_effort_7_as_read_from_proc(fleet: Fleet) -> None:
    job = {"name": "j", "model": "resumable", "mode": "nice", "hyper": {"steps": 100, "interval_s": 0.1}}
    fleet.write_manifest(manifest_text(job, fleet=_settings(600), trainers=RESUMABLE_TRAINER))
    fleet.start_coordinator()
    fleet.start_agent("a")
    client = fleet.client()
    wait_until(lambda: _epoch(client, "j") >= 1, timeout_s=60, what="j running")
    trainers = wait_until(lambda: trainer_processes(fleet.dir / "work" / "a"), timeout_s=10, what="the trainer")
    for proc in trainers:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        assert int(fields[16]) == 10, "nice (field 19 of /proc/PID/stat)"
        io = proc.ionice()
        assert (io.ioclass, io.value) == (psutil.IOPRIO_CLASS_BE, 7)
    agent_nice = int(Path(f"/proc/{fleet.agents['a'].pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
    assert agent_nice == 0, "the agent itself keeps its priority"


def test_a_pause_from_another_user_is_refused_with_a_clear_message_and_the_owner_group_may_pause(
    fleet: Fleet, outside_tmp: Path, python_for_other_user: str,
) -> None:
    need_root_and_other_user()
    os.chmod(outside_tmp, 0o755)
    sock = outside_tmp / "owner.sock"
    fleet.write_manifest(manifest_text({"name": "j", "model": "ok", "mode": "x"}))
    fleet.start_coordinator()
    agent = fleet.start_agent("a", extra=("--owner-socket", str(sock)))
    wait_until(sock.exists, timeout_s=30, what="the owner socket")
    assert oct(sock.stat().st_mode & 0o777) == oct(0o660)

    def pause_as_other_user(*args: str) -> subprocess.CompletedProcess[str]:
        # that user with its own group and no other (a child of root keeps root's groups otherwise)
        return subprocess.run([python_for_other_user, "-m", "mqfleet", "agent", "pause", "--socket", str(sock), *args],
                              user=OTHER_USER, group=pwd.getpwnam(OTHER_USER).pw_gid, extra_groups=[],
                              capture_output=True, text=True, timeout=60, cwd="/")

    denied = pause_as_other_user()
    assert denied.returncode == 1 and "not allowed to talk to the agent" in denied.stderr, denied.stderr
    os.chmod(sock, 0o666)  # a socket opened too wide: the kernel's word on the caller still decides
    refused = pause_as_other_user()
    assert refused.returncode == 1 and f"user {OTHER_USER} may not pause this agent" in refused.stderr, refused.stderr
    negative = pause_as_other_user("--for", "-2h")
    assert negative.returncode == 2 and "negative" in negative.stderr
    client = fleet.client()
    fleet.wait_for_status("completed", timeout_s=60)  # nothing was paused
    assert _owner_wait(client, "a") == ""
    agent.stop()
    fleet.start_agent("a", extra=("--owner-socket", str(sock), "--owner-group", _group_of(OTHER_USER)))
    wait_until(sock.exists, timeout_s=30, what="the owner socket again")
    allowed = pause_as_other_user("--for", "2h", "--json")
    assert allowed.returncode == 0, allowed.stderr
    assert '"state": "paused"' in allowed.stdout
    wait_until(lambda: "paused by owner until" in _owner_wait(client, "a"), timeout_s=15, what="the pause advertised")


def _group_of(user: str) -> str:
    return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name


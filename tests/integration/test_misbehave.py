"""Jobs that misbehave: time limits, stalls, empty or missing output (docs/RELIABILITY.md, "Jobs that misbehave")."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from mqfleet.wire.topics import Verb
from tests.fixtures.common import wait_until
from tests.fixtures.fleet import ROOT, Fleet, manifest_text, trainer_processes

ONE_TRY = """\
[fleet]
max_attempts = 1
lease_s = 6
grace_s = 2
"""

MISBEHAVE_TRAINER = """\
[trainers.bad]
command = ["{python}", "tests/data/trainers/misbehave.py"]
[trainers.bad.hyper]
mode = { type = "str", default = "silent" }
chatty_s = { type = "float", default = 2.0 }

[trainers.needs_model]
command = ["{python}", "tests/data/trainers/ok.py"]
outputs = ["model.pt", "*.json"]
"""


def _only_attempt(fleet: Fleet, name: str) -> dict[str, Any]:
    detail = fleet.client().job(name).attempts_detail
    assert len(detail) == 1, detail
    return detail[0].to_wire()


def test_silent_trainer_past_timeout_s_ends_timeout_with_its_tree_gone_and_the_slot_runs_the_next_job(
    fleet: Fleet,
) -> None:
    fleet.write_manifest(manifest_text(
        {"name": "hangs", "model": "bad", "timeout_s": 5, "priority": 1},
        {"name": "next", "model": "ok"},
        fleet=ONE_TRY, extra=MISBEHAVE_TRAINER,
    ))
    fleet.start_coordinator()
    fleet.start_agent("solo", slots=1)
    work = fleet.dir / "work" / "solo"
    wait_until(lambda: len(trainer_processes(work)) >= 2, timeout_s=30, what="the trainer and its child")

    fleet.wait_for_status({"hangs": "failed", "next": "completed"}, timeout_s=60)
    attempt = _only_attempt(fleet, "hangs")
    assert attempt["cause"] == "timeout", attempt
    assert "timeout_s = 5" in attempt["error"], attempt
    ran_s = attempt["ended_ts"] - attempt["started_ts"]
    # the limit, then SIGTERM (the trainer dies of it) and the report: seconds, not the lease or more
    assert 5 <= ran_s < 5 + 10, ran_s
    print(f"timeout_s = 5: attempt ended {ran_s:.2f} s after its start")  # the figure in docs/RELIABILITY.md
    assert not trainer_processes(work), "the trainer's child outlived the timeout"
    shown = fleet.cli("show", "hangs")
    assert shown.returncode == 0, shown.stderr
    assert "timeout" in shown.stdout and "timeout_s = 5" in shown.stdout, shown.stdout


def test_trainer_silent_for_stall_s_ends_stalled(fleet: Fleet) -> None:
    fleet.write_manifest(manifest_text(
        {"name": "stalls", "model": "bad", "stall_s": 2, "hyper": {"mode": "chatty_then_silent", "chatty_s": 3.0}},
        fleet=ONE_TRY, extra=MISBEHAVE_TRAINER,
    ))
    fleet.start_coordinator()
    fleet.start_agent("solo")
    fleet.wait_for_status("failed", timeout_s=60)
    attempt = _only_attempt(fleet, "stalls")
    assert attempt["cause"] == "stalled", attempt
    assert "stall_s = 2" in attempt["error"], attempt
    # it printed for 3 s, so the limit counts silence, not run time
    assert attempt["ended_ts"] - attempt["started_ts"] >= 3 + 2, attempt
    print(f"stall_s = 2 after 3 s of output: attempt ended {attempt['ended_ts'] - attempt['started_ts']:.2f} s after its start")
    assert not trainer_processes(fleet.dir / "work" / "solo")


def test_trainer_that_writes_nothing_fails_app_and_uploads_nothing(fleet: Fleet) -> None:
    fleet.write_manifest(manifest_text(
        {"name": "empty", "model": "bad", "hyper": {"mode": "empty"}}, fleet=ONE_TRY, extra=MISBEHAVE_TRAINER,
    ))
    fleet.start_coordinator()
    fleet.start_agent("solo")
    jobs = fleet.wait_for_status("failed", timeout_s=60)
    assert jobs[0]["artifact"] is None
    attempt = _only_attempt(fleet, "empty")
    assert attempt["cause"] == "app" and attempt["exit_code"] == 0, attempt
    assert "wrote nothing" in attempt["error"], attempt
    assert fleet.client().call_json(Verb.ARTIFACTS)["artifacts"] == []


def test_trainer_missing_a_declared_output_fails_app_naming_it(fleet: Fleet) -> None:
    fleet.write_manifest(manifest_text({"name": "partial", "model": "needs_model"}, fleet=ONE_TRY, extra=MISBEHAVE_TRAINER))
    fleet.start_coordinator()
    fleet.start_agent("solo")
    fleet.wait_for_status("failed", timeout_s=60)
    attempt = _only_attempt(fleet, "partial")
    assert attempt["cause"] == "app", attempt
    assert "model.pt" in attempt["error"] and "*.json" not in attempt["error"], attempt
    assert fleet.client().call_json(Verb.ARTIFACTS)["artifacts"] == []


def _fake_torch(site: Path, version: str) -> None:
    """A dist-info folder that makes importlib.metadata report torch `version` for processes with `site` on their path."""
    info = site / f"torch-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n", encoding="utf-8")


def test_a_changed_torch_version_reaches_workers_and_claims_without_restarting_the_agent(fleet: Fleet) -> None:
    site = fleet.dir / "site"
    site.mkdir()
    fleet.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), fleet.env.get("PYTHONPATH", "")) if p)
    fleet.write_manifest(manifest_text({"name": "new-torch", "model": "ok", "min_torch": "99.1"}))
    fleet.start_coordinator()
    client = fleet.client()
    adverts: list[dict[str, Any]] = []
    client.subscribe(client.topics.advert("solo"), lambda m: adverts.append(m.json()))
    fleet.start_agent("solo")
    wait_until(lambda: client.workers(), timeout_s=30, what="the agent's advert")
    first = client.workers()[0].advert.get("torch")
    assert first != "99.1.0"
    why = wait_until(lambda: client.job("new-torch").why_waiting, timeout_s=10, what="a reason to wait")
    assert any("needs torch >= 99.1" in w.reason for w in why), why

    _fake_torch(site, "99.1.0")
    wait_until(lambda: client.workers()[0].advert.get("torch") == "99.1.0", timeout_s=30, what="the new torch in workers")
    fleet.wait_for_status("completed", timeout_s=60)
    shown = fleet.cli("workers")
    assert "99.1.0" in shown.stdout, shown.stdout
    # republished once for the change, not at every heartbeat or claim since (an advert the coordinator had
    # not seen yet may go out twice at the start: the agent resends it when a claim gets unknown_host)
    torches = [a.get("torch") for a in adverts]
    assert torches.count("99.1.0") == 1 and set(torches) == {first, "99.1.0"}, torches


def _fleet(**settings: Any) -> str:
    lines = ["[fleet]", "lease_s = 6", "grace_s = 2"] + [f"{k} = {str(v).lower() if isinstance(v, bool) else v}"
                                                        for k, v in settings.items()]
    return "\n".join(lines) + "\n"


def _failing(name: str, seed: int = 0, **job: Any) -> dict[str, Any]:
    return {"name": name, "model": "bad", "seed": seed, "hyper": {"mode": "fail"}, **job}


def test_back_off_delays_the_next_claim_and_why_waiting_shows_the_time_left(fleet: Fleet) -> None:
    fleet.write_manifest(manifest_text(_failing("flaky"), fleet=_fleet(max_attempts=2, retry_backoff_s=4),
                                       extra=MISBEHAVE_TRAINER))
    fleet.start_coordinator()
    fleet.start_agent("solo")
    client = fleet.client()
    why = wait_until(lambda: [w.reason for w in client.job("flaky").why_waiting if "back-off" in w.reason],
                     timeout_s=30, what="the back-off in why_waiting")
    assert why[0].startswith("retry back-off: claimable in "), why
    fleet.wait_for_status("failed", timeout_s=60)
    first, second = client.job("flaky").attempts_detail
    assert second.started_ts is not None and first.ended_ts is not None
    assert second.started_ts - first.ended_ts >= 4 - 0.5, (first, second)
    print(f"retry_backoff_s = 4: next attempt {second.started_ts - first.ended_ts:.2f} s after the failure")


def test_a_job_that_failed_on_one_host_runs_its_retry_on_the_other_idle_host(fleet: Fleet) -> None:
    fleet.write_manifest(manifest_text(_failing("picky"), fleet=_fleet(max_attempts=3), extra=MISBEHAVE_TRAINER))
    fleet.start_agent("host-a")
    fleet.start_agent("host-b")
    client = fleet.client()
    fleet.start_coordinator()
    wait_until(lambda: len([w for w in client.workers() if w.online]) == 2, timeout_s=30, what="both hosts online")
    fleet.wait_for_status("failed", timeout_s=60)
    hosts = [a.host for a in client.job("picky").attempts_detail]
    assert len(hosts) == 3 and hosts[0] != hosts[1], hosts


def test_three_consecutive_failures_quarantine_a_host_until_undrain(fleet: Fleet) -> None:
    jobs = [_failing(f"f{i}", seed=i, priority=10 - i) for i in range(4)]
    fleet.write_manifest(manifest_text(*jobs, fleet=_fleet(max_attempts=1, quarantine_after=3), extra=MISBEHAVE_TRAINER))
    fleet.start_coordinator()
    client = fleet.client()
    events: list[dict[str, Any]] = []
    client.health()  # connected, so the subscription below is live before the agent starts
    client.subscribe(client.topics.events, lambda m: events.append(m.json()))
    fleet.start_agent("broken")
    fleet.wait_for_status({"f0": "failed", "f1": "failed", "f2": "failed"}, timeout_s=60)
    host = wait_until(lambda: next((w for w in client.workers() if w.quarantined), None), timeout_s=10,
                      what="the quarantine in workers")
    assert host.quarantine is not None and host.quarantine.jobs == ["f0", "f1", "f2"], host
    assert client.job("f3").status == "pending"
    why = [w.reason for w in client.job("f3").why_waiting if w.host == "broken"]
    assert why and "quarantined after 3 consecutive failed attempts" in why[0], why
    wait_until(lambda: any(e.get("kind") == "host_quarantined" for e in events), timeout_s=10, what="the quarantine event")

    status = fleet.cli("status")
    assert "quarantined" in status.stdout and "f0, f1, f2" in status.stdout, status.stdout
    as_json = json.loads(fleet.cli("status", "--json").stdout)
    assert as_json["hosts"]["quarantined"] == ["broken"], as_json
    workers = fleet.cli("workers")
    assert "quarantined" in workers.stdout, workers.stdout

    released = fleet.cli("undrain", "broken")
    assert released.returncode == 0 and "quarantine released" in released.stdout, released
    fleet.wait_for_status({"f3": "failed"}, timeout_s=60)
    assert not any(w.quarantined for w in client.workers())


def test_a_job_after_a_failed_dependency_says_so_and_cancel_unsatisfiable_cancels_it_until_a_requeue(fleet: Fleet) -> None:
    jobs = [_failing("base"), {"name": "next", "model": "ok", "after": ["base"]}]
    fleet.write_manifest(manifest_text(*jobs, fleet=_fleet(max_attempts=1), extra=MISBEHAVE_TRAINER))
    fleet.start_coordinator()
    fleet.start_agent("solo")
    fleet.wait_for_status({"base": "failed"}, timeout_s=60)
    listed = {j["name"]: j for j in json.loads(fleet.cli("jobs", "--json").stdout)}
    assert listed["next"]["status"] == "pending"
    assert listed["next"]["unsatisfied"] == "dependency never satisfied: base (failed)"
    assert "dependency never satisfied: base (failed)" in fleet.cli("jobs").stdout
    assert "dependency never satisfied: base (failed)" in fleet.cli("show", "next").stdout

    fleet.write_manifest(manifest_text(*jobs, fleet=_fleet(max_attempts=1, cancel_unsatisfiable=True),
                                       extra=MISBEHAVE_TRAINER))
    assert fleet.cli("reload").returncode == 0
    cancelled = fleet.client().job("next").to_wire()
    assert cancelled["status"] == "cancelled" and cancelled["error"] == "dependency never satisfied: base (failed)"

    # drained, so the requeued base (which fails again) is not retried while we look
    assert fleet.cli("drain", "solo").returncode == 0
    assert fleet.cli("requeue", "base").returncode == 0
    waiting = fleet.client().job("next").to_wire()
    assert waiting["status"] == "pending" and waiting["error"] is None, waiting
    assert {"host": None, "reason": "dependency 'base' not completed (pending)"} in waiting["why_waiting"]


def test_the_soak_trainer_told_to_hang_ends_stalled_and_its_retry_completes(fleet: Fleet) -> None:
    # the soak's `hang` fault (mqfleet.soak.injectors) in one job: the marker is read by the first attempt only
    hang_dir = fleet.dir / "hang"
    hang_dir.mkdir()
    (hang_dir / "sleepy").write_text("hang\n")
    soak_trainer = """\
[trainers.soak]
command = ["{python}", "-m", "mqfleet.soak.trainer"]
[trainers.soak.hyper]
sleep = { type = "float", default = 3.0, min = 0.0 }
"""
    fleet.write_manifest(manifest_text({"name": "sleepy", "model": "soak"}, fleet=_fleet(max_attempts=3, stall_s=3),
                                       trainers=soak_trainer))
    fleet.start_coordinator()
    fleet.start_agent("solo", extra=("--trainer-env", f"MQFLEET_SOAK_HANG_DIR={hang_dir}"))
    fleet.wait_for_status("completed", timeout_s=60)
    detail = fleet.client().job("sleepy").attempts_detail
    assert [a.cause or a.outcome for a in detail] == ["stalled", "completed"], detail
    assert not (hang_dir / "sleepy").exists()


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=True)
    return done.stdout.strip()


def test_a_dirty_working_tree_does_not_satisfy_same_commit_and_committing_it_lets_the_job_run(fleet: Fleet) -> None:
    repo = fleet.dir / "training-repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "train.py").write_text("print('v1')\n")
    _git(repo, "add", "train.py")
    _git(repo, "commit", "-q", "-m", "v1")
    (repo / "train.py").write_text("print('v1, edited')\n")  # a tracked file differs from the commit
    commit = _git(repo, "rev-parse", "HEAD")
    trainer = f'[trainers.ok]\ncommand = ["{{python}}", "{ROOT / "tests/data/trainers/ok.py"}"]\n'
    fleet.write_manifest(manifest_text({"name": "pinned", "model": "ok", "same_commit": True},
                                       fleet=_fleet(commit=f'"{commit}"'), trainers=trainer))
    fleet.start_coordinator()
    fleet.start_agent("lab", extra=("--repo", str(repo)))
    client = fleet.client()
    why = wait_until(lambda: [w.reason for w in client.job("pinned").why_waiting if w.host == "lab"],
                     timeout_s=30, what="the host's reason")
    assert "uncommitted changes" in why[0], why
    assert client.job("pinned").status == "pending"

    _git(repo, "commit", "-q", "-am", "v2")  # clean again, but at another commit: still not the pinned one
    wait_until(lambda: client.workers()[0].advert.get("git_dirty") is False, timeout_s=30, what="a clean tree")
    assert "needs commit" in [w.reason for w in client.job("pinned").why_waiting if w.host == "lab"][0]
    _git(repo, "reset", "-q", "--hard", commit)  # back at the pinned commit, edits dropped
    fleet.wait_for_status("completed", timeout_s=60)

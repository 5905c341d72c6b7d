"""Checkpoints that follow a job, against a real broker, coordinator, agents and S3 server (SeaweedFS).

An interrupted attempt's checkpoint folder reaches the next attempt on another host; the artifact of the
resumed run is byte-identical to an uninterrupted run's; a corrupted checkpoint makes the next attempt
start fresh with the reason in `show`.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

from mqfleet.client import FleetClient
from mqfleet.wire.topics import Verb
from tests.fixtures.common import wait_until
from tests.fixtures.fleet import FAST_FLEET, RESUMABLE_TRAINER, Fleet, manifest_text

#: 60 steps of 0.25 s: 15 s of training, long enough to interrupt in the middle.
SLOW = {"steps": 60, "interval_s": 0.25}


def _fleet_settings(interval_s: float) -> str:
    # FAST_FLEET's 6 s lease: renewals every 2 s carry the trainer's progress to `show`.
    return FAST_FLEET + f"checkpoint_interval_s = {interval_s}\n"


def _checkpoint(client: FleetClient, job: str) -> dict[str, Any]:
    checkpoint: dict[str, Any] = client.job(job).to_wire()["checkpoint"]
    return checkpoint


def _saved_step(client: FleetClient, job: str) -> int:
    latest = _checkpoint(client, job)["latest"]
    return int((latest.get("progress") or {}).get("epoch") or 0) if latest else 0


def _log_lines(client: FleetClient, job: str, attempt: int | None = None) -> list[str]:
    """The job's log lines: its latest attempt's, or those of `attempt`."""
    fields = {"attempt": attempt} if attempt is not None else {}
    return [str(line) for line in client.call_json(Verb.LOGS, job=job, **fields)["lines"]]


def _resumed_steps(client: FleetClient, job: str) -> list[int]:
    return [int(m.group(1)) for line in _log_lines(client, job) if (m := re.search(r"resumed at step (\d+)", line))]


def _interrupt_then_finish_elsewhere(s3_fleet: Fleet, how: signal.Signals, interval_s: float) -> dict[str, Any]:
    """Run `victim` on host a, interrupt a with `how`, let b finish it beside an uninterrupted twin."""
    victim = {"name": "victim", "model": "resumable", "mode": "interrupted", "priority": 1, "hyper": SLOW}
    twin = {"name": "twin", "model": "resumable", "mode": "uninterrupted", "allowed_hosts": ["b"], "hyper": SLOW}
    s3_fleet.write_manifest(manifest_text(victim, twin, fleet=_fleet_settings(interval_s), trainers=RESUMABLE_TRAINER))
    s3_fleet.start_coordinator()
    agent_a = s3_fleet.start_agent("a")
    client = s3_fleet.client()
    wait_until(lambda: client.job("victim").status == "running", timeout_s=30, what="victim running on a")
    if how is signal.SIGKILL:
        wait_until(lambda: _saved_step(client, "victim") >= 8, timeout_s=30, what="a checkpoint at step 8 or later")
    else:
        wait_until(lambda: float(str((client.job("victim").progress or {}).get("epoch") or 0)) >= 8,
                   timeout_s=30, what="victim at step 8")
    saved_before = _saved_step(client, "victim")
    agent_a.signal(how)
    wait_until(lambda: client.job("victim").status == "pending", timeout_s=30, what="victim back to pending")
    saved_at_handback = _saved_step(client, "victim")
    s3_fleet.start_agent("b", slots=2)
    s3_fleet.wait_for_status("completed", timeout_s=90)
    victim_row, twin_row = client.job("victim").to_wire(), client.job("twin").to_wire()
    return {"client": client, "victim": victim_row, "twin": twin_row, "saved_before": saved_before,
            "saved_at_handback": saved_at_handback}


def test_killed_agent_job_resumes_on_another_host_from_the_last_synced_step_with_an_identical_artifact(
    s3_fleet: Fleet,
) -> None:
    run = _interrupt_then_finish_elsewhere(s3_fleet, signal.SIGKILL, interval_s=0.5)
    client, victim, twin = run["client"], run["victim"], run["twin"]
    assert victim["host"] == "b"
    assert [a["cause"] for a in victim["attempts_detail"]][:1] == ["lost"]
    resumed = _resumed_steps(client, "victim")
    assert len(resumed) == 1, _log_lines(client, "victim")
    # Not from zero: from the checkpoint synced before the kill (a step no earlier than the one recorded then).
    assert run["saved_at_handback"] >= run["saved_before"] >= 8
    assert 8 <= resumed[0] < SLOW["steps"]
    assert resumed[0] >= run["saved_at_handback"]
    last_start = victim["checkpoint"]["last_start"]
    assert last_start["resumed"] is True and last_start["from_attempt"] == 1
    assert victim["artifact"] == twin["artifact"], "a resumed run must produce the uninterrupted run's bytes"
    # A completed job keeps no checkpoint.
    assert victim["checkpoint"]["latest"] is None


def test_gracefully_stopped_agent_syncs_a_final_checkpoint_before_handing_the_job_back(s3_fleet: Fleet) -> None:
    # No periodic sync within the run: whatever the next attempt resumes from came from the final sync.
    run = _interrupt_then_finish_elsewhere(s3_fleet, signal.SIGTERM, interval_s=600)
    client, victim, twin = run["client"], run["victim"], run["twin"]
    assert run["saved_before"] == 0
    assert run["saved_at_handback"] >= 8
    assert [a["cause"] for a in victim["attempts_detail"]][:1] == ["preempted"]
    resumed = _resumed_steps(client, "victim")
    assert resumed and resumed[0] >= 8, _log_lines(client, "victim")
    assert any("final checkpoint synced" in line for line in _log_lines(client, "victim", attempt=1))
    assert victim["artifact"] == twin["artifact"]


def test_corrupted_checkpoint_makes_the_next_attempt_start_fresh_and_show_says_why(
    s3_fleet: Fleet, tmp_path: Path
) -> None:
    job = {"name": "victim", "model": "resumable", "mode": "corrupt", "hyper": {"steps": 30, "interval_s": 0.2}}
    s3_fleet.write_manifest(manifest_text(job, fleet=_fleet_settings(0.5), trainers=RESUMABLE_TRAINER))
    s3_fleet.start_coordinator()
    agent_a = s3_fleet.start_agent("a")
    client = s3_fleet.client()
    wait_until(lambda: _saved_step(client, "victim") >= 3, timeout_s=30, what="a checkpoint")
    agent_a.signal(signal.SIGKILL)
    wait_until(lambda: client.job("victim").status == "pending", timeout_s=30, what="victim back to pending")
    latest = _checkpoint(client, "victim")["latest"]
    job_id = client.job("victim").id
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not the checkpoint that was saved" * 100)
    store = s3_fleet.store()
    store.put_file(store.checkpoint_key_for(job_id, latest["sha256"]), garbage)

    s3_fleet.start_agent("b")
    s3_fleet.wait_for_status("completed", timeout_s=60)
    row = client.job("victim").to_wire()
    last_start = row["checkpoint"]["last_start"]
    assert last_start["attempt"] == 2 and last_start["resumed"] is False
    assert "sha256" in last_start["note"] and "fresh" in last_start["note"]
    assert _resumed_steps(client, "victim") == []
    assert any("started fresh" in line and "sha256" in line for line in _log_lines(client, "victim"))
    shown = s3_fleet.cli("show", "victim")
    assert shown.returncode == 0, shown.stderr
    assert "started fresh" in shown.stdout


def test_job_of_a_non_resumable_trainer_gets_no_checkpoint_folder(fleet: Fleet) -> None:
    job = {"name": "plain", "model": "stateless", "mode": "m"}
    fleet.write_manifest(manifest_text(job, fleet=_fleet_settings(0.2), trainers=RESUMABLE_TRAINER))
    fleet.start_coordinator()
    fleet.start_agent("a")
    client = fleet.client()
    fleet.wait_for_status("completed", timeout_s=60)
    assert any("checkpoint folder: none" in line for line in _log_lines(client, "plain"))
    assert client.job("plain").to_wire()["checkpoint"] == {"latest": None, "last_start": None}


def test_a_failed_job_keeps_its_checkpoint_requeue_resumes_and_requeue_fresh_starts_from_zero(fleet: Fleet) -> None:
    job = {"name": "crashy", "model": "resumable", "mode": "m", "hyper": {"steps": 12, "interval_s": 0.1, "fail_at": 6}}
    settings = _fleet_settings(60).replace("max_attempts = 3", "max_attempts = 1")
    fleet.write_manifest(manifest_text(job, fleet=settings, trainers=RESUMABLE_TRAINER))
    fleet.start_coordinator()
    fleet.start_agent("a")
    client = fleet.client()
    fleet.wait_for_status("failed", timeout_s=60)
    # No periodic sync in 60 s: the crash's final sync kept step 6.
    assert _saved_step(client, "crashy") == 6

    fresh = fleet.cli("requeue", "--fresh", "crashy", "--json")
    assert fresh.returncode == 0, fresh.stderr
    fleet.wait_for_status("failed", timeout_s=60)  # from zero, so it crashes at step 6 again
    assert _resumed_steps(client, "crashy") == []
    assert any("started at step 0" in line for line in _log_lines(client, "crashy"))

    kept = fleet.cli("requeue", "crashy", "--json")
    assert kept.returncode == 0, kept.stderr
    fleet.wait_for_status("completed", timeout_s=60)
    assert _resumed_steps(client, "crashy") == [6]
    assert client.job("crashy").to_wire()["checkpoint"]["latest"] is None

"""Observability end to end against a real coordinator, agent, mosquitto and store: the Prometheus
endpoint, per-attempt usage, durable trainer output, progress history with its chart, `compare`
and `gc`."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from mqfleet.local.ports import free_port
from tests.fixtures.common import scrape_metrics, wait_until
from tests.fixtures.fleet import Fleet, manifest_text

HUNGRY_TRAINER = """\
[trainers.hungry]
command = ["{python}", "tests/data/trainers/hungry.py"]
[trainers.hungry.hyper]
mib = { type = "int", default = 1, min = 0 }
cpu_s = { type = "float", default = 0.0, min = 0.0 }
lines = { type = "int", default = 0, min = 0 }
reports = { type = "int", default = 0, min = 0 }
"""
MIB = 1024 * 1024


def _manifest(*jobs: dict[str, Any], extra: str = "") -> str:
    return manifest_text(*jobs, trainers=HUNGRY_TRAINER.replace("{python}", sys.executable), extra=extra)


def _cli_json(fleet: Fleet, *args: str) -> Any:
    done = fleet.cli(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_metrics_gauges_agree_with_jobs_json_and_requests_are_counted(fleet: Fleet) -> None:
    port = free_port()
    fleet.write_manifest(_manifest(
        {"name": "quick", "model": "hungry", "seed": 1},
        {"name": "parked", "model": "hungry", "seed": 2, "allowed_hosts": ["nowhere"]},
    ))
    fleet.start_coordinator(extra=("--metrics-port", str(port)))
    fleet.start_agent("h1")
    fleet.wait_for_status({"quick": "completed", "parked": "pending"})
    wait_until(lambda: scrape_metrics(port)["mqfleet_hosts_online"][()] == 1, timeout_s=10, what="the host to count as online")
    samples = scrape_metrics(port)
    jobs = _cli_json(fleet, "jobs")
    for status in ("pending", "claimed", "running", "completed", "failed", "cancelled"):
        want = sum(1 for j in jobs if j["status"] == status)
        assert samples["mqfleet_jobs"][(("status", status),)] == want, status
    workers = _cli_json(fleet, "workers")
    assert samples["mqfleet_hosts_online"][()] == sum(1 for w in workers if w["online"])
    assert samples["mqfleet_hosts_draining"][()] == 0
    assert samples["mqfleet_leases_active"][()] == 0
    assert samples["mqfleet_requests_total"][(("outcome", "ok"), ("verb", "claim"))] >= 1
    assert samples["mqfleet_requests_total"][(("outcome", "ok"), ("verb", "complete"))] == 1
    assert samples["mqfleet_request_seconds_count"][(("verb", "complete"),)] == 1
    assert samples["mqfleet_attempts_ended_total"][(("cause", "completed"),)] == 1
    assert samples["mqfleet_artifact_bytes_total"][()] > 0
    assert 0 <= samples["mqfleet_sweep_lag_seconds"][()] < 5


def test_a_metrics_port_in_use_stops_the_coordinator_at_start_with_exit_2_naming_it(fleet: Fleet) -> None:
    fleet.write_manifest(_manifest({"name": "quick", "model": "hungry", "seed": 1}))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = fleet.cli("coordinator", "--manifest", str(fleet.manifest_path), "--db", str(fleet.dir / "c.db"),
                         "--metrics-port", str(port), timeout_s=30)
    assert done.returncode == 2, done.stderr
    assert f"metrics port {port}" in done.stderr


def test_an_attempt_of_120_mib_and_1s_cpu_records_its_usage_within_20_percent(fleet: Fleet) -> None:
    fleet.write_manifest(_manifest({"name": "hungry", "model": "hungry", "seed": 1, "hyper": {"mib": 120, "cpu_s": 1.0}}))
    fleet.start_coordinator()
    fleet.start_agent("h1")
    fleet.wait_for_status("completed")
    row = _cli_json(fleet, "show", "hungry")
    usage = row["attempts_detail"][0]["usage"]
    assert 0.8 <= usage["cpu_s"] <= 1.2 * 1.0 + 0.3, usage  # + the interpreter's own start-up
    assert 0.8 * 120 * MIB <= usage["max_rss_bytes"] <= 1.2 * 120 * MIB, usage
    assert usage["wall_s"] >= usage["cpu_s"] * 0.9
    assert "gpu_mem_max_bytes" in usage
    host = next(w for w in _cli_json(fleet, "workers") if w["id"] == "h1")
    assert host["usage"]["attempts"] == 1 and host["usage"]["cpu_s"] == usage["cpu_s"]
    shown = fleet.cli("show", "hungry").stdout
    assert "peak RSS 1" in shown and "MiB" in shown


def test_300_output_lines_are_all_in_logs_after_the_coordinator_is_killed_and_restarted(fleet: Fleet) -> None:
    fleet.write_manifest(_manifest({"name": "chatty", "model": "hungry", "seed": 1, "hyper": {"lines": 300}}))
    coordinator = fleet.start_coordinator()
    fleet.start_agent("h1")
    fleet.wait_for_status("completed")
    want = [f"line {i} of 300" for i in range(1, 301)]
    wait_until(lambda: _cli_json(fleet, "logs", "chatty") == want, timeout_s=10, what="all 300 lines stored")
    os.kill(coordinator.pid, signal.SIGKILL)
    coordinator.popen.wait(10)
    fleet.start_coordinator()
    assert _cli_json(fleet, "logs", "chatty") == want
    assert _cli_json(fleet, "logs", "chatty", "--attempt", "1") == want
    missing = fleet.cli("logs", "chatty", "--attempt", "7")
    assert missing.returncode == 1 and "no attempt 7" in missing.stderr and "1" in missing.stderr
    job = _cli_json(fleet, "show", "chatty")
    work = fleet.dir / "work" / "h1" / "jobs"
    assert not any(work.glob(f"{job['id'][:16]}-*")), "the agent removes the attempt's folder with its log once the job ended"


def test_progress_history_is_kept_drawn_as_a_chart_and_compared(fleet: Fleet) -> None:
    sweep = """\
[[sweeps]]
name = "depth"
model = "hungry"
hyper = { reports = [40, 60] }
"""
    fleet.write_manifest(_manifest({"name": "single", "model": "hungry", "seed": 3, "hyper": {"reports": 20}},
                                   extra=sweep))
    fleet.start_coordinator()
    fleet.start_agent("h1", slots=2)
    fleet.wait_for_status("completed")
    jobs = {j["name"]: j for j in _cli_json(fleet, "jobs")}
    sweep_names = sorted(n for n in jobs if n.startswith("depth"))
    assert len(sweep_names) == 2
    row = _cli_json(fleet, "show", sweep_names[1])
    history = row["progress_history"]
    assert [h["report"]["epoch"] for h in history] == list(range(1, 61))
    assert history[-1]["report"]["metrics"]["phase"] == "train"  # non-numeric: kept as text
    env_columns = {**fleet.env, "COLUMNS": "100"}
    fleet.env = env_columns
    shown = fleet.cli("show", sweep_names[1]).stdout
    assert "progress of attempt 1" in shown and "loss" in shown and "accuracy" in shown
    assert "█" in shown and "phase=train" in shown
    compared = _cli_json(fleet, "compare", "--sweep", "depth", "--sort", "loss")
    assert [j["name"] for j in compared["jobs"]] == [sweep_names[1], sweep_names[0]]  # 60 reports end at a lower loss
    assert compared["jobs"][0]["metrics"]["accuracy"] > compared["jobs"][1]["metrics"]["accuracy"]
    table = fleet.cli("compare", "single", *sweep_names, "--sort", "accuracy", "--desc")
    assert table.returncode == 0 and sweep_names[1] in table.stdout
    unknown = fleet.cli("compare", "--sweep", "nope")
    assert unknown.returncode == 1 and "depth" in unknown.stderr


def test_gc_dry_run_lists_an_unreferenced_object_and_gc_deletes_only_it(fleet: Fleet, tmp_path: Path) -> None:
    fleet.write_manifest(_manifest({"name": "kept", "model": "hungry", "seed": 1}))
    fleet.start_coordinator()
    fleet.start_agent("h1")
    fleet.wait_for_status("completed")
    store = fleet.store()
    stray = tmp_path / "stray.bin"
    stray.write_bytes(b"no job references this" * 100)
    stray_key = store.key_for("ab" * 32)
    store.put_file(stray_key, stray)
    before = dict(store.list_objects())
    dry = _cli_json(fleet, "gc", "--dry-run")
    assert [o["key"] for o in dry["objects"]] == [stray_key] and dry["bytes"] == stray.stat().st_size
    assert dict(store.list_objects()) == before
    text = fleet.cli("gc")
    assert text.returncode == 0 and f"deleted {stray_key}" in text.stdout and "freed" in text.stdout
    after = dict(store.list_objects())
    assert stray_key not in after and len(after) == len(before) - 1
    assert _cli_json(fleet, "gc", "--dry-run")["count"] == 0
    refused = fleet.cli("gc", token="wrong")
    assert refused.returncode == 1


def test_the_agent_keeps_the_attempts_whole_output_until_the_job_ends_and_both_roles_write_log_files(
    fleet: Fleet,
) -> None:
    fleet.write_manifest(_manifest({"name": "talker", "model": "hungry", "seed": 1, "hyper": {"lines": 50, "reports": 400}}))
    coordinator_log = fleet.dir / "logs" / "coordinator.log"
    agent_log = fleet.dir / "logs" / "agent.log"
    fleet.start_coordinator(extra=("--log-file", str(coordinator_log)))
    fleet.start_agent("h1", extra=("--log-file", str(agent_log)))
    job_id = fleet.client().job("talker").id
    trainer_log = fleet.dir / "work" / "h1" / "jobs" / f"{job_id[:16]}-1" / "trainer.log"

    def whole_output_on_disk() -> bool:
        return trainer_log.exists() and "line 50 of 50" in trainer_log.read_text()

    wait_until(whole_output_on_disk, timeout_s=60, what="the agent's copy of the attempt's output")
    assert "@mqfleet" in trainer_log.read_text(), "the agent's copy keeps the progress lines too"
    fleet.wait_for_status("completed")
    wait_until(lambda: not trainer_log.parent.exists(), timeout_s=10, what="the attempt's folder removed at the end")
    assert "coordinator" in coordinator_log.read_text() and "serving on" in coordinator_log.read_text()
    assert "agent h1 online" in agent_log.read_text()


def test_a_log_file_that_cannot_be_written_stops_the_coordinator_with_exit_2(fleet: Fleet) -> None:
    fleet.write_manifest(_manifest({"name": "quick", "model": "hungry", "seed": 1}))
    blocker = fleet.dir / "not-a-dir"
    blocker.write_text("a file where a folder should be")
    done = fleet.cli("coordinator", "--manifest", str(fleet.manifest_path), "--db", str(fleet.dir / "c.db"),
                     "--log-file", str(blocker / "coordinator.log"), timeout_s=30)
    assert done.returncode == 2 and "--log-file" in done.stderr, done.stderr


def test_the_sweep_prunes_logs_progress_and_events_older_than_keep_days_and_keeps_live_jobs(fleet: Fleet) -> None:
    # Long enough for the checks below to run before the sweep prunes, even on a loaded machine.
    keep_s = 12.0
    fleet_table = f"[fleet]\nmax_attempts = 3\nlease_s = 6\ngrace_s = 2\nkeep_days = {keep_s / 86400}\n"
    fleet.write_manifest(manifest_text(
        {"name": "old", "model": "hungry", "seed": 1, "hyper": {"lines": 80, "reports": 10}},
        {"name": "parked", "model": "hungry", "seed": 2, "allowed_hosts": ["nowhere"]},
        fleet=fleet_table, trainers=HUNGRY_TRAINER.replace("{python}", sys.executable)))
    fleet.start_coordinator()
    fleet.start_agent("h1")
    fleet.wait_for_status({"old": "completed", "parked": "pending"})
    assert len(_cli_json(fleet, "logs", "old")) == 80 + 10  # the @mqfleet lines are output too
    assert len(_cli_json(fleet, "show", "old")["progress_history"]) == 10

    def pruned() -> bool:
        return not _cli_json(fleet, "show", "old")["progress_history"]

    wait_until(pruned, timeout_s=45, interval_s=0.5, what="the old job's progress pruned")
    tail = _cli_json(fleet, "logs", "old")
    assert 0 < len(tail) < 80 and tail[-1] == "line 80 of 80", "pruned lines fall back to the attempt's stored tail"
    row = _cli_json(fleet, "show", "old")
    assert row["status"] == "completed" and row["attempts_detail"][0]["usage"] is not None, "rows and usage stay"
    assert _cli_json(fleet, "show", "parked")["status"] == "pending"


def test_log_max_lines_keeps_the_newest_lines_after_a_marker_saying_how_many_went(fleet: Fleet) -> None:
    fleet_table = "[fleet]\nmax_attempts = 3\nlease_s = 6\ngrace_s = 2\nlog_max_lines = 100\n"
    fleet.write_manifest(manifest_text({"name": "long", "model": "hungry", "seed": 1, "hyper": {"lines": 300}},
                                       fleet=fleet_table, trainers=HUNGRY_TRAINER.replace("{python}", sys.executable)))
    fleet.start_coordinator()
    fleet.start_agent("h1")
    fleet.wait_for_status("completed")
    lines = _cli_json(fleet, "logs", "long")
    assert lines[0].startswith("[mqfleet: 200 earlier line(s) dropped") and "log_max_lines" in lines[0]
    assert lines[1:] == [f"line {i} of 300" for i in range(201, 301)]


def test_keep_history_false_stores_no_lines_progress_or_usage_and_logs_shows_the_tail(fleet: Fleet) -> None:
    fleet_table = "[fleet]\nmax_attempts = 3\nlease_s = 6\ngrace_s = 2\nkeep_history = false\n"
    hyper = {"lines": 30, "reports": 10, "mib": 1, "cpu_s": 0.1}
    fleet.write_manifest(manifest_text({"name": "quiet", "model": "hungry", "seed": 1, "hyper": hyper},
                                       fleet=fleet_table, trainers=HUNGRY_TRAINER.replace("{python}", sys.executable)))
    fleet.start_coordinator()
    fleet.start_agent("h1")
    fleet.wait_for_status("completed")
    row = _cli_json(fleet, "show", "quiet")
    assert row["progress_history"] == []
    assert row["attempts_detail"][0]["usage"] is None
    lines = _cli_json(fleet, "logs", "quiet")
    assert lines and lines[-1] == "line 30 of 30", "logs falls back to the attempt's stored tail"
    assert not any(line.startswith("[mqfleet:") for line in lines)

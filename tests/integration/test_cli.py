"""The operator CLI end to end: `python -m mqfleet ...` subprocesses against a real coordinator, agents and mosquitto.

Read-only commands share one fleet (module scope) whose two quick jobs have
completed and whose `parked` jobs wait forever (allowed only on a host that does
not exist); tests that need a running trainer or a drained host get their own.
"""

from __future__ import annotations

import json
import platform
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mqfleet.manifest.load import parse_manifest
from mqfleet.wire.advert import normalise_arch
from tests.fixtures.common import wait_until
from tests.fixtures.fleet import ROOT, Fleet, manifest_text, trainer_processes

JOB_FIELDS = {"id", "name", "model", "mode", "status", "host", "attempts", "priority", "artifact", "error"}
QUICK = [
    {"name": "quick-a", "model": "ok", "mode": "a", "seed": 1},
    {"name": "quick-b", "model": "ok", "mode": "b", "seed": 2, "hyper": {"size_kib": 4, "tag": "b"}},
]


def _parked_pair() -> list[dict[str, Any]]:
    """Two never-claimable jobs whose ids share their first hex digit, so that digit is an ambiguous prefix."""
    first_seen: dict[str, dict[str, Any]] = {}
    for seed in range(100, 200):
        job = {"name": f"parked-{seed}", "model": "ok", "mode": "parked", "seed": seed, "allowed_hosts": ["nowhere"]}
        spec = parse_manifest(manifest_text(job)).jobs[0]
        if spec.id[0] in first_seen:
            return [first_seen[spec.id[0]], job]
        first_seen[spec.id[0]] = job
    raise AssertionError("17 ids cannot all start with different hex digits")


PARKED = _parked_pair()
BROKEN = {"name": "broken", "model": "crash", "mode": "m"}
CRASH_TRAINER = """\
[trainers.crash]
command = ["{python}", "tests/data/trainers/crash.py"]
"""


def _shared_manifest(*more: dict[str, Any]) -> str:
    return manifest_text(*QUICK, *PARKED, BROKEN, *more, extra=CRASH_TRAINER)


@pytest.fixture(scope="module")
def shared(mosquitto: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("cli-fleet")
    (tmp / "store").mkdir()
    fleet = Fleet(tmp, mosquitto.url, f"t{uuid.uuid4().hex[:8]}/mqfleet", (tmp / "store").as_uri(), {})
    try:
        fleet.write_manifest(_shared_manifest())
        fleet.start_coordinator()
        fleet.start_agent("alpha")
        fleet.wait_for_status({"quick-a": "completed", "quick-b": "completed", "broken": "failed"}, timeout_s=60)
        yield fleet
    finally:
        fleet.close()


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# --- tests with a fleet of their own ----------------------------------------------------------------
# These come first, before the shared fleet starts: the coordinator's MQTT client id is
# "coordinator" and an agent's is its host id whatever the prefix, so two fleets alive at
# once on one broker would take each other's sessions over.


def _read_until(proc: subprocess.Popen[str], wanted: str, timeout_s: float) -> str:
    """Read the child's stdout line by line until `wanted` appears (bounded)."""
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout_s
    while wanted not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"no {wanted!r} in logs -f output within {timeout_s}s; got:\n{seen}")
        ready, _, _ = select.select([proc.stdout], [], [], min(left, 0.5))
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
    return seen


def test_logs_follow_prints_live_lines_and_exits_when_the_job_ends(fleet: Fleet) -> None:
    fleet.write_manifest(manifest_text({"name": "chatty", "model": "ok", "mode": "m", "hyper": {"sleep": 1.0}}))
    fleet.start_coordinator()
    fleet.start_agent("alpha")
    client = fleet.client()
    wait_until(lambda: client.job("chatty").status == "running", timeout_s=30, what="chatty to run")
    proc = subprocess.Popen([sys.executable, "-m", "mqfleet", "logs", "chatty", "-f"], cwd=ROOT, env=fleet.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = _read_until(proc, '"progress": 1.0', timeout_s=30)
        assert proc.wait(timeout=15) == 0
        seen += proc.stdout.read() if proc.stdout else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    lines = seen.splitlines()
    assert any('"epoch": 2' in line for line in lines)
    # the seam between the held lines and the live ones prints nothing twice
    assert len([line for line in lines if '"epoch": 2' in line]) == 1
    assert client.job("chatty").status == "completed"


def test_cancel_of_a_running_job_stops_its_trainer(fleet: Fleet) -> None:
    fleet.write_manifest(manifest_text({"name": "long", "model": "ok", "mode": "m", "hyper": {"sleep": 30.0}}))
    fleet.start_coordinator()
    fleet.start_agent("alpha")
    client = fleet.client()
    wait_until(lambda: client.job("long").status == "running", timeout_s=30, what="long to run")
    work = fleet.dir / "work"
    wait_until(lambda: trainer_processes(work), timeout_s=10, what="the trainer process")

    result = fleet.cli("cancel", "long")
    assert result.returncode == 0, result.stderr
    assert "cancelled" in result.stdout
    wait_until(lambda: not trainer_processes(work), timeout_s=15, what="the trainer to be gone")
    assert client.job("long").status == "cancelled"
    assert fleet.cli("cancel", "long").returncode == 1


def test_a_drained_host_takes_no_new_job_and_undrain_lets_it_work_again(fleet: Fleet) -> None:
    fleet.write_manifest(manifest_text(*QUICK))
    fleet.start_coordinator()
    drained = fleet.cli("drain", "alpha")
    assert drained.returncode == 0, drained.stderr
    assert "draining" in drained.stdout
    fleet.start_agent("alpha")
    fleet.start_agent("beta")
    done = fleet.wait_for_status("completed", timeout_s=60)
    assert {j["host"] for j in done} == {"beta"}
    workers = {w["id"]: w for w in _json(fleet.cli("workers", "--json"))}
    assert workers["alpha"]["draining"] is True and workers["beta"]["draining"] is False

    assert fleet.cli("undrain", "alpha").returncode == 0
    assert fleet.cli("drain", "beta").returncode == 0
    more = [{"name": f"late-{i}", "model": "ok", "mode": "late", "seed": 10 + i} for i in range(2)]
    fleet.write_manifest(manifest_text(*QUICK, *more))
    reloaded = fleet.cli("reload")
    assert reloaded.returncode == 0, reloaded.stderr
    assert "2 added" in reloaded.stdout
    late = fleet.wait_for_status({"late-0": "completed", "late-1": "completed"}, timeout_s=60)
    assert {j["host"] for j in late if j["name"].startswith("late-")} == {"alpha"}


FLAKY_TRAINER = """\
[trainers.flaky]
command = ["{python}", "-c", "import json, os, pathlib, sys; out = pathlib.Path(os.environ['MQFLEET_OUT_DIR']); out.mkdir(parents=True, exist_ok=True); (out / 'r.txt').write_text('ok'); sys.exit(1 if json.loads(pathlib.Path(os.environ['MQFLEET_SPEC']).read_text())['attempt'] == 1 else 0)"]
"""


def test_a_job_that_failed_once_then_completed_shows_two_attempts_started_and_one_charged(fleet: Fleet) -> None:
    fleet.write_manifest(manifest_text({"name": "flaky", "model": "flaky", "mode": "m"}, trainers=FLAKY_TRAINER))
    fleet.start_coordinator()
    fleet.start_agent("alpha")
    fleet.wait_for_status({"flaky": "completed"}, timeout_s=60)
    row = next(j for j in _json(fleet.cli("jobs", "--json")) if j["name"] == "flaky")
    # `attempts` stays what it always was (the charged count), beside the two unambiguous names
    assert (row["attempts_started"], row["attempts_charged"], row["attempts"], row["max_attempts"]) == (2, 1, 1, 3)
    detail = _json(fleet.cli("show", "flaky", "--json"))
    assert len(detail["attempts_detail"]) == detail["attempts_started"] == 2
    assert detail["attempts_charged"] == 1
    fleet.env["COLUMNS"] = "120"
    table = fleet.cli("jobs")
    assert table.returncode == 0, table.stderr
    header = next((line for line in table.stdout.splitlines() if "started" in line), "")
    line = next((line for line in table.stdout.splitlines() if line.lstrip().startswith("flaky")), "")
    assert "charged" in header and line.split()[5:7] == ["2", "1/3"], table.stdout
    shown = fleet.cli("show", "flaky")
    assert "2 started, 1 charged of 3" in shown.stdout, shown.stdout


def test_a_job_for_another_cpu_architecture_is_not_given_to_this_host_and_show_says_why(fleet: Fleet) -> None:
    here = normalise_arch(platform.machine())
    other = "x86_64" if here == "aarch64" else "aarch64"
    fleet.write_manifest(manifest_text({"name": "elsewhere", "model": "ok", "mode": "m", "arch": [other]},
                                       {"name": "here", "model": "ok", "mode": "n", "arch": [here, other], "priority": -1}))
    fleet.start_coordinator()
    fleet.start_agent("alpha")
    # "elsewhere" ranks first; the host takes "here" and leaves "elsewhere" alone
    fleet.wait_for_status({"here": "completed", "elsewhere": "pending"}, timeout_s=60)
    detail = _json(fleet.cli("show", "elsewhere", "--json"))
    assert detail["attempts_detail"] == [] and detail["spec"]["arch"] == [other]
    reason = f"arch {here} not in ['{other}']"
    assert [w["reason"] for w in detail["why_waiting"] if w["host"] == "alpha"] == [reason]
    fleet.env["COLUMNS"] = "200"
    shown = fleet.cli("show", "elsewhere")
    assert reason in shown.stdout, shown.stdout


# --- listings and their --json shape -----------------------------------------------------------


def test_jobs_json_lists_every_job_with_the_contract_fields(shared: Fleet) -> None:
    jobs = _json(shared.cli("jobs", "--json"))
    assert {j["name"] for j in jobs} == {"quick-a", "quick-b", "broken", *(p["name"] for p in PARKED)}
    assert all(set(j) >= JOB_FIELDS for j in jobs)
    by_name = {j["name"]: j for j in jobs}
    assert by_name["quick-a"]["host"] == "alpha" and len(by_name["quick-a"]["artifact"]) == 64
    assert by_name[PARKED[0]["name"]]["host"] is None and by_name[PARKED[0]["name"]]["artifact"] is None


def test_jobs_status_filter_and_table_show_names_statuses_and_short_ids(shared: Fleet) -> None:
    pending = _json(shared.cli("jobs", "--status", "pending", "--json"))
    assert sorted(j["name"] for j in pending) == sorted(p["name"] for p in PARKED)
    table = shared.cli("jobs", "--status", "completed")
    assert table.returncode == 0, table.stderr
    assert "quick-a" in table.stdout and "completed" in table.stdout and "parked" not in table.stdout
    quick_a = next(j for j in _json(shared.cli("jobs", "--json")) if j["name"] == "quick-a")
    assert quick_a["id"][:10] in table.stdout


def test_show_json_adds_attempts_detail_and_why_waiting(shared: Fleet) -> None:
    done = _json(shared.cli("show", "quick-a", "--json"))
    assert JOB_FIELDS | {"attempts_detail", "why_waiting"} <= set(done)
    assert [a["host"] for a in done["attempts_detail"]] == ["alpha"]
    parked = _json(shared.cli("show", PARKED[0]["name"], "--json"))
    assert parked["status"] == "pending"
    assert any(w["host"] == "alpha" for w in parked["why_waiting"])


def test_show_prints_the_attempt_with_its_output_tail_and_why_a_pending_job_waits(shared: Fleet) -> None:
    broken = shared.cli("show", "broken")
    assert broken.returncode == 0, broken.stderr
    for expected in ("failed", "attempt 1 on alpha", "attempt 3 on alpha", "app", "exit 3", "crash.py: training epoch 2"):
        assert expected in broken.stdout, broken.stdout
    parked = shared.cli("show", PARKED[1]["name"])
    assert parked.returncode == 0, parked.stderr
    assert "why it waits" in parked.stdout and "alpha" in parked.stdout, parked.stdout


def test_an_ambiguous_id_prefix_lists_the_candidates_and_exits_1(shared: Fleet) -> None:
    ids = {j["name"]: j["id"] for j in _json(shared.cli("jobs", "--json"))}
    prefix = ids[PARKED[0]["name"]][0]
    result = shared.cli("show", prefix)
    assert result.returncode == 1
    assert "ambiguous" in result.stderr
    assert PARKED[0]["name"] in result.stderr and PARKED[1]["name"] in result.stderr


def test_a_unique_id_prefix_names_the_job(shared: Fleet) -> None:
    job_id = next(j["id"] for j in _json(shared.cli("jobs", "--json")) if j["name"] == "quick-b")
    assert _json(shared.cli("show", job_id[:16], "--json"))["name"] == "quick-b"


def test_workers_json_and_table_show_the_host_capability_and_slots(shared: Fleet) -> None:
    workers = _json(shared.cli("workers", "--json"))
    alpha = next(w for w in workers if w["id"] == "alpha")
    assert alpha["online"] is True and alpha["draining"] is False
    assert {"slots", "slots_used", "jobs", "last_seen_ts", "advert"} <= set(alpha)
    assert alpha["advert"]["cpu_cores"] >= 1
    assert alpha["advert"]["arch"] == normalise_arch(platform.machine()) and alpha["advert"]["os_family"]
    table = shared.cli("workers")
    assert table.returncode == 0, table.stderr
    assert "alpha" in table.stdout and "online" in table.stdout and "0/1" in table.stdout
    assert alpha["advert"]["arch"] in table.stdout


def test_status_and_health_summarise_the_fleet(shared: Fleet) -> None:
    status = _json(shared.cli("status", "--json"))
    assert status["hosts"]["online"] == ["alpha"]
    assert status["jobs_by_status"]["completed"] == 2 and status["jobs_by_status"]["pending"] == 2
    assert status["jobs_by_status"]["failed"] == 1
    assert status["coordinator"]["manifest"]
    text = shared.cli("status")
    assert text.returncode == 0, text.stderr
    assert "1 online" in text.stdout and "completed 2" in text.stdout
    health = _json(shared.cli("health", "--json"))
    assert health["state"] == "online" and health["db_ok"] is True and "version" in health
    assert shared.cli("health").returncode == 0


def test_artifacts_lists_both_outputs_with_sizes(shared: Fleet) -> None:
    artifacts = _json(shared.cli("artifacts", "--json"))
    assert sorted(a["name"] for a in artifacts) == ["quick-a", "quick-b"]
    assert all(len(a["sha256"]) == 64 and a["size"] > 0 and a["host"] == "alpha" for a in artifacts)
    table = shared.cli("artifacts")
    assert table.returncode == 0, table.stderr
    assert "quick-b" in table.stdout and "KiB" in table.stdout


def test_logs_prints_the_lines_the_coordinator_holds(shared: Fleet) -> None:
    result = shared.cli("logs", "quick-a")
    assert result.returncode == 0, result.stderr
    assert "ok.py: job" in result.stdout


def test_watch_once_renders_hosts_and_jobs_from_the_bus(shared: Fleet) -> None:
    result = shared.cli("watch", "--once", timeout_s=30)
    assert result.returncode == 0, result.stderr
    assert "hosts" in result.stdout and "alpha" in result.stdout and "online" in result.stdout
    assert "completed 2" in result.stdout and "pending 2" in result.stdout and "failed 1" in result.stdout


# --- fetch --------------------------------------------------------------------------------------


def test_fetch_unpacks_the_trainers_files(shared: Fleet, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = shared.cli("fetch", "quick-b", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "result.json").read_text())["hyper"]["tag"] == "b"
    assert (out / "blob.bin").stat().st_size == 4 * 1024


def test_fetch_of_a_corrupted_artifact_exits_1_and_unpacks_nothing(shared: Fleet, tmp_path: Path) -> None:
    sha = next(j["artifact"] for j in _json(shared.cli("jobs", "--json")) if j["name"] == "quick-a")
    obj = next((shared.dir / "store").rglob(f"{sha}.tar.zst"))
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0xFF
    obj.write_bytes(bytes(data))
    out = tmp_path / "out"
    result = shared.cli("fetch", "quick-a", "-o", str(out))
    assert result.returncode == 1
    assert "sha256" in result.stderr
    assert not out.exists() or not any(out.iterdir())


# --- operator verbs and exit codes ---------------------------------------------------------------


def test_cancel_of_a_completed_job_is_refused_with_exit_1(shared: Fleet) -> None:
    result = shared.cli("cancel", "quick-a")
    assert result.returncode == 1
    assert result.stderr.startswith("error:")


def test_an_operator_verb_without_the_token_is_unauthorized_with_exit_1(shared: Fleet) -> None:
    result = shared.cli("cancel", PARKED[0]["name"], token=None)
    assert result.returncode == 1
    assert "unauthorized" in result.stderr and "MQFLEET_OPERATOR_TOKEN" in result.stderr
    assert _json(shared.cli("show", PARKED[0]["name"], "--json"))["status"] == "pending"


def test_a_dead_broker_exits_3_naming_the_broker_url(shared: Fleet) -> None:
    result = shared.cli("jobs", "--broker", "mqtt://127.0.0.1:1", "--timeout", "2")
    assert result.returncode == 3
    assert "mqtt://127.0.0.1:1" in result.stderr
    assert shared.cli("health", "--broker", "mqtt://127.0.0.1:1", "--timeout", "2").returncode == 3


def test_bad_usage_exits_2(shared: Fleet) -> None:
    assert shared.cli("jobs", "--status", "bogus").returncode == 2
    assert shared.cli("show").returncode == 2
    assert shared.cli("jobs", "--broker", "http://nowhere").returncode == 2


def test_reload_of_an_invalid_manifest_prints_every_problem_exits_2_and_changes_nothing(shared: Fleet) -> None:
    before = _json(shared.cli("jobs", "--json"))
    bad = shared.dir / "bad.toml"
    bad.write_text(_shared_manifest({"name": "x", "model": "nope", "mode": "m"},
                                    {"name": "y", "model": "ok", "mode": "m", "colour": "red"}))
    result = shared.cli("reload", "--file", str(bad))
    assert result.returncode == 2
    assert "jobs[5]" in result.stderr and "jobs[6]" in result.stderr, result.stderr
    assert _json(shared.cli("jobs", "--json")) == before
    assert _json(shared.cli("status", "--json"))["coordinator"]["last_refused_manifest"]


def test_reload_of_a_good_manifest_adds_a_pending_job_and_keeps_the_rest(shared: Fleet) -> None:
    extra = {"name": "parked-new", "model": "ok", "mode": "parked", "seed": 999, "allowed_hosts": ["nowhere"]}
    good = shared.dir / "good.toml"
    good.write_text(_shared_manifest(extra))
    result = _json(shared.cli("reload", "--file", str(good), "--json"))
    assert result["added"] == 1 and result["kept"] == 5 and result["orphaned"] == 0
    new = _json(shared.cli("show", "parked-new", "--json"))
    assert new["status"] == "pending"
    again = shared.cli("reload", "--file", str(good))
    assert again.returncode == 0, again.stderr
    assert "0 added, 6 kept, 0 orphaned" in again.stdout


def test_cancel_then_requeue_puts_a_waiting_job_back_to_pending(shared: Fleet) -> None:
    name = PARKED[1]["name"]
    cancelled = shared.cli("cancel", name)
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"{name} (" in cancelled.stdout and "cancelled" in cancelled.stdout
    assert shared.cli("requeue", "quick-a").returncode == 1  # only failed or cancelled jobs go back
    requeued = _json(shared.cli("requeue", name, "--json"))
    assert requeued["name"] == name and requeued["status"] == "pending"


def test_cli_reads_broker_and_prefix_from_the_environment(shared: Fleet) -> None:
    env = {k: v for k, v in shared.env.items() if k != "MQFLEET_PREFIX"}
    other = subprocess.run([sys.executable, "-m", "mqfleet", "jobs", "--json", "--timeout", "2"], cwd=ROOT,
                           env={**env, "MQFLEET_PREFIX": "nobody-here/mqfleet"}, capture_output=True, text=True,
                           timeout=30)
    assert other.returncode == 3 and shared.broker_url in other.stderr

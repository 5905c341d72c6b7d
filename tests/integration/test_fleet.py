"""End to end: a real coordinator and real agents through a real mosquitto, artifacts in real S3."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from typing import Any

import psutil

from mqfleet.wire.topics import Verb
from tests.fixtures.common import wait_until
from tests.fixtures.fleet import FAST_FLEET, Fleet, manifest_text, trainer_processes


def test_several_jobs_complete_on_two_agents_with_verified_artifacts_in_s3(s3_fleet: Fleet) -> None:
    jobs = [{"name": f"job-{i}", "model": "ok", "mode": "m", "seed": i, "hyper": {"sleep": 0.2}} for i in range(5)]
    s3_fleet.write_manifest(manifest_text(*jobs))
    s3_fleet.start_coordinator()
    s3_fleet.start_agent("alpha")
    s3_fleet.start_agent("beta")

    done = s3_fleet.wait_for_status("completed", timeout_s=90)

    assert {j["host"] for j in done} == {"alpha", "beta"}
    store = s3_fleet.store()
    for job in done:
        sha = job["artifact"]
        key = store.key_for(sha)
        assert key.endswith(f"artifacts/{sha}.tar.zst")
        assert store.hash_object(key)[0] == sha
    artifacts = s3_fleet.client().call_json(Verb.ARTIFACTS)["artifacts"]
    assert sorted(a["name"] for a in artifacts) == [f"job-{i}" for i in range(5)]
    assert all(a["size"] == store.stat(store.key_for(a["sha256"])) for a in artifacts)


def test_identical_output_of_another_job_is_deduplicated_not_uploaded_again(s3_fleet: Fleet) -> None:
    # Same hyper and seed, different mode: two jobs, one output, one stored object.
    jobs: list[dict[str, Any]] = [{"name": "first", "model": "ok", "mode": "a"},
                                  {"name": "second", "model": "ok", "mode": "b", "after": ["first"]}]
    s3_fleet.write_manifest(manifest_text(*jobs))
    s3_fleet.start_coordinator()
    s3_fleet.start_agent("alpha")

    done = {j["name"]: j for j in s3_fleet.wait_for_status("completed", timeout_s=60)}

    assert done["first"]["artifact"] == done["second"]["artifact"]
    log = s3_fleet.agents["alpha"].log()
    assert "already stored; no upload" in log
    artifacts = s3_fleet.client().call_json(Verb.ARTIFACTS)["artifacts"]
    assert sorted(a["name"] for a in artifacts) == ["first", "second"]
    assert len({a["sha256"] for a in artifacts}) == 1


def test_mosquitto_rr_gets_a_jobs_reply_and_mosquitto_sub_shows_readable_json(fleet: Fleet) -> None:
    fleet.write_manifest(manifest_text({"name": "solo", "model": "ok", "mode": "m"}))
    fleet.start_coordinator()
    host_port = fleet.broker_url.removeprefix("mqtt://")
    host, port = host_port.split(":")

    rr = subprocess.run(
        ["mosquitto_rr", "-h", host, "-p", port, "-t", f"{fleet.prefix}/rpc/query/rr-test/jobs",
         "-e", f"{fleet.prefix}/reply/rr-test", "-m", "{}", "-W", "10"],
        capture_output=True, text=True, timeout=20,
    )
    assert rr.returncode == 0, rr.stderr
    reply = json.loads(rr.stdout)
    assert reply["ok"] is True
    assert [j["name"] for j in reply["jobs"]] == ["solo"]

    sub = subprocess.run(
        ["mosquitto_sub", "-h", host, "-p", port, "-t", f"{fleet.prefix}/#", "-v", "-W", "2", "--retained-only"],
        capture_output=True, text=True, timeout=20,
    )
    lines = [line for line in sub.stdout.splitlines() if line]
    assert any("/jobs/" in line and "/state" in line for line in lines)
    for line in lines:
        topic, payload = line.split(" ", 1)
        assert isinstance(json.loads(payload), dict), topic


def test_killed_agent_job_is_pending_within_the_grace_and_completes_elsewhere_without_orphans(fleet: Fleet) -> None:
    # A long lease and a short grace: only the will can bring the job back this fast.
    fleet_settings = FAST_FLEET.replace("lease_s = 6", "lease_s = 60")
    fleet.write_manifest(manifest_text({"name": "long", "model": "ok", "mode": "m", "hyper": {"sleep": 1.5}},
                                       fleet=fleet_settings))
    fleet.start_coordinator()
    victim = fleet.start_agent("victim")
    client = fleet.client()
    wait_until(lambda: client.job("long").status == "running", timeout_s=30, what="the job to run on victim")
    trainers = trainer_processes(fleet.dir / "work" / "victim")
    assert trainers, "the trainer should be running"

    killed_at = time.monotonic()
    victim.signal(signal.SIGKILL)
    wait_until(lambda: client.job("long").status == "pending", timeout_s=15, what="the job back to pending")
    back_after_s = time.monotonic() - killed_at
    # grace_s is 2: noticed in seconds, far below the 60 s lease
    assert back_after_s < 30, back_after_s
    wait_until(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in trainers),
               timeout_s=10, what="the orphaned trainer to die")

    fleet.start_agent("rescuer")
    done = fleet.wait_for_status("completed", timeout_s=60)
    assert done[0]["host"] == "rescuer"
    detail = client.job("long").attempts_detail
    assert [a.cause for a in detail][:1] == ["lost"]

"""`mqfleet agent selftest` against the real broker and coordinator of the `fleet` fixture."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.fixtures.fleet import ROOT, Fleet, manifest_text
from tests.fixtures.users import OTHER_USER


def test_selftest_passes_with_exit_0_and_a_table_against_a_running_fleet(fleet: Fleet) -> None:
    fleet.write_manifest(manifest_text())
    fleet.start_coordinator()

    result = fleet.cli("agent", "--host-id", "st", "selftest")

    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("capability", "broker", "coordinator", "training packages", "trainer run"):
        assert name in result.stdout
    assert "FAIL" not in result.stdout
    assert "all checks passed" in result.stdout


def test_selftest_json_lists_every_check_with_its_outcome(fleet: Fleet) -> None:
    fleet.write_manifest(manifest_text())
    fleet.start_coordinator()

    result = fleet.cli("agent", "--host-id", "st", "selftest", "--json", "--no-train")

    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    outcomes = {c["name"]: c["outcome"] for c in report["checks"]}
    assert report["ok"] is True and report["host"] == "st"
    assert outcomes == {"capability": "pass", "broker": "pass", "coordinator": "pass",
                        "training packages": "pass", "trainer run": "skip"}


def test_selftest_with_a_wrong_broker_url_exits_1_naming_the_broker_and_the_fix(fleet: Fleet) -> None:
    result = fleet.cli("agent", "--host-id", "st", "--broker", "mqtt://127.0.0.1:1", "selftest",
                       "--wait", "1", "--no-train")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "broker not reachable at mqtt://127.0.0.1:1" in result.stdout
    assert "connection refused" in result.stdout
    assert "fix:" in result.stdout and "check --broker" in result.stdout
    assert "FAILED: broker" in result.stdout


def test_selftest_without_a_coordinator_fails_the_coordinator_check_only(fleet: Fleet) -> None:
    result = fleet.cli("agent", "--host-id", "st", "selftest", "--json", "--no-train", "--timeout", "1")

    assert result.returncode == 1, result.stdout + result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["broker"]["outcome"] == "pass"
    assert checks["coordinator"]["outcome"] == "fail"
    assert "start the coordinator" in checks["coordinator"]["fix"]


def test_selftest_with_unreadable_tls_files_fails_naming_the_file(fleet: Fleet) -> None:
    result = fleet.cli("agent", "--host-id", "st", "--broker", "mqtts://127.0.0.1:8883",
                       "--ca", "/nonexistent/ca.crt", "selftest", "--json", "--no-train")

    assert result.returncode == 1
    broker = next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "broker")
    assert broker["outcome"] == "fail"
    assert "/nonexistent/ca.crt" in broker["detail"] and "--ca" in broker["fix"]


def test_selftest_with_a_trainer_user_trains_as_that_user_and_fails_on_a_repo_it_cannot_read(
    fleet: Fleet, outside_tmp: Path, python_for_other_user: str
) -> None:
    fleet.write_manifest(manifest_text())
    fleet.start_coordinator()

    def selftest(*options: str) -> dict[str, dict[str, str]]:
        result = subprocess.run([python_for_other_user, "-m", "mqfleet", "agent", "--host-id", "st",
                                 "--trainer-user", OTHER_USER, *options, "selftest", "--json"],
                                cwd=ROOT, env=fleet.env, capture_output=True, text=True, timeout=240)
        return {c["name"]: c for c in json.loads(result.stdout)["checks"]}

    checks = selftest()
    assert checks["trainer user"]["outcome"] == "pass", checks
    assert checks["trainer run"]["outcome"] == "pass" and f"as {OTHER_USER}" in checks["trainer run"]["detail"], checks
    private = outside_tmp / "private-repo"
    private.mkdir(mode=0o700)
    refused = selftest("--repo", str(private))
    assert refused["trainer user"]["outcome"] == "fail"
    assert f"cannot read {private}" in refused["trainer user"]["detail"] and "chmod o+rx" in refused["trainer user"]["detail"]

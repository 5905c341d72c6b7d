"""The manifest in force lives in the coordinator's database: a restart keeps `reload --file`, a changed file wins."""

from __future__ import annotations

import json
import shutil
import signal
import time
import uuid
from pathlib import Path
from typing import Any

from mqfleet.mqtt.config import BrokerConfig
from mqfleet.mqtt.connection import Connection
from tests.fixtures.common import wait_until
from tests.fixtures.fleet import Fleet, manifest_text

ORIGINAL: list[dict[str, Any]] = [{"name": "base", "model": "ok", "mode": "m"}]
SENT: list[dict[str, Any]] = [*ORIGINAL, {"name": "sent-only", "model": "ok", "mode": "m", "seed": 7}]


def _restart_coordinator_hard(fleet: Fleet) -> None:
    """kill -9, as a power cut would, then the same command line again."""
    assert fleet.coordinator is not None
    fleet.coordinator.signal(signal.SIGKILL)
    fleet.coordinator.popen.wait(5)
    fleet.coordinator.stop()
    fleet.start_coordinator()


def test_a_manifest_sent_with_reload_file_survives_kill_9_and_a_restart_with_the_original_command_line(
        fleet: Fleet, tmp_path: Path) -> None:
    fleet.write_manifest(manifest_text(*ORIGINAL))
    fleet.start_coordinator()
    sent = tmp_path / "elsewhere" / "sent.toml"
    sent.parent.mkdir()
    sent.write_text(manifest_text(*SENT) + "# sent by the operator\n")
    reload = fleet.cli("reload", "--file", str(sent), "--json")
    assert reload.returncode == 0, reload.stderr

    _restart_coordinator_hard(fleet)

    client = fleet.client()
    jobs = {j["name"]: j for j in client.jobs()}
    assert jobs["sent-only"]["in_manifest"] is True
    assert fleet.coordinator is not None and "keeping the manifest in force" in fleet.coordinator.log()
    health = client.health()
    assert health.manifest == str(sent) and health.manifest_origin == "sent"
    status = fleet.cli("status")
    assert str(sent) in status.stdout.replace("\n", "")
    # pulled back exactly as it was sent, and it runs
    pulled = fleet.cli("manifest")
    assert pulled.returncode == 0 and pulled.stdout == sent.read_text()
    fleet.start_agent("alpha")
    fleet.wait_for_status("completed", timeout_s=60)


def test_a_manifest_file_changed_on_disk_before_a_restart_wins_and_the_log_says_so(fleet: Fleet, tmp_path: Path) -> None:
    fleet.write_manifest(manifest_text(*ORIGINAL))
    fleet.start_coordinator()
    sent = tmp_path / "sent.toml"
    sent.write_text(manifest_text(*SENT))
    assert fleet.cli("reload", "--file", str(sent)).returncode == 0
    changed: list[dict[str, Any]] = [*ORIGINAL, {"name": "from-file", "model": "ok", "mode": "m", "seed": 9}]
    fleet.write_manifest(manifest_text(*changed))

    _restart_coordinator_hard(fleet)

    coordinator = fleet.coordinator
    assert coordinator is not None
    wait_until(lambda: "changed on disk" in coordinator.log(), timeout_s=10, what="the log to say why")
    assert "the file wins" in coordinator.log()
    jobs = {j["name"]: j for j in fleet.client().jobs()}
    assert jobs["from-file"]["in_manifest"] is True
    assert jobs["sent-only"]["in_manifest"] is False
    written = tmp_path / "pulled.toml"
    assert fleet.cli("manifest", "-o", str(written)).returncode == 0
    assert written.read_bytes() == fleet.manifest_path.read_bytes()


def test_an_unchanged_file_keeps_the_manifest_in_force_across_a_plain_restart(fleet: Fleet) -> None:
    fleet.write_manifest(manifest_text(*ORIGINAL))
    fleet.start_coordinator()
    _restart_coordinator_hard(fleet)
    assert fleet.coordinator is not None
    assert "is unchanged since it was applied" in fleet.coordinator.log()
    health = fleet.client().health()
    assert health.manifest_origin == "file" and len(health.manifest_sha256 or "") == 64


def test_health_reports_the_store_failing_when_its_folder_is_removed_and_exits_1(fleet: Fleet) -> None:
    fleet.write_manifest(manifest_text(*ORIGINAL))
    fleet.start_coordinator()
    healthy = fleet.cli("health", "--json")
    assert healthy.returncode == 0, healthy.stderr
    report = json.loads(healthy.stdout)
    assert report["db_ok"] is True and report["store_ok"] is True and report["failed_checks"] == []

    shutil.rmtree(Path(fleet.store_url.removeprefix("file://")) / "artifacts")

    def store_failing() -> dict[str, object] | None:
        result = fleet.cli("health", "--json")
        body = json.loads(result.stdout)
        return body if result.returncode == 1 and body["failed_checks"] == ["store"] else None

    # the store check is cached for a few seconds
    body = wait_until(store_failing, timeout_s=20, interval_s=0.5, what="health to report the store failing")
    assert body["store_ok"] is False and body["db_ok"] is True
    assert "missing" in body["checks"]["store"]["detail"]
    plain = fleet.cli("health")
    assert plain.returncode == 1 and "store" in plain.stderr


def test_a_reload_republishes_the_states_it_changed_and_an_unchanged_file_starts_no_walk(
        fleet: Fleet, tmp_path: Path) -> None:
    # A rewritten row (here a priority) changes its retained state without an event, so the republisher
    # walks every job to find it by digest; a reload that rewrote nothing must not start that walk (at
    # 100,000 jobs it held claims back for its whole length). Each walk logs one line when it ends.
    jobs = [{"name": f"j{i}", "model": "ok", "mode": "m", "seed": i} for i in range(3)]
    fleet.write_manifest(manifest_text(*jobs))
    fleet.start_coordinator()
    coordinator = fleet.coordinator
    assert coordinator is not None

    def walks() -> int:
        return coordinator.log().count("retained job states checked")

    wait_until(lambda: walks() >= 1, timeout_s=30, what="the first start's walk over the retained states")
    j0 = next(j for j in fleet.client().jobs() if j["name"] == "j0")
    states: list[dict[str, Any]] = []
    watcher = Connection(BrokerConfig(url=fleet.broker_url), client_id=f"watch-{uuid.uuid4().hex[:8]}",
                         reply_prefix=fleet.prefix)
    watcher.subscribe(f"{fleet.prefix}/jobs/{j0['id']}/state", lambda msg: states.append(msg.json()))
    watcher.start(wait_s=10)
    try:
        before = walks()
        same = tmp_path / "same.toml"
        same.write_text(manifest_text(*jobs))
        assert fleet.cli("reload", "--file", str(same)).returncode == 0
        time.sleep(1.0)  # an unneeded walk over 3 jobs would have logged its line by now
        assert walks() == before

        changed = tmp_path / "changed.toml"
        changed.write_text(manifest_text({**jobs[0], "priority": 5}, *jobs[1:]))
        assert fleet.cli("reload", "--file", str(changed)).returncode == 0
        wait_until(lambda: any(s.get("priority") == 5 for s in states), timeout_s=10,
                   what="j0's retained state with its new priority")
        wait_until(lambda: walks() == before + 1, timeout_s=10, what="the changed reload's walk")
    finally:
        watcher.stop()

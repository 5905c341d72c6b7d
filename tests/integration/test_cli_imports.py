"""What a query command imports: each runs its whole path against a live coordinator in a fresh process, and the
modules it loaded are read from `sys.modules` at its end. Neither the training libraries, nor the S3 SDK, nor the
coordinator's code belong in an operator's `mqfleet status` (docs/BENCHMARKS.md, "CLI start-up")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.fleet import ROOT, Fleet, manifest_text

#: Run a CLI command in this process and write the modules it loaded (and its exit code) to a file.
RUN_AND_LIST = """\
import json, sys
from mqfleet.cli import main
rc = main(sys.argv[2:])
with open(sys.argv[1], "w") as out:
    json.dump({"rc": rc, "modules": sorted(sys.modules)}, out)
"""

#: Top-level packages and package prefixes no query command may load.
FORBIDDEN = ("torch", "xgboost", "minio", "mqfleet.coordinator")

QUERIES = (("status",), ("workers",), ("jobs",), ("show", "{job}"), ("health",), ("logs", "{job}"), ("artifacts",),
           ("compare", "{job}"), ("health", "--help"), ("jobs", "--help"), ("--help",))


def loaded_modules(fleet: Fleet | None, tmp_path: Path, *args: str) -> list[str]:
    out = tmp_path / "modules.json"
    result = subprocess.run([sys.executable, "-c", RUN_AND_LIST, str(out), *args], cwd=ROOT,
                            env=fleet.env if fleet else None, capture_output=True, text=True, timeout=60)
    report = json.loads(out.read_text())
    assert report["rc"] == 0, (args, result.stdout[-2000:], result.stderr[-2000:])
    return list(report["modules"])


def forbidden_in(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]


def test_the_forbidden_list_reader_sees_a_coordinator_module_and_a_training_library() -> None:
    assert forbidden_in(["mqfleet.cli", "mqfleet.coordinator.sql.sqlite", "torch", "torchvision", "minio.api"]) == [
        "mqfleet.coordinator.sql.sqlite", "torch", "minio.api"]


#: The message modules of the other verbs (the agent's, the operator's, the published ones): the everyday queries
#: load their own verbs' types only (wire/health.py, hosts.py, job_listing.py, job_detail.py).
OTHER_VERBS = ("mqfleet.wire.requests", "mqfleet.wire.replies", "mqfleet.wire.published", "mqfleet.wire.advert")
EVERYDAY = ("status", "jobs", "show {job}", "health")


@pytest.mark.timeout(300)
def test_no_query_command_imports_torch_xgboost_minio_or_the_coordinator(fleet: Fleet, tmp_path: Path) -> None:
    fleet.write_manifest(manifest_text({"name": "one", "model": "ok", "mode": "m"}))
    fleet.start_coordinator()
    job = fleet.client().jobs()[0]["name"]

    loaded = {" ".join(q): loaded_modules(fleet, tmp_path, *(a.format(job=job) for a in q)) for q in QUERIES}

    assert {q: forbidden_in(mods) for q, mods in loaded.items() if forbidden_in(mods)} == {}
    assert {q: [m for m in loaded[q] if m in OTHER_VERBS] for q in EVERYDAY} == {q: [] for q in EVERYDAY}


#: What a command that only prints its help or the version never needs: the MQTT client, the wire types, rich.
NOT_FOR_HELP = ("paho", "rich", "mqfleet.client", "mqfleet.mqtt", "mqfleet.wire", "mqfleet.cli.render.fleet")


@pytest.mark.parametrize("args", [("--version",), ("health", "--help"), ("status", "--help"), ("show", "--help")])
def test_help_and_version_load_neither_the_mqtt_client_nor_the_wire_types_nor_rich(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    loaded = loaded_modules(None, tmp_path, *args)

    assert [m for m in loaded if any(m == n or m.startswith(n + ".") for n in NOT_FOR_HELP)] == []

"""`mqfleet demo` end to end: the whole fleet over mutual TLS with real training, then nothing left running.

Runs `python -m mqfleet demo` as an operator would (about 90 s on 2 cores) and checks its outcome
and that every process it started (mosquitto, weed, the coordinator, the agents, trainers) is gone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from mqfleet.local.broker import LocalBroker
from mqfleet.local.ports import free_port
from tests.fixtures.common import require_real_part, wait_until
from tests.unit.test_demo_render import job_column as job_names

ROOT = Path(__file__).resolve().parents[2]


def _processes_mentioning(path: Path) -> list[str]:
    """Live processes whose command line names something under `path`."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = " ".join(proc.info.get("cmdline") or [])
            if str(path) in cmdline and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{proc.info['pid']}: {cmdline}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _environments(work: Path, role: str) -> list[dict[str, str]]:
    """The environments of the demo's live `mqfleet ROLE` processes (read as root, or as their user)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = proc.info.get("cmdline") or []
            if role in cmdline and any(str(work) in part for part in cmdline):
                found.append(proc.environ())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.mark.timeout(600)
def test_demo_completes_every_runnable_job_over_tls_and_leaves_no_process_behind(tmp_path: Path) -> None:
    require_real_part(LocalBroker.available(), "mosquitto")
    work = tmp_path / "demo"
    web_port = free_port()
    # 80 columns and no terminal: what a log file or a CI job gets
    proc = subprocess.Popen([sys.executable, "-m", "mqfleet", "demo", "--dir", str(work), "--timeout", "400",
                             "--web-port", str(web_port)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**_env(), "COLUMNS": "80"})
    try:
        agents = wait_until(lambda: len(found := _environments(work, "agent")) == 2 and found, timeout_s=120,
                            what="the demo's two agents")
        coordinator = _environments(work, "coordinator")
        # the coordinator serves the dashboard while the demo runs
        fleet_page = httpx.get(f"http://127.0.0.1:{web_port}/fleet", timeout=10)
        assert fleet_page.status_code == 200 and "<h2>Hosts</h2>" in fleet_page.text
        out, err = proc.communicate(timeout=540)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    # the agents get their certificate and the broker, never the operator token or the store's keys
    secrets = {"MQFLEET_OPERATOR_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert [secrets & set(env) for env in agents] == [set(), set()]
    assert all(env.get("MQFLEET_CERT") for env in agents)
    assert coordinator and "MQFLEET_OPERATOR_TOKEN" in coordinator[0]
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in sorted(work.glob("*.log")))
    assert proc.returncode == 0, f"{out[-4000:]}\n{err[-2000:]}\n{logs}"
    assert "every runnable job completed" in out
    assert "mutual TLS" in out, out[:2000]
    assert f"http://127.0.0.1:{web_port}/" in out.replace("\n", ""), out[:2000]
    # the results table starts on a line of its own, within 80 columns, every job name whole
    lines = out.splitlines()
    title = next(i for i, line in enumerate(lines) if "mqfleet demo: results" in line)
    assert lines[title].startswith("mqfleet demo: results"), out[-3000:]
    table = "\n".join(lines[title:])
    assert "…" not in table and all(len(line) <= 80 for line in lines[title:]), table
    names = job_names(table)
    for name in ("gbt-random", "mlp-gpu", "gbt-sweep-learning_rate=0.05-max_depth=3"):
        assert name in names, table
    # The CUDA-only job stays pending on a machine without a GPU, and says why.
    assert "waits:" in out and "cuda" in out.lower(), out[-3000:]
    conf = (work / "broker" / "mosquitto.conf").read_text()
    assert "require_certificate true" in conf and "use_identity_as_username true" in conf
    assert "Traceback" not in logs, logs
    assert _processes_mentioning(work) == []


def _env() -> dict[str, str]:
    # The demo's processes must not pick up a broker or certificates from the caller's environment.
    return {k: v for k, v in os.environ.items()
            if k not in ("MQFLEET_BROKER", "MQFLEET_CA", "MQFLEET_CERT", "MQFLEET_KEY", "MQFLEET_PREFIX")}

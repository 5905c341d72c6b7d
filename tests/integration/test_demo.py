"""`mqfleet demo` end to end: the whole fleet over mutual TLS with real training, then nothing left running.

Runs `python -m mqfleet demo` as an operator would (about 90 s on 2 cores) and checks its outcome
and that every process it started (mosquitto, weed, the coordinator, the agents, trainers) is gone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from mqfleet.local.broker import LocalBroker
from tests.fixtures.common import require_real_part

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


@pytest.mark.timeout(600)
def test_demo_completes_every_runnable_job_over_tls_and_leaves_no_process_behind(tmp_path: Path) -> None:
    require_real_part(LocalBroker.available(), "mosquitto")
    work = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "mqfleet", "demo", "--dir", str(work), "--timeout", "400"],
                            cwd=ROOT, capture_output=True, text=True, timeout=540, env={"COLUMNS": "200", **_env()})
    out = result.stdout
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in sorted(work.glob("*.log")))
    assert result.returncode == 0, f"{out[-4000:]}\n{result.stderr[-2000:]}\n{logs}"
    assert "every runnable job completed" in out
    assert "mutual TLS" in out, out[:2000]
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

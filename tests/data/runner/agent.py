"""Runner test "agent": starts one TrainerRun with a pidfile, prints what it started, then blocks until killed.

argv: PIDFILE_DIR OUT_DIR TRAINER_ARGS...
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from mqfleet.agent.runner import TrainerRun

ready = threading.Event()


def on_line(line: str) -> None:
    print(line, flush=True)
    if line == "ready":
        ready.set()


run = TrainerRun(
    argv=[sys.executable, *sys.argv[3:]],
    cwd=Path.cwd(),
    env=dict(os.environ),
    out_dir=Path(sys.argv[2]),
    on_line=on_line,
    pidfile_dir=Path(sys.argv[1]),
)
run.start()
print(f"trainer {run.pid}", flush=True)
ready.wait(30)
print("agent ready", flush=True)
run.wait(120)

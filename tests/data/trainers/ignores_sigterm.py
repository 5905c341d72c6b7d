"""Test workload: a trainer that ignores SIGTERM and has a child process, for cancel and kill-tree tests.

Writes its PID to `trainer.pid` and its child's (`sleep`, which inherits the ignored SIGTERM) to `child.pid`,
in $MQFLEET_PID_DIR if set, else in $MQFLEET_OUT_DIR; each file appears whole (written, then renamed).
Then prints one progress line and sleeps, bounded by --hold_s (default 300 s), so it never outlives a test run.
Only SIGKILL ends it early.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def write_pid(folder: Path, name: str, pid: int) -> None:
    partial = folder / f".{name}.partial"
    partial.write_text(f"{pid}\n", encoding="utf-8")
    partial.replace(folder / name)


def main() -> int:
    hold_s = 300.0
    args = sys.argv[1:]
    if "--hold_s" in args[:-1]:
        hold_s = float(args[args.index("--hold_s") + 1])
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    folder = Path(os.environ.get("MQFLEET_PID_DIR") or os.environ["MQFLEET_OUT_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    # The ignored disposition survives exec, so the child shrugs off SIGTERM too: only a tree kill ends both.
    child = subprocess.Popen(["sleep", str(int(hold_s))])
    # trainer.pid last: a test that sees it can read child.pid too.
    write_pid(folder, "child.pid", child.pid)
    write_pid(folder, "trainer.pid", os.getpid())
    print("@mqfleet " + json.dumps({"progress": 0.1}), flush=True)
    deadline = time.monotonic() + hold_s
    while time.monotonic() < deadline:
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    child.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())

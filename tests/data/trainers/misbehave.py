"""Test workload: a trainer that misbehaves in the way `--mode` names. Standard library only.

- `silent`: prints one line, starts a child process that sleeps, then sleeps silently for ever (a hang);
- `chatty_then_silent`: prints a line every 0.2 s for `--chatty_s` seconds, then sleeps silently for ever;
- `empty`: exits 0 having written nothing;
- `partial`: writes `result.json` only, and exits 0;
- `fail`: exits 1.
The child inherits $MQFLEET_OUT_DIR, so `trainer_processes()` finds it: tests check the whole tree is gone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def flag(name: str, default: str) -> str:
    argv = sys.argv[1:]
    return argv[argv.index(f"--{name}") + 1] if f"--{name}" in argv[:-1] else default


def main() -> int:
    spec_path = Path(os.environ["MQFLEET_SPEC"])
    out_dir = Path(os.environ["MQFLEET_OUT_DIR"])
    mode = flag("mode", "silent")
    print(f"misbehave.py: mode {mode}, attempt {json.loads(spec_path.read_text()).get('attempt')}", flush=True)
    if mode == "empty":
        return 0
    if mode == "partial":
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "result.json").write_text("{}\n", encoding="utf-8")
        return 0
    if mode == "fail":
        return 1
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    if mode == "chatty_then_silent":
        deadline = time.monotonic() + float(flag("chatty_s", "2"))
        while time.monotonic() < deadline:
            print("@mqfleet " + json.dumps({"progress": 0.1}), flush=True)
            time.sleep(0.2)
    time.sleep(600)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Test workload: a trainer that takes --mib MiB of memory (touched, so it is resident) in 16 MiB steps, holds
it for --hold_s seconds, then writes `result.json` and exits 0. Past a memory limit the agent stops it first
(agent/limits.py). Standard library only.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

STEP_MIB = 16


def flag(argv: list[str], name: str, default: float) -> float:
    option = f"--{name}"
    return float(argv[argv.index(option) + 1]) if option in argv[:-1] else default


def main() -> int:
    mib = int(flag(sys.argv[1:], "mib", 64))
    hold_s = flag(sys.argv[1:], "hold_s", 1.0)
    held: list[bytearray] = []
    for taken in range(STEP_MIB, mib + STEP_MIB, STEP_MIB):
        held.append(bytearray(b"\1" * (STEP_MIB * 1024 * 1024)))  # written, so every page is resident
        print(f"holding {taken} MiB", flush=True)
        time.sleep(0.05)
    time.sleep(hold_s)
    out = Path(os.environ["MQFLEET_OUT_DIR"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps({"mib": mib}) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

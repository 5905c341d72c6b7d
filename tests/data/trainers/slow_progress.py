"""Test workload: a trainer that reports progress every --interval_s (default 0.2 s) for --steps steps (default 10).

For lease renewal and progress forwarding tests. Writes `result.json` (steps and seed) to $MQFLEET_OUT_DIR
at the end and exits 0. Standard library only.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def flag(argv: list[str], name: str, default: float) -> float:
    option = f"--{name}"
    return float(argv[argv.index(option) + 1]) if option in argv[:-1] else default


def main() -> int:
    spec = json.loads(Path(os.environ["MQFLEET_SPEC"]).read_text(encoding="utf-8"))
    hyper = spec.get("hyper") or {}
    steps = int(flag(sys.argv[1:], "steps", float(hyper.get("steps", 10))))
    interval_s = flag(sys.argv[1:], "interval_s", float(hyper.get("interval_s", 0.2)))
    for step in range(1, steps + 1):
        time.sleep(interval_s)
        progress = {"progress": round(step / steps, 4), "epoch": step, "loss": round(1.0 / step, 6)}
        print("@mqfleet " + json.dumps(progress), flush=True)
    out_dir = Path(os.environ["MQFLEET_OUT_DIR"])
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"steps": steps, "seed": spec.get("seed", 0)}
    (out_dir / "result.json").write_text(json.dumps(result, sort_keys=True) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

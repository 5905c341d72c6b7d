"""Test workload: a trainer that prints an output line and a progress report every --interval_s (default 0.3 s) for
--steps steps (default 20), so a follower sees its output arrive while it runs. Writes `result.json` at the end.
Standard library only."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main() -> int:
    spec = json.loads(Path(os.environ["MQFLEET_SPEC"]).read_text(encoding="utf-8"))
    hyper = spec.get("hyper") or {}
    steps, interval_s = int(hyper.get("steps", 20)), float(hyper.get("interval_s", 0.3))
    for step in range(1, steps + 1):
        time.sleep(interval_s)
        print(f"talker step {step} of {steps}", flush=True)
        print("@mqfleet " + json.dumps({"progress": round(step / steps, 4), "epoch": step, "loss": round(1.0 / step, 6),
                                        "metrics": {"acc": round(1 - 1.0 / (step + 1), 6)}}), flush=True)
    out_dir = Path(os.environ["MQFLEET_OUT_DIR"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "result.json").write_text(json.dumps({"steps": steps}) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

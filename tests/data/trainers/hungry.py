"""Test workload: holds --mib MiB (default 120) of touched memory while it burns --cpu_s seconds
(default 1.0) of CPU, prints --lines numbered lines (default 0) and, with --reports N, N progress
reports with a falling loss. For usage, durable log and progress history tests. Writes `result.json`
to $MQFLEET_OUT_DIR and exits 0. Standard library only.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def flag(argv: list[str], hyper: dict[str, float], name: str, default: float) -> float:
    option = f"--{name}"
    if option in argv[:-1]:
        return float(argv[argv.index(option) + 1])
    return float(hyper.get(name, default))


def main() -> int:
    spec_path = os.environ.get("MQFLEET_SPEC")
    hyper = json.loads(Path(spec_path).read_text(encoding="utf-8")).get("hyper") or {} if spec_path else {}
    args = sys.argv[1:]
    mib = int(flag(args, hyper, "mib", 120))
    cpu_s = flag(args, hyper, "cpu_s", 1.0)
    lines = int(flag(args, hyper, "lines", 0))
    reports = int(flag(args, hyper, "reports", 0))
    hold = bytearray(mib * 1024 * 1024)
    for i in range(0, len(hold), 4096):  # touch every page so it is resident
        hold[i] = 1
    start = time.process_time()
    spin = 0
    while time.process_time() - start < cpu_s:
        spin += 1
    for i in range(1, lines + 1):
        print(f"line {i} of {lines}", flush=True)
    for i in range(1, reports + 1):
        report = {"progress": round(i / reports, 4), "epoch": i, "loss": round(2.0 / (i + 1), 6),
                  "metrics": {"accuracy": round(1 - 1.0 / (i + 1), 6), "phase": "train"}}
        print("@mqfleet " + json.dumps(report), flush=True)
        time.sleep(0.01)
    out_dir = Path(os.environ.get("MQFLEET_OUT_DIR", "."))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "result.json").write_text(json.dumps({"mib": mib, "cpu_s": cpu_s, "held": len(hold)}), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

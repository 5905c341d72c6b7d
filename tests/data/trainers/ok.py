"""Test workload: a trainer that succeeds, with deterministic output, optionally slow (--sleep S) or big (--size_kib N).

Reads the spec in $MQFLEET_SPEC, prints three progress lines, writes `result.json` (the spec's hyper with the
flags applied, and its seed) and, with --size_kib, `blob.bin` of seeded bytes to $MQFLEET_OUT_DIR; exits 0.
Identical jobs give identical folders, so the store can deduplicate them. Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path


def parse_flags(argv: list[str]) -> dict[str, object]:
    """`--name value` pairs; a value that reads as JSON (numbers, true/false) takes that type."""
    flags: dict[str, object] = {}
    for name, value in zip(argv, argv[1:], strict=False):
        if not name.startswith("--") or value.startswith("--"):
            continue
        try:
            flags[name[2:]] = json.loads(value)
        except ValueError:
            flags[name[2:]] = value
    return flags


def seeded_bytes(seed: int, size: int) -> bytes:
    blocks = (hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range(-(-size // 32)))
    return b"".join(blocks)[:size]


def main() -> int:
    spec = json.loads(Path(os.environ["MQFLEET_SPEC"]).read_text(encoding="utf-8"))
    out_dir = Path(os.environ["MQFLEET_OUT_DIR"])
    out_dir.mkdir(parents=True, exist_ok=True)
    hyper = {**(spec.get("hyper") or {}), **parse_flags(sys.argv[1:])}
    sleep_s = float(hyper.get("sleep", 0) or 0)
    print(f"ok.py: job {spec.get('id', '?')} attempt {spec.get('attempt', '?')}", flush=True)
    for step in (1, 2, 3):
        if sleep_s:
            time.sleep(sleep_s)
        print("@mqfleet " + json.dumps({"progress": round(step / 3, 4), "epoch": step, "loss": 1.0 / step}), flush=True)
    result = {"hyper": hyper, "seed": spec.get("seed", 0)}
    (out_dir / "result.json").write_text(json.dumps(result, sort_keys=True) + "\n", encoding="utf-8")
    size_kib = int(hyper.get("size_kib", 0) or 0)
    if size_kib:
        (out_dir / "blob.bin").write_bytes(seeded_bytes(int(spec.get("seed", 0)), size_kib * 1024))
    print("@mqfleet " + json.dumps({"progress": 1.0, "metrics": {"score": 1.0}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

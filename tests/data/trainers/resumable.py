"""Test workload: a trainer that checkpoints every step to $MQFLEET_CHECKPOINT_DIR and resumes from it.

Runs --steps steps (default 20) of --interval_s seconds (default 0.2). Its state (the step reached and a
running digest of seed and steps) goes to `state.json` in the checkpoint folder after every step, written
then renamed. At start it reads that file back if there is one and says `resumed at step K` (else
`started at step 0`). With --fail_at N, a run that started at step 0 exits 1 after step N (a crash
that a resumed run gets past). The output `result.json` holds only the steps, the seed and the final digest, so a
resumed run's artifact is byte-identical to an uninterrupted one. With --save_every N it saves only every N steps
(the work a hard stop loses is then up to N steps), and with --state_mib M each save also writes M MiB of
weights (`weights.bin`, random bytes) beside the state, as a real model's checkpoint would. Standard library only.
"""

from __future__ import annotations

import hashlib
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
    steps = int(flag(sys.argv[1:], "steps", 20))
    interval_s = flag(sys.argv[1:], "interval_s", 0.2)
    fail_at = int(flag(sys.argv[1:], "fail_at", 0))
    save_every = max(1, int(flag(sys.argv[1:], "save_every", 1)))
    state_mib = int(flag(sys.argv[1:], "state_mib", 0))
    seed = int(spec.get("seed", 0))
    folder = os.environ.get("MQFLEET_CHECKPOINT_DIR")
    state_path = Path(folder) / "state.json" if folder else None
    step, digest = 0, hashlib.sha256(str(seed).encode()).hexdigest()
    started_at = 0
    if state_path is not None and state_path.exists():
        state = json.loads(state_path.read_text(encoding="utf-8"))
        step, digest = int(state["step"]), str(state["digest"])
        started_at = step
        print(f"resumed at step {step}", flush=True)
    else:
        print(f"started at step 0 (checkpoint folder: {'yes' if folder else 'none'})", flush=True)
    while step < steps:
        time.sleep(interval_s)
        step += 1
        digest = hashlib.sha256(f"{digest}:{step}".encode()).hexdigest()
        if state_path is not None and (step % save_every == 0 or step == steps):
            if state_mib:
                weights = state_path.with_name("weights.bin.tmp")
                weights.write_bytes(os.urandom(state_mib * 1024 * 1024))
                os.replace(weights, state_path.with_name("weights.bin"))
            tmp = state_path.with_name("state.json.tmp")
            tmp.write_text(json.dumps({"step": step, "digest": digest}), encoding="utf-8")
            os.replace(tmp, state_path)
        print("@mqfleet " + json.dumps({"progress": round(step / steps, 4), "epoch": step}), flush=True)
        if started_at == 0 and step == fail_at:
            print(f"crashing at step {step} as told", flush=True)
            return 1
    out_dir = Path(os.environ["MQFLEET_OUT_DIR"])
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"steps": steps, "seed": seed, "digest": digest}
    (out_dir / "result.json").write_text(json.dumps(result, sort_keys=True) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

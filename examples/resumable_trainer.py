"""A minimal resumable trainer: the checkpoint contract of mqfleet in a few dozen lines (docs/INTERNALS.md, "Checkpoints").

Declare it in the manifest and run it like any command trainer:

    [trainers.counter]
    command = ["{python}", "examples/resumable_trainer.py"]
    [trainers.counter.hyper]
    steps = { type = "int", default = 100, min = 1 }

The contract:
- `$MQFLEET_CHECKPOINT_DIR` is empty on a job's first attempt. On a later attempt, on any host, it holds what
  the job last saved there (the agent syncs it to the store while the trainer runs and once more when an
  attempt is interrupted). It is unset for a trainer declared `resumable = false`.
- Save state there atomically: write a temporary file, then rename it over the old one. The agent copies
  the folder while the trainer runs; a rename guarantees it copies the old state or the new one, never half.
- At start, read the state back if it is there, and carry on from it.
- Make the result depend only on the job (its seed and hyperparameters), not on where it resumed, and a
  resumed run produces the same artifact as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main() -> int:
    steps = int(sys.argv[sys.argv.index("--steps") + 1]) if "--steps" in sys.argv else 100
    folder = os.environ.get("MQFLEET_CHECKPOINT_DIR")
    state_file = Path(folder) / "state.json" if folder else None

    step, total = 0, 0
    if state_file is not None and state_file.exists():
        saved = json.loads(state_file.read_text(encoding="utf-8"))
        step, total = saved["step"], saved["total"]
        print(f"resuming at step {step}", flush=True)

    while step < steps:
        time.sleep(0.1)  # the training work of one step
        step += 1
        total += step
        if state_file is not None:
            tmp = state_file.with_name("state.json.tmp")
            tmp.write_text(json.dumps({"step": step, "total": total}), encoding="utf-8")
            os.replace(tmp, state_file)  # atomic: write, then rename
        print("@mqfleet " + json.dumps({"progress": step / steps, "epoch": step}), flush=True)

    out = Path(os.environ["MQFLEET_OUT_DIR"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps({"steps": steps, "total": total}) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

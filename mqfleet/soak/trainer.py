"""The soak's trainer: light, sleep-dominated, with output that is a pure function of the job.

Run by agents as `python -m mqfleet.soak.trainer --sleep S`. It reports progress
about once a second and writes `result.json` naming the job (name, seed, hyper),
never the attempt or the host, so every attempt of a job packs to the same bytes
and the soak can check that each stored artifact belongs to the job that
recorded it. Standard library only, so it starts fast on a loaded machine.

It is resumable: it keeps the seconds it has slept in `$MQFLEET_CHECKPOINT_DIR` (written then renamed,
every step) and a later attempt sleeps only what is left, saying where it resumed; its output is the
same either way.

The soak's `hang` fault drops a file named after the job in $MQFLEET_SOAK_HANG_DIR;
the trainer that finds it removes it (so only one attempt hangs) and then stops
printing without exiting, as a trainer stuck on a dead mount would.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from mqfleet import defaults

#: Seconds between progress lines; also the granularity of the sleep.
STEP_S = 1.0


def _told_to_hang(name: str) -> bool:
    folder = os.environ.get(defaults.ENV_SOAK_HANG_DIR)
    if not folder:
        return False
    try:
        (Path(folder) / name).unlink()  # whoever removes it hangs; a retry finds nothing
    except OSError:
        return False
    return True


def _sleep_flag(argv: list[str]) -> float:
    for name, value in zip(argv, argv[1:], strict=False):
        if name == "--sleep":
            return max(0.0, float(value))
    return 0.0


def _slept_before(state: Path | None) -> float:
    """Seconds an earlier attempt slept, from the checkpoint folder; 0 without one."""
    if state is None or not state.exists():
        return 0.0
    try:
        return max(0.0, float(json.loads(state.read_text(encoding="utf-8"))["slept_s"]))
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def _save_slept(state: Path | None, slept_s: float) -> None:
    if state is None:
        return
    tmp = state.with_name(state.name + ".tmp")
    tmp.write_text(json.dumps({"slept_s": round(slept_s, 3)}), encoding="utf-8")
    os.replace(tmp, state)  # atomic: the agent's sync sees the old state or the new one


def main(argv: list[str]) -> int:
    spec = json.loads(Path(os.environ[defaults.ENV_SPEC]).read_text(encoding="utf-8"))
    out_dir = Path(os.environ[defaults.ENV_OUT_DIR])
    out_dir.mkdir(parents=True, exist_ok=True)
    total_s = _sleep_flag(argv)
    folder = os.environ.get(defaults.ENV_CHECKPOINT_DIR)
    state = Path(folder) / "slept.json" if folder else None
    slept_s = min(total_s, _slept_before(state))
    deadline = time.monotonic() + total_s - slept_s
    print(f"soak trainer: job {spec.get('name')} attempt {spec.get('attempt')} sleeps {total_s:.1f}s", flush=True)
    if slept_s > 0:
        print(f"soak trainer: resumed at {slept_s:.1f}s of {total_s:.1f}s", flush=True)
    while (left := deadline - time.monotonic()) > 0:
        if _told_to_hang(str(spec.get("name"))):
            print("soak trainer: hanging (no more output) as the soak asked", flush=True)
            while True:  # silent until the agent's stall_s limit stops it
                time.sleep(STEP_S)
        time.sleep(min(STEP_S, left))
        _save_slept(state, total_s - max(0.0, deadline - time.monotonic()))
        done = 1.0 - max(0.0, deadline - time.monotonic()) / total_s
        print(defaults.PROGRESS_PREFIX, json.dumps({"progress": round(done, 3)}), flush=True)
    result = {"name": spec.get("name"), "seed": spec.get("seed"), "hyper": spec.get("hyper") or {}}
    (out_dir / "result.json").write_text(json.dumps(result, sort_keys=True) + "\n", encoding="utf-8")
    print(defaults.PROGRESS_PREFIX, json.dumps({"progress": 1.0, "metrics": {"slept_s": total_s}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""What a finished trainer is judged by: why it was stopped (`Ending`), the limits from its grant
(`timeout_s`, `stall_s`) and the outputs it had to write (the trainer's `outputs` globs; docs/INTERNALS.md,
"Trainers")."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from enum import Enum
from pathlib import Path

from mqfleet.lifecycle import Cause
from mqfleet.wire.topics import JsonValue


class Ending(str, Enum):
    """Why a job run stopped before its trainer finished on its own."""

    CANCELLED = "cancelled"  # the coordinator cancelled the job
    LEASE_LOST = "lease_lost"  # the lease is no longer ours
    SHUTDOWN = "shutdown"  # the agent is stopping and hands the job back
    TIMEOUT = "timeout"  # the attempt ran past the job's timeout_s
    STALLED = "stalled"  # the trainer was silent (no output line, no progress) for stall_s
    PREEMPTED = "preempted"  # the owner's policy or pause takes the host back (agent/policy.py)
    OOM = "oom"  # the trainer's tree went past its memory limit (agent/limits.py)

    @property
    def cause(self) -> Cause | None:
        """The cause this agent reports in its `fail` request; None when it reports nothing (the
        coordinator already knows: it cancelled the job or took the lease away)."""
        return _CAUSE_OF_ENDING.get(self)


#: A clean shutdown hands the job back as `preempted` (older agents said `shutdown`; both are free).
_CAUSE_OF_ENDING = {Ending.SHUTDOWN: Cause.PREEMPTED, Ending.TIMEOUT: Cause.TIMEOUT, Ending.STALLED: Cause.STALLED,
                    Ending.PREEMPTED: Cause.PREEMPTED, Ending.OOM: Cause.OOM}


def limit_of(spec: Mapping[str, JsonValue], name: str) -> float | None:
    """A job's `timeout_s` or `stall_s` from the grant's spec; None when unset or not a positive number."""
    value = spec.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    return float(value)


def missing_outputs(out_dir: Path, globs: Iterable[str]) -> list[str]:
    """What a finished trainer failed to produce: ["(any file)"] for an empty folder, else the globs
    that match no file. Globs are relative to `out_dir`; `**` reaches into subfolders."""
    if not any(files for _, _, files in os.walk(out_dir)):
        return ["(any file)"]
    missing = []
    for glob in globs:
        try:
            found = any(p.is_file() for p in out_dir.glob(glob))
        except (ValueError, OSError):  # a glob the manifest check let through but this OS refuses
            found = False
        if not found:
            missing.append(glob)
    return missing


def missing_message(missing: list[str]) -> str:
    if missing == ["(any file)"]:
        return "trainer exited 0 but wrote nothing to its output folder; nothing was uploaded"
    return (
        f"trainer exited 0 but did not produce its declared output{'s' if len(missing) > 1 else ''}: "
        f"{', '.join(missing)} (no matching file in its output folder); nothing was uploaded"
    )

"""How gently a trainer runs and how much memory it may take (docs/OPERATIONS.md, "Memory limits").

Priority: a trainer runs at the owner policy's niceness (10 by default) and I/O priority (`ionice`
best-effort 7), set on its process right after the spawn, while the PDEATHSIG wrapper is still starting
and before the trainer's own code runs, so everything it forks inherits them; on Windows it is created in
`BELOW_NORMAL_PRIORITY_CLASS` (IDLE for a niceness of 15 or more).

Memory: the limit of one attempt is the smaller of the job's `max_memory_gib` and the host's. It is enforced,
in this order of preference, by
- a cgroup v2 memory controller the agent may use (systemd's delegated cgroup, `Delegate=yes`, or any
  writable cgroup v2 tree): the trainer's own child cgroup with `memory.max` set and swap off; the kernel
  kills the tree when it is past the limit, and `memory.events` says so;
- on Windows, a Job Object with a job memory limit (allocations past it fail);
- otherwise a watchdog: the runner samples the resident memory of the whole process tree four times a
  second and kills the tree the first time it is past the limit (a spike shorter than a sample can pass).
Whichever applied is named in the attempt's error: `out of memory: ... (limit 0.25 GiB, peak 0.27 GiB; watchdog)`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import psutil

from mqfleet.wire.owner import DEFAULT_IONICE, DEFAULT_NICE, ionice_of

logger = logging.getLogger(__name__)

GIB = 1024**3
IS_WINDOWS = sys.platform == "win32"
IS_LINUX = sys.platform.startswith("linux")
#: Where cgroup v2 is looked for (a test points it at a folder of its own).
CGROUP_MOUNTS = Path("/proc/self/mounts")
CGROUP_SELF = Path("/proc/self/cgroup")
#: The agent's own leaf, when it has to leave its delegated cgroup so that the trainers' can have the
#: memory controller (cgroup v2 lets only cgroups without processes hand controllers to children).
_AGENT_LEAF = "agent"
_BELOW_NORMAL_PRIORITY_CLASS = 0x00004000
_IDLE_PRIORITY_CLASS = 0x00000040
#: A Windows trainer whose job used this share of its limit and then failed ran out of memory.
_JOB_OBJECT_FULL = 0.97


@dataclass(frozen=True)
class LimitSettings:
    """The host's side of the limits: its owner policy's priority and memory cap."""

    nice: int = DEFAULT_NICE
    ionice: str = DEFAULT_IONICE
    #: the most memory one trainer may use on this host (agent config or the manifest's defaults); None: no cap
    max_memory_gib: float | None = None

    def for_job(self, max_memory_gib: float | None, name: str) -> TrainerLimits:
        """The limits of one attempt: the smaller of the job's `max_memory_gib` and the host's."""
        caps = [(g, why) for g, why in ((max_memory_gib, "the job's max_memory_gib"),
                                        (self.max_memory_gib, "the host's max_memory_gib")) if g]
        gib, why = min(caps, default=(None, ""), key=lambda c: c[0] or 0)
        return TrainerLimits(nice=self.nice, ionice=self.ionice, memory_bytes=int(gib * GIB) if gib else None,
                             why=why, name=name)


class TrainerLimits:
    """One trainer's priority and memory limit: applied at its start, judged while it runs and at its end."""

    def __init__(self, *, nice: int, ionice: str, memory_bytes: int | None, why: str = "", name: str = "trainer",
                 cgroup_root: Path | None = None) -> None:
        self.nice = nice
        self.ionice = ionice
        self.memory_bytes = memory_bytes
        self.why = why
        self.name = name
        #: how the memory limit is enforced: `cgroup v2`, `job object`, `watchdog`, or `none`
        self.mechanism = "none"
        self.peak_bytes = 0
        self._killed_for_memory = False
        self._cgroup: Path | None = None
        self._cgroup_root = cgroup_root
        self._job_object: object | None = None

    @property
    def creationflags(self) -> int:
        """Windows: the priority class the trainer is created in."""
        if not IS_WINDOWS:
            return 0
        return _IDLE_PRIORITY_CLASS if self.nice >= 15 else _BELOW_NORMAL_PRIORITY_CLASS if self.nice > 0 else 0

    def attach(self, pid: int) -> None:
        """Right after the spawn: lower the process's priority and put it under the memory limit."""
        self._set_priority(pid)
        if self.memory_bytes is None:
            return
        if IS_LINUX and self._into_cgroup(pid):
            self.mechanism = "cgroup v2"
        elif IS_WINDOWS and self._into_job_object(pid):
            self.mechanism = "job object"
        else:
            self.mechanism = "watchdog"
        logger.info("trainer %d: memory limit %s (%s), enforced by %s", pid, _gib(self.memory_bytes), self.why,
                    self.mechanism)

    def over_memory(self, rss_bytes: int) -> bool:
        """The watchdog's sample of the tree's resident memory; True (once) when it is past the limit: kill it."""
        self.peak_bytes = max(self.peak_bytes, rss_bytes)
        if self.mechanism != "watchdog" or self.memory_bytes is None or self._killed_for_memory:
            return False
        if rss_bytes > self.memory_bytes:
            self._killed_for_memory = True
            return True
        return False

    def out_of_memory(self, exit_code: int | None) -> str | None:
        """After the trainer ended: the attempt's error when memory ended it (limit, peak, mechanism), else None.
        Also removes its cgroup."""
        if self.memory_bytes is None:
            return None
        hit = self._killed_for_memory
        if self.mechanism == "cgroup v2":
            hit = self._cgroup_oom() or hit
        elif self.mechanism == "job object":
            hit = exit_code not in (0, None) and self._job_peak() >= _JOB_OBJECT_FULL * self.memory_bytes
        if not hit:
            return None
        return (f"out of memory: the trainer's processes used {_gib(self.peak_bytes)} at their peak, past the limit of "
                f"{_gib(self.memory_bytes)} ({self.why}; enforced by {self.mechanism}); stopped")

    # --- priority -----------------------------------------------------------------------------------

    def _set_priority(self, pid: int) -> None:
        try:
            proc = psutil.Process(pid)
            if not IS_WINDOWS and self.nice > 0:  # Windows: the priority class it was created in
                proc.nice(self.nice)
            io_class, level = ionice_of(self.ionice)
            if io_class == "none" or not hasattr(proc, "ionice"):
                return
            if IS_WINDOWS:
                proc.ionice(psutil.IOPRIO_VERYLOW if io_class == "idle" else psutil.IOPRIO_LOW)
            elif io_class == "idle":
                proc.ionice(psutil.IOPRIO_CLASS_IDLE)
            else:
                proc.ionice(psutil.IOPRIO_CLASS_BE, level)
        except (psutil.Error, OSError, ValueError) as e:
            logger.warning("trainer %d: could not lower its priority (%s); it runs at the agent's", pid, e)

    # --- cgroup v2 ------------------------------------------------------------------------------------

    def _into_cgroup(self, pid: int) -> bool:
        """Move the trainer into a child cgroup of the agent's with memory.max set; False where that is not possible."""
        base = self._cgroup_root or own_cgroup_v2()
        if base is None or self.memory_bytes is None:
            return False
        try:
            if "memory" not in (base / "cgroup.controllers").read_text().split():
                return False
            if "memory" not in (base / "cgroup.subtree_control").read_text().split():
                # the agent's own processes leave for a leaf, then the controller can be handed down
                leaf = base / _AGENT_LEAF
                leaf.mkdir(exist_ok=True)
                for line in (base / "cgroup.procs").read_text().split():
                    with suppress(OSError):
                        (leaf / "cgroup.procs").write_text(line)
                (base / "cgroup.subtree_control").write_text("+memory")
            group = base / f"trainer-{self.name}-{pid}"
            group.mkdir(exist_ok=True)
            (group / "memory.max").write_text(str(self.memory_bytes))
            for name, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
                if (group / name).exists():
                    (group / name).write_text(value)
            (group / "cgroup.procs").write_text(str(pid))
        except OSError as e:
            logger.info("trainer %d: no cgroup v2 memory limit here (%s); the watchdog enforces it", pid, e)
            return False
        self._cgroup = group
        return True

    def _cgroup_oom(self) -> bool:
        group = self._cgroup
        if group is None:
            return False
        killed = False
        with suppress(OSError, ValueError):
            events = dict(line.split() for line in (group / "memory.events").read_text().splitlines() if line.strip())
            killed = int(events.get("oom_kill", 0)) > 0 or int(events.get("oom_group_kill", 0)) > 0
        with suppress(OSError, ValueError):
            self.peak_bytes = max(self.peak_bytes, int((group / "memory.peak").read_text()))
        for _ in range(50):  # bounded: the kernel empties a cgroup of a reaped tree within moments
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.02)
        self._cgroup = None
        return killed

    # --- Windows Job Object ---------------------------------------------------------------------------

    def _into_job_object(self, pid: int) -> bool:
        try:
            from mqfleet.agent.windows_limits import JobObject

            self._job_object = JobObject.limit_memory(pid, self.memory_bytes or 0)
            return True
        except OSError as e:
            logger.info("trainer %d: no Job Object memory limit (%s); the watchdog enforces it", pid, e)
            return False

    def _job_peak(self) -> int:
        job = self._job_object
        if job is None:
            return 0
        from mqfleet.agent.windows_limits import JobObject

        assert isinstance(job, JobObject)
        self.peak_bytes = max(self.peak_bytes, job.peak_bytes())
        job.close()
        return self.peak_bytes


def own_cgroup_v2() -> Path | None:
    """The agent's own cgroup v2 folder when it may create children there (writable), else None. Only the
    unified line of /proc/self/cgroup counts: a hybrid system's v1 memory controller is not used."""
    if not IS_LINUX:
        return None
    try:
        mount = next((line.split()[1] for line in CGROUP_MOUNTS.read_text().splitlines()
                      if len(line.split()) > 2 and line.split()[2] == "cgroup2"), None)
        path = next((line.split(":", 2)[2] for line in CGROUP_SELF.read_text().splitlines() if line.startswith("0::")),
                    None)
    except OSError:
        return None
    if mount is None or path is None:
        return None
    folder = Path(mount) / path.strip().lstrip("/")
    return folder if folder.is_dir() and os.access(folder, os.W_OK) else None


def memory_mechanism() -> str:
    """Which mechanism a memory limit would use on this host: `cgroup v2`, `job object` or `watchdog`."""
    if IS_WINDOWS:
        return "job object"
    base = own_cgroup_v2()
    with suppress(OSError):
        if base is not None and "memory" in (base / "cgroup.controllers").read_text().split():
            return "cgroup v2"
    return "watchdog"


def _gib(size: int) -> str:
    return f"{size / GIB:.2f} GiB"

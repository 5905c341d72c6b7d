"""Pidfiles of running trainers and the reaping of what a crashed agent left alive.

PDEATHSIG (`mqfleet.agent.spawn`) reaches a trainer's direct child only. Each run
with a `pidfile_dir` keeps a pidfile (pid, create time, pgid, known descendants)
there while it runs (`record_run()`), and `reap_leftovers()` at the next agent
start kills what a crash left alive, matching create times so a recycled PID is
never killed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import suppress
from pathlib import Path
from typing import Protocol

import psutil

from mqfleet.agent.spawn import IS_WINDOWS, pgid_of

logger = logging.getLogger(__name__)

# How often a trainer's watcher looks for its exit and a reaper for its kills' effect.
POLL_S = 0.05
# Bounded wait for a SIGKILLed tree to vanish.
KILL_WAIT_S = 10.0
# psutil derives create times from the boot time, which can drift by up to a second.
_CREATE_TIME_TOLERANCE_S = 1.0


class RecordedRun(Protocol):
    """What a pidfile records of a started trainer run (`TrainerRun` is one)."""

    @property
    def pid(self) -> int | None: ...

    create_time: float | None
    argv: list[str]
    started_ts: float | None

    def tree_info(self) -> list[tuple[int, float]]: ...


def pidfile_path(pidfile_dir: Path, pid: int) -> Path:
    return pidfile_dir / f"trainer-{pid}.json"


def record_run(pidfile_dir: Path, run: RecordedRun) -> Path:
    """Write the pidfile of a started run (atomically), so a later agent can reap what a crash leaves behind."""
    if run.pid is None or run.create_time is None:
        raise RuntimeError("only a started trainer run can be recorded")
    me = psutil.Process()
    record = {
        "pid": run.pid,
        "create_time": run.create_time,
        "pgid": None if IS_WINDOWS else run.pid,
        "tree": run.tree_info(),
        "argv": run.argv,
        "started_ts": run.started_ts,
        "agent_pid": me.pid,
        "agent_create_time": me.create_time(),
    }
    pidfile_dir.mkdir(parents=True, exist_ok=True)
    path = pidfile_path(pidfile_dir, run.pid)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record), encoding="utf-8")
    os.replace(tmp, path)
    return path


def reap_leftovers(pidfile_dir: Path) -> list[int]:
    """Kill every recorded trainer tree whose agent is gone; the pids killed.

    Records of a live agent (including this one) are left alone, as are processes
    whose create time does not match the record (their PID was recycled).
    """
    killed: list[int] = []
    if not pidfile_dir.is_dir():
        return killed
    for path in sorted(pidfile_dir.glob("trainer-*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            pid, create_time = int(record["pid"]), float(record["create_time"])
            pgid = record.get("pgid")
            tree = [(int(p), float(t)) for p, t in record.get("tree", [])]
            agent = (int(record.get("agent_pid", 0)), float(record.get("agent_create_time", 0.0)))
        except (OSError, ValueError, KeyError, TypeError) as e:
            logger.warning("reap: unreadable pidfile %s (%s); removing it", path, e)
            path.unlink(missing_ok=True)
            continue
        if agent[0] and _is_alive_as(*agent):
            continue
        procs = _leftover_processes(pid, create_time, pgid, tree)
        for p in procs:
            with suppress(psutil.Error):
                p.kill()
                killed.append(p.pid)
        for p in _wait_gone(procs, KILL_WAIT_S):
            logger.error("reap: process %d of trainer %d survived SIGKILL", p.pid, pid)
        if procs:
            logger.warning("reap: killed %d leftover process(es) of trainer %d: %s", len(procs), pid, sorted(killed))
        path.unlink(missing_ok=True)
    return sorted(killed)


def _is_live(p: psutil.Process) -> bool:
    """Running and not a zombie: a zombie is dead, and under a non-reaping init it may stay listed."""
    try:
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait (bounded) until every process is gone or a zombie; those still live."""
    deadline = time.monotonic() + timeout_s
    live = [p for p in procs if _is_live(p)]
    while live and time.monotonic() < deadline:
        time.sleep(POLL_S)
        live = [p for p in live if _is_live(p)]
    return live


def _process_as(pid: int, create_time: float) -> psutil.Process | None:
    """The process with this pid if it is the one that started at `create_time`, else None."""
    try:
        p = psutil.Process(pid)
        return p if abs(p.create_time() - create_time) <= _CREATE_TIME_TOLERANCE_S else None
    except psutil.Error:
        return None


def _is_alive_as(pid: int, create_time: float) -> bool:
    p = _process_as(pid, create_time)
    return p is not None and _is_live(p)


def _leftover_processes(
    pid: int, create_time: float, pgid: int | None, tree: list[tuple[int, float]]
) -> list[psutil.Process]:
    found: dict[int, psutil.Process] = {}
    leader = _process_as(pid, create_time)
    if leader is not None:
        found[pid] = leader
        with suppress(psutil.Error):
            found.update((c.pid, c) for c in leader.children(recursive=True))
    for child_pid, child_time in tree:
        child = _process_as(child_pid, child_time)
        if child is not None:
            found[child_pid] = child
    # A group outlives its dead leader while members live; but a stranger holding the leader's pid
    # may since have made a group of the same number.
    if pgid is not None and not IS_WINDOWS and (leader is not None or not psutil.pid_exists(pid)):
        for p in psutil.process_iter():
            with suppress(psutil.Error):
                if pgid_of(p.pid) == pgid and p.create_time() >= create_time - _CREATE_TIME_TOLERANCE_S:
                    found[p.pid] = p
    found.pop(os.getpid(), None)
    return [p for p in found.values() if _is_live(p)]

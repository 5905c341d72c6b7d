"""Starting a trainer so that it dies with its agent (Linux: PR_SET_PDEATHSIG).

A tiny wrapper (`python -c`) sets PR_SET_PDEATHSIG and exec()s the trainer in the
same process; a `preexec_fn` would run Python between fork and exec, which can
deadlock in a threaded agent (paho's network thread may hold a lock at fork time).
The kernel fires PDEATHSIG when the *thread* that forked the child exits, so every
trainer is forked by one long-lived spawner thread (`spawn()`), never by the
caller's thread, which may be short-lived. See `mqfleet.agent.runner` for the
other layers that keep a trainer's tree from outliving its job.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

IS_WINDOWS = os.name == "nt"
IS_LINUX = sys.platform.startswith("linux")

# argv: -c PPID PROGRAM ARGS...; 1 is PR_SET_PDEATHSIG. The ppid check closes the race where
# the agent died between fork and prctl, so the signal would never come.
PDEATHSIG_WRAPPER = """\
import ctypes, os, signal, sys
if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0) != 0:
    sys.stderr.write("mqfleet: prctl(PR_SET_PDEATHSIG) failed\\n")
if os.getppid() != int(sys.argv[1]):
    os._exit(137)
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as e:
    sys.stderr.write(f"mqfleet: cannot run {sys.argv[2]!r}: {e}\\n")
    os._exit(127)
"""

_T = TypeVar("_T")


def check_program(program: str, cwd: Path, env: Mapping[str, str]) -> None:
    if os.sep in program or (os.altsep and os.altsep in program):
        path = cwd / program
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise FileNotFoundError(f"trainer program not found or not executable: {path}")
    elif shutil.which(program, path=env.get("PATH", os.defpath)) is None:
        raise FileNotFoundError(f"trainer program {program!r} not found on the trainer's PATH")


def popen_trainer(argv: list[str], cwd: Path, env: Mapping[str, str], *,
                  as_user: Mapping[str, Any] | None = None, priority_flags: int = 0) -> subprocess.Popen[str]:
    """Start a trainer: in a session (POSIX) or process group (Windows) of its own, so the whole tree can be
    signalled at once; on Linux through the PDEATHSIG wrapper, so it dies with the agent. `as_user` is
    subprocess's user/group/extra_groups (mqfleet.agent.isolation.TrainerUser.popen_options); `priority_flags`
    the Windows priority class (agent/limits.py)."""
    creationflags = (getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) | priority_flags) if IS_WINDOWS else 0
    if IS_LINUX:
        # The wrapper reports a missing program only as exit 127; check first so a start raises on every OS.
        check_program(argv[0], cwd, env)
        argv = [sys.executable, "-I", "-S", "-c", PDEATHSIG_WRAPPER, str(os.getpid()), *argv]
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        start_new_session=not IS_WINDOWS,
        creationflags=creationflags,
        **(as_user or {}),
    )


def pgid_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


# -- spawning ----------------------------------------------------------------------------------------------


_spawn_lock = threading.Lock()
_spawn_jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] | None = None
_spawn_owner_pid = 0


def spawn(fn: Callable[[], _T]) -> _T:
    """Run `fn` (a Popen) on one long-lived daemon thread, so PDEATHSIG fires only when the agent dies."""
    global _spawn_jobs, _spawn_owner_pid
    if not IS_LINUX:
        return fn()
    with _spawn_lock:
        # A forked agent inherits the queue but not the thread that serves it.
        if _spawn_jobs is None or _spawn_owner_pid != os.getpid():
            _spawn_jobs, _spawn_owner_pid = queue.SimpleQueue(), os.getpid()
            threading.Thread(target=_serve_spawns, args=(_spawn_jobs,), name="mqfleet-spawner", daemon=True).start()
        jobs = _spawn_jobs
    done: Future[_T] = Future()
    jobs.put((fn, done))
    return done.result(timeout=60)


def _serve_spawns(jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]]) -> None:
    while True:
        fn, done = jobs.get()
        try:
            done.set_result(fn())
        except BaseException as e:
            done.set_exception(e)


# -- leftovers of a crashed agent ------------------------------------------------------------------------------

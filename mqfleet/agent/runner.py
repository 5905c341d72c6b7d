"""One trainer subprocess for one job: start it, stream its output and progress, stop its whole process tree.

No trainer process may outlive its job, so the tree is guarded in three layers:

1. The trainer gets its own session (POSIX) or process group (Windows); one signal
   reaches it and everything it forked, and leftovers are swept when it exits.
2. On Linux the trainer dies with the agent, even on kill -9, through
   PR_SET_PDEATHSIG, set by a tiny wrapper forked from one long-lived spawner
   thread (`mqfleet.agent.spawn` says why both).
3. PDEATHSIG reaches the direct child only. Each run with a `pidfile_dir` keeps a
   pidfile (pid, create time, pgid, known descendants) there while it runs, and
   `reap_leftovers()` at the next agent start kills what a crash left alive,
   matching create times so a recycled PID is never killed (`mqfleet.agent.reaper`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import IO

import psutil

from mqfleet import defaults
from mqfleet.agent.isolation import TrainerUser, trainer_files
from mqfleet.agent.limits import TrainerLimits
from mqfleet.agent.progress import parse_progress
from mqfleet.agent.reaper import KILL_WAIT_S, POLL_S, pidfile_path, record_run
from mqfleet.agent.spawn import IS_LINUX, IS_WINDOWS, pgid_of, popen_trainer, spawn
from mqfleet.agent.usage import UsageMeter
from mqfleet.mqtt.inbox import call_safely
from mqfleet.wire.reports import Usage
from mqfleet.wire.topics import JsonObject

logger = logging.getLogger(__name__)

# Longer lines are cut in the tail and in on_line: a tail travels in one MQTT request.
_MAX_LINE_CHARS = 2000
# How often the watcher looks for new descendants (it looks for the trainer's exit every POLL_S).
_TREE_REFRESH_S = 1.0
# How often CPU and memory of the tree are sampled for the attempt's usage.
_USAGE_SAMPLE_S = 0.25
# Bounded wait for the output reader to drain (a SIGKILLed tree gets KILL_WAIT_S to vanish).
_READER_JOIN_S = 5.0
# Linux can see a child's exit without reaping it, which keeps its pgid reserved while leftovers are swept.
_CAN_PEEK_EXIT = IS_LINUX and hasattr(os, "waitid") and hasattr(os, "WNOWAIT")


class TrainerRun:
    """One trainer subprocess for one job: its output, its progress and its process tree.

    Exit codes follow subprocess: negative when a POSIX signal ended the trainer.
    Progress lines (`@mqfleet {json}`) go to `on_line` and the log file but not
    into the tail, which keeps the lines that explain a failure.
    """

    def __init__(
        self,
        *,
        argv: list[str],
        cwd: Path,
        env: dict[str, str],
        out_dir: Path,
        log_path: Path | None = None,
        on_line: Callable[[str], None] | None = None,
        on_progress: Callable[[JsonObject], None] | None = None,
        tail_lines: int = defaults.OUTPUT_TAIL_LINES,
        pidfile_dir: Path | None = None,
        user: TrainerUser | None = None,
        limits: TrainerLimits | None = None,
    ) -> None:
        if not argv:
            raise ValueError("a trainer needs a non-empty argv")
        self.argv = list(argv)
        self.cwd = Path(cwd)
        self.env = dict(env)
        self.out_dir = Path(out_dir)
        self.log_path = log_path
        self.on_line = on_line
        self.on_progress = on_progress
        self.pidfile_dir = pidfile_dir
        #: the user it runs as, when not the agent's (its log file is then written with that user's rights)
        self.user = user
        #: its priority and memory limit (agent/limits.py), applied at the start
        self.limits = limits
        self.exit_code: int | None = None
        self.started_ts: float | None = None
        self.ended_ts: float | None = None
        self.create_time: float | None = None
        #: time.monotonic() of the start or of the latest output line (progress lines included)
        self.last_output_monotonic: float | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._root: psutil.Process | None = None
        self._tail: deque[str] = deque(maxlen=max(1, tail_lines))
        self._progress: JsonObject | None = None
        self._out_lock = threading.Lock()
        # Held while reaping and while signalling the group: a pgid is only signalled while its leader is unreaped.
        self._reap_lock = threading.Lock()
        self._stop_lock = threading.Lock()
        self._tree: dict[int, psutil.Process] = {}
        self._tree_lock = threading.Lock()
        self._tree_changed = False
        self._reader: threading.Thread | None = None
        self._done = threading.Event()
        self._usage = UsageMeter()

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the trainer; raises OSError when its program cannot be found or run."""
        if self._proc is not None:
            raise RuntimeError("this trainer run was already started")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._proc = proc = spawn(self._popen)
        if self.limits is not None:
            self.limits.attach(proc.pid)
        self.started_ts = time.time()
        self.last_output_monotonic = time.monotonic()
        try:
            self._root = psutil.Process(proc.pid)
            self.create_time = self._root.create_time()
        except psutil.Error:
            self._root = None  # gone already (it is unreaped, so only on exotic platforms)
        logger.info("trainer %d: started %s in %s", proc.pid, self.argv, self.cwd)
        if self.pidfile_dir is not None and self.create_time is not None:
            try:
                record_run(self.pidfile_dir, self)
            except OSError as e:
                logger.warning("trainer %d: cannot write pidfile in %s: %s", proc.pid, self.pidfile_dir, e)
        assert proc.stdout is not None
        self._reader = threading.Thread(
            target=self._read_output, args=(proc.stdout,), name=f"trainer-{proc.pid}-out", daemon=True
        )
        self._reader.start()
        threading.Thread(target=self._watch, name=f"trainer-{proc.pid}-watch", daemon=True).start()

    def _popen(self) -> subprocess.Popen[str]:
        return popen_trainer(self.argv, self.cwd, self.env, as_user=self.user.popen_options() if self.user else None,
                             priority_flags=self.limits.creationflags if self.limits else 0)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def poll(self) -> int | None:
        """The exit code once the trainer has ended and its output is read, else None."""
        return self.exit_code if self._done.is_set() else None

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Wait for the trainer to end; its exit code, or None on timeout."""
        self._require_started()
        return self.exit_code if self._done.wait(timeout_s) else None

    def terminate(self, grace_s: float = defaults.KILL_GRACE_S) -> int:
        """SIGTERM the whole tree (the trainer may checkpoint), SIGKILL it after `grace_s`; the exit code.

        Idempotent. Raises TimeoutError only if the kernel has not removed the tree
        10 s after SIGKILL (a process stuck in uninterruptible I/O).
        """
        return self._stop(grace_s, polite=True)

    def kill(self) -> None:
        """Kill the whole tree now."""
        self._stop(0.0, polite=False)

    @property
    def tail(self) -> str:
        """The last lines of output (progress lines excepted), joined with newlines."""
        with self._out_lock:
            return "\n".join(self._tail)

    def usage(self) -> Usage | None:
        """What the run used over its whole tree (agent/usage.py); None before it ended."""
        if not self._done.is_set() or self.started_ts is None or self.ended_ts is None:
            return None
        return self._usage.result(self.ended_ts - self.started_ts)

    @property
    def latest_progress(self) -> JsonObject | None:
        with self._out_lock:
            return self._progress

    def _require_started(self) -> subprocess.Popen[str]:
        if self._proc is None:
            raise RuntimeError("this trainer run has not been started")
        return self._proc

    # -- stopping --------------------------------------------------------------------------------------------

    def _stop(self, grace_s: float, *, polite: bool) -> int:
        proc = self._require_started()
        with self._stop_lock:
            if not self._done.is_set():
                # Collect descendants before signalling: once a parent dies its children are reparented.
                self._refresh_tree()
                if polite and self._signal_tree(graceful=True):
                    logger.info("trainer %d: SIGTERM sent, %.1fs to exit", proc.pid, grace_s)
                    self._done.wait(grace_s)
                if not self._done.is_set():
                    logger.info("trainer %d: killing its process tree", proc.pid)
                    self._signal_tree(graceful=False)
            if not self._done.wait(KILL_WAIT_S):
                raise TimeoutError(f"trainer {proc.pid} still alive {KILL_WAIT_S}s after SIGKILL")
        assert self.exit_code is not None
        return self.exit_code

    def _signal_tree(self, *, graceful: bool) -> bool:
        """Signal the trainer's group and every known descendant; False when it was already reaped."""
        with self._reap_lock:
            if self.exit_code is not None:
                return False
            self._signal_locked(graceful=graceful)
            return True

    def _signal_locked(self, *, graceful: bool) -> None:
        # Callers hold _reap_lock: the leader is unreaped, so its pid still names our group, not a stranger's.
        proc = self._require_started()
        with self._tree_lock:
            known = list(self._tree.values())
        if IS_WINDOWS:
            if graceful:
                try:
                    # Reaches the trainer's whole console process group, like SIGTERM to a POSIX group.
                    proc.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
                    return
                except OSError as e:
                    logger.warning("trainer %d: CTRL_BREAK failed (%s); killing instead", proc.pid, e)
            for p in known:
                with suppress(psutil.Error):
                    p.kill()
            with suppress(OSError):
                proc.kill()
            return
        sig = signal.SIGTERM if graceful else signal.SIGKILL
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        for p in known:
            # A second SIGTERM makes many frameworks skip their clean shutdown: only signal escapees.
            if graceful and pgid_of(p.pid) == proc.pid:
                continue
            with suppress(psutil.Error):
                p.send_signal(sig)

    # -- watching --------------------------------------------------------------------------------------------

    def _watch(self) -> None:
        proc = self._require_started()
        next_refresh = next_sample = 0.0
        while True:
            with self._reap_lock:
                if self._leader_exited(proc):
                    self._sample_usage()  # the escapees still alive; the leader's own account comes from wait4
                    # Sweep what the trainer left behind before reaping it, while its pgid cannot be reused.
                    self._signal_locked(graceful=False)
                    self.exit_code = self._reap(proc)
                    self.ended_ts = time.time()
                    break
            now = time.monotonic()
            if now >= next_refresh:
                self._refresh_tree()
                next_refresh = now + _TREE_REFRESH_S
                self._rewrite_pidfile()
            if now >= next_sample:
                if self.limits is not None and self.limits.over_memory(self._sample_usage()):
                    self._signal_tree(graceful=False)  # past its memory limit: no grace, memory is what runs out
                next_sample = now + _USAGE_SAMPLE_S
            time.sleep(POLL_S)
        logger.info("trainer %d: exited with %s", proc.pid, self.exit_code)
        if self._reader is not None:
            self._reader.join(_READER_JOIN_S)
            if self._reader.is_alive():
                logger.warning("trainer %d: output still open after exit (a process escaped its tree)", proc.pid)
        self._remove_pidfile()
        self._done.set()

    def _sample_usage(self) -> int:
        """Sample the tree's CPU and memory; its resident bytes now."""
        with self._tree_lock:
            procs = list(self._tree.values())
        if self._root is not None:
            procs.append(self._root)
        return self._usage.sample(procs)

    def _reap(self, proc: subprocess.Popen[str]) -> int:
        """Reap the leader; on POSIX through wait4, whose rusage counts it and every child it waited for."""
        if not hasattr(os, "wait4"):
            return proc.wait()
        try:
            _, status, rusage = os.wait4(proc.pid, 0)
        except ChildProcessError:  # reaped elsewhere (Popen's own poll): no kernel account then
            return proc.wait()
        proc.returncode = os.waitstatus_to_exitcode(status)
        self._usage.add_reaped(rusage)
        return proc.returncode

    @staticmethod
    def _leader_exited(proc: subprocess.Popen[str]) -> bool:
        if _CAN_PEEK_EXIT:
            try:
                return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
            except ChildProcessError:
                return True
        return proc.poll() is not None

    def _refresh_tree(self) -> None:
        if self._root is None:
            return
        try:
            children = self._root.children(recursive=True)
        except psutil.Error:
            children = []
        with self._tree_lock:
            for child in children:
                if child.pid not in self._tree:
                    self._tree[child.pid] = child
                    self._tree_changed = True
            for pid, p in list(self._tree.items()):
                if not p.is_running():
                    del self._tree[pid]
                    self._tree_changed = True

    def tree_info(self) -> list[tuple[int, float]]:
        """(pid, create time) of every descendant seen so far and still running."""
        with self._tree_lock:
            out = []
            for p in self._tree.values():
                with suppress(psutil.Error):
                    out.append((p.pid, p.create_time()))
            return out

    def _rewrite_pidfile(self) -> None:
        with self._tree_lock:
            changed, self._tree_changed = self._tree_changed, False
        if changed and self.pidfile_dir is not None and self.create_time is not None:
            try:
                record_run(self.pidfile_dir, self)
            except OSError as e:
                logger.warning("trainer %s: cannot update pidfile: %s", self.pid, e)

    def _remove_pidfile(self) -> None:
        if self.pidfile_dir is not None and self.pid is not None:
            pidfile_path(self.pidfile_dir, self.pid).unlink(missing_ok=True)

    # -- output ----------------------------------------------------------------------------------------------

    def _read_output(self, stream: IO[str]) -> None:
        log = self._open_log()
        try:
            for raw in stream:
                line = raw.rstrip("\r\n")
                self.last_output_monotonic = time.monotonic()
                if log is not None:
                    try:
                        log.write(line + "\n")
                    except OSError as e:
                        logger.warning("trainer %s: log file write failed, logging stops: %s", self.pid, e)
                        log.close()
                        log = None
                progress = parse_progress(line)
                shown = line if len(line) <= _MAX_LINE_CHARS else line[:_MAX_LINE_CHARS] + "…"
                with self._out_lock:
                    if progress is None:
                        self._tail.append(shown)
                    else:
                        self._progress = progress
                # a failing callback is a bug in the agent, but it must not stop the output being drained
                if self.on_line is not None:
                    call_safely(self.on_line, shown, what="trainer output callback", log=logger)
                if progress is not None and self.on_progress is not None:
                    call_safely(self.on_progress, progress, what="trainer progress callback", log=logger)
        except (OSError, ValueError) as e:
            logger.warning("trainer %s: reading output failed: %s", self.pid, e)
        finally:
            stream.close()
            if log is not None:
                log.close()

    def _open_log(self) -> IO[str] | None:
        # A log file that cannot be written costs the log, not the training run.
        if self.log_path is None:
            return None
        try:
            with trainer_files(self.user):
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                return open(self.log_path, "a", encoding="utf-8", buffering=1)
        except OSError as e:
            logger.warning("trainer %s: cannot open log %s: %s", self.pid, self.log_path, e)
            return None




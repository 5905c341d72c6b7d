"""`Proc`: one mqfleet process (a coordinator, an agent) started for the tests, the soak or a benchmark, its
output in a log file, and stopped by its PID only."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


class Proc:
    """A child process started at construction, its stdout and stderr appended to `log_path`.

    `user` runs it as that account (the caller being root), with that account's group and no other.
    """

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path, *,
                 cwd: Path | None = None, user: str | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        as_user: dict[str, Any] = {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []} if user else {}
        # The child keeps its own copy of the log's descriptor; ours is closed at once.
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(self.argv, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, **as_user)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log()[-chars:]

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL and reap, as a crash would end it."""
        if self.alive():
            self.popen.kill()
            self.popen.wait(10)

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGCONT (it may have been stopped), SIGTERM, a bounded wait, then SIGKILL; its exit code."""
        if self.alive():
            self.signal(signal.SIGCONT)
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.returncode

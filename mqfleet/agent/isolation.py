"""Keeping a trainer away from its agent's secrets (docs/SECURITY.md, "Trainers").

A trainer is code from the manifest. Run as the agent's own user it could read the agent's
environment through `/proc/<agent>/environ`, its memory, and its TLS key file. Two layers:

1. `make_undumpable()`: the agent sets PR_SET_DUMPABLE 0 at start, so the kernel makes its
   `/proc/<pid>/` files root's and refuses ptrace: a same-user trainer can no longer read its
   environment or memory. The flag is not inherited by what the agent runs: execve() of an
   ordinary program sets it back to 1, so trainers stay debuggable and readable by the agent.
   The key file stays readable to a same-user trainer: that needs layer 2.
2. `TrainerUser` (`mqfleet agent --trainer-user NAME`, Linux, agent as root): trainers run as
   another user. The agent creates each job's folder for that user and touches what is inside
   only with that user's file rights (`files()`: setfsuid/setfsgid on the calling thread), so a
   trainer's symlink or a file it swaps in can never make the agent read or write beyond what the
   trainer itself may. What the agent puts in a job's folder before the trainer starts (its spec, a
   restored checkpoint) it writes as itself into a folder nobody else can enter, and then hands over.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import stat
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mqfleet.errors import ConfigurationError

logger = logging.getLogger(__name__)

IS_LINUX = sys.platform.startswith("linux")
#: prctl(2) options.
PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3
#: Mode of `work_dir/jobs` when trainers run as another user: the agent writes, the trainer's group only enters.
JOBS_DIR_MODE = 0o710
#: Mode of one job's folder: the agent's while it fills it, then the trainer user's.
JOB_DIR_MODE = 0o700


@functools.cache
def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def make_undumpable() -> bool:
    """PR_SET_DUMPABLE 0 for this process (Linux; elsewhere a no-op): other processes of its user can no longer
    read its `/proc/<pid>/environ` or memory, or ptrace it. True when set."""
    if not IS_LINUX:
        return False
    libc = _libc()
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        logger.warning("prctl(PR_SET_DUMPABLE, 0) failed (errno %d): trainers of this user can read the agent's "
                       "environment", ctypes.get_errno())
        return False
    return True


def is_dumpable() -> bool | None:
    """This process's dumpable flag; None off Linux."""
    return bool(_libc().prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)) if IS_LINUX else None


@dataclass(frozen=True)
class TrainerUser:
    """The account trainers run as when it is not the agent's own."""

    name: str
    uid: int
    gid: int
    #: its supplementary groups, as a login would get them (GPU device groups such as `video` or `render`)
    groups: tuple[int, ...]
    home: str

    @classmethod
    def resolve(cls, name: str) -> TrainerUser:
        """The user `name` (or a numeric uid); ConfigurationError with the fix when trainers cannot run as it."""
        if not IS_LINUX:
            raise ConfigurationError("--trainer-user works on Linux only; leave it out on this system")
        import pwd

        try:
            entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
        except (KeyError, OverflowError):
            raise ConfigurationError(f"--trainer-user {name!r}: no such user; create it first "
                                     "(useradd --system --create-home mqfleet-trainer)") from None
        if entry.pw_uid == 0:
            raise ConfigurationError(f"--trainer-user {name!r} is root; name an unprivileged user")
        if os.geteuid() != 0:
            raise ConfigurationError(f"--trainer-user {name!r}: the agent must run as root to start trainers as "
                                     f"another user (it runs as uid {os.geteuid()}); agent/install-agent.sh sets this up")
        groups = tuple(g for g in os.getgrouplist(entry.pw_name, entry.pw_gid) if g != 0)
        return cls(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid, groups=groups, home=entry.pw_dir)

    # --- the places a trainer needs --------------------------------------------------------

    def prepare(self, work_dir: Path, repo: Path, python: str) -> None:
        """At agent start: `work_dir/jobs` for this user's group to enter (and nobody else); the way to it, the
        training repo and the Python trainers start with checked. Also drops the agent's supplementary groups,
        which `files()` would keep."""
        jobs = work_dir / "jobs"
        try:
            os.setgroups([])
            jobs.mkdir(parents=True, exist_ok=True)
            if not self.can_enter(work_dir) and os.stat(work_dir).st_uid == os.geteuid():
                # the agent's own work dir: let the trainer's group through, not everyone
                os.chown(work_dir, -1, self.gid)
                os.chmod(work_dir, stat.S_IMODE(os.stat(work_dir).st_mode) | stat.S_IXGRP)
            os.chown(jobs, os.geteuid(), self.gid)
            os.chmod(jobs, JOBS_DIR_MODE)
        except OSError as e:
            raise ConfigurationError(f"--work-dir {work_dir}: cannot prepare it for trainer user {self.name}: {e}") from e
        self.check_access(repo, python, jobs=jobs)

    def check_access(self, repo: Path, python: str, *, jobs: Path | None = None) -> None:
        """ConfigurationError with the fix unless this user can read the training repo, run the agent's Python
        (the PDEATHSIG wrapper runs it as this user) and the one trainers start with, and enter `jobs`."""
        for folder, what in (((jobs, "--work-dir"),) if jobs else ()) + ((repo, "--repo"),):
            blocked = self.blocked_at(folder, read=folder == repo)
            if blocked is not None:
                last = blocked == folder.resolve()
                raise ConfigurationError(
                    f"trainer user {self.name} cannot {'read' if last else 'pass'} {blocked} "
                    f"(mode {stat.S_IMODE(os.stat(blocked).st_mode):o}), on the way to {what} {folder}: "
                    f"chmod o+{'rx' if last else 'x'} {blocked}, or give {self.name} access to it")
        # the PDEATHSIG wrapper runs this interpreter as the trainer user, and built-in trainers run `python`
        for program in dict.fromkeys((Path(sys.executable), Path(python))):
            real = program.resolve()
            blocked = self.blocked_at(program.parent) or self.blocked_at(real.parent)
            if blocked is not None or not self._may(real, stat.S_IXOTH):
                raise ConfigurationError(
                    f"trainer user {self.name} cannot run {program} ({real}"
                    + (f"; it cannot pass {blocked}" if blocked is not None else "") + "): install mqfleet in a "
                    "virtualenv made from a Python every user can run (python3 -m venv /opt/mqfleet/.venv)")

    def blocked_at(self, folder: Path, *, read: bool = False) -> Path | None:
        """The first folder on the way to `folder` (itself included) this user may not enter (or, with `read`,
        may not list at the end); None when it may."""
        path = folder.resolve()
        for step in (*reversed(path.parents), path):
            if not self.can_enter(step) or (read and step == path and not self._may(step, stat.S_IROTH)):
                return step
        return None

    def can_enter(self, folder: Path) -> bool:
        return self._may(folder, stat.S_IXOTH)

    def _may(self, path: Path, other_bit: int) -> bool:
        """Whether this user has the permission `other_bit` names (S_IROTH, S_IXOTH) on `path`, by its mode."""
        st = os.stat(path)
        if st.st_uid == self.uid:
            return bool(st.st_mode & (other_bit << 6))
        if st.st_gid == self.gid or st.st_gid in self.groups:
            return bool(st.st_mode & (other_bit << 3))
        return bool(st.st_mode & other_bit)

    def hand_over(self, folder: Path) -> None:
        """Give `folder`, which the agent filled where no trainer could enter (mode 0700, its own), and all in it
        to this user: the folder itself last, so nothing in it is the agent's once a trainer can enter."""
        for dirpath, dirnames, filenames in os.walk(folder, topdown=False):
            for name in (*filenames, *dirnames):
                os.chown(os.path.join(dirpath, name), self.uid, self.gid, follow_symlinks=False)
        os.chown(folder, self.uid, self.gid, follow_symlinks=False)

    # --- acting as it -----------------------------------------------------------------------

    @contextlib.contextmanager
    def files(self) -> Iterator[None]:
        """File access on this thread with this user's rights only (setfsgid/setfsuid; per thread on Linux).
        Files created meanwhile belong to it. Root's override of file permissions is gone until the end."""
        try:
            self._set_fs(self.uid, self.gid)
            yield
        finally:  # also after a half-done switch: the thread never keeps another user's rights
            self._set_fs(os.geteuid(), os.getegid())

    @contextlib.contextmanager
    def for_agent(self, path: Path) -> Iterator[Path]:
        """Inside `files()`: `path` opened for reading with this user's rights, and the agent's own rights back
        while the caller uses the path given, /proc/self/fd/N: the very file opened, whatever `path` names
        meanwhile. For an upload to the store, which this user may not reach (a file:// store)."""
        with open(path, "rb") as fh:
            try:
                self._set_fs(os.geteuid(), os.getegid())
                yield Path(f"/proc/self/fd/{fh.fileno()}")
            finally:
                self._set_fs(self.uid, self.gid)

    @staticmethod
    def _set_fs(uid: int, gid: int) -> None:
        libc = _libc()
        libc.setfsgid(gid)
        libc.setfsuid(uid)
        # each call returns the id it replaces: a second one shows whether the first took
        if libc.setfsuid(uid) != uid or libc.setfsgid(gid) != gid:
            raise PermissionError(f"setfsuid/setfsgid to {uid}/{gid} refused")
        # a change of the file-system ids resets the dumpable flag to the sysctl's value
        make_undumpable()

    def popen_options(self) -> dict[str, Any]:
        """subprocess.Popen's options that start the child as this user (set after fork, before exec)."""
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}

    def env(self, env: Mapping[str, str]) -> dict[str, str]:
        """A trainer's environment with this user's HOME, USER and LOGNAME instead of the agent's."""
        return {**env, "HOME": self.home, "USER": self.name, "LOGNAME": self.name}


def trainer_files(user: TrainerUser | None) -> contextlib.AbstractContextManager[None]:
    """`user.files()`, or nothing to change when trainers run as the agent's own user."""
    return user.files() if user is not None else contextlib.nullcontext()


def for_agent(user: TrainerUser | None, path: Path) -> contextlib.AbstractContextManager[Path]:
    """`user.for_agent(path)`, or `path` itself when trainers run as the agent's own user."""
    return user.for_agent(path) if user is not None else contextlib.nullcontext(path)

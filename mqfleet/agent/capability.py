"""What this host can do: the capability advert an agent publishes (docs/INTERNALS.md, "Capability advert").

Owns host detection only: OS, CPU, RAM, NVIDIA GPUs via NVML, installed torch and
xgboost versions (from package metadata, never by importing them), and the commit
of the training repo. Detection is fast and never raises: a host without a driver,
without git or outside a repo simply reports `cuda=false` or `null` fields.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import psutil

import mqfleet
from mqfleet.wire.advert import Advert, Gpu, normalise_arch

logger = logging.getLogger(__name__)

#: Seconds a git call may take; a hung network filesystem must not stall the advert.
_GIT_TIMEOUT_S = 2.0
_GIB = 1024**3


def detect_advert(
    host_id: str, *, slots: int = 1, labels: Sequence[str] = (), repo: Path | None = None
) -> Advert:
    """The capability advert of this host; its `to_wire()` is what goes on `hosts/{host}/advert`."""
    cuda, gpus, driver = detect_gpus()
    git_commit, git_dirty = detect_git(repo) if repo is not None else (None, None)
    return Advert(
        host=host_id,
        hostname=socket.gethostname(),
        os=os_name(),
        os_version=os_version(),
        arch=normalise_arch(platform.machine()) or None,
        os_family=os_family(),
        python=platform.python_version(),
        cpu_cores=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        ram_gib=round(psutil.virtual_memory().total / _GIB, 1),
        cuda=cuda,
        gpus=gpus,
        driver=driver,
        torch=package_version("torch"),
        xgboost=package_version("xgboost"),
        git_commit=git_commit,
        git_dirty=git_dirty,
        agent_version=mqfleet.__version__,
        slots=slots,
        labels=tuple(labels),
        ts=time.time(),
    )


def os_name() -> str:
    """`linux`, `windows`, `darwin`, or the raw platform name of anything else."""
    if sys.platform.startswith("linux"):
        return "linux"
    if sys.platform in ("win32", "cygwin"):
        return "windows"
    return sys.platform


def os_family(os_release: dict[str, str] | None = None) -> str:
    """The OS family: on Linux the distribution's (the first word of os-release's ID_LIKE, else its ID: `debian`
    for Debian, Ubuntu and Raspberry Pi OS, `rhel` for Rocky and Alma), elsewhere the same as `os_name()`."""
    if not sys.platform.startswith("linux") and os_release is None:
        return os_name()
    if os_release is None:
        try:
            os_release = platform.freedesktop_os_release()
        except OSError:
            return "linux"
    family = (os_release.get("ID_LIKE", "").split() or [os_release.get("ID", "")])[0]
    return family.lower() or "linux"


def os_version() -> str:
    """A human-readable OS release: distribution and kernel on Linux, build on Windows and macOS."""
    if sys.platform.startswith("linux"):
        try:
            pretty = platform.freedesktop_os_release().get("PRETTY_NAME", "")
        except OSError:
            pretty = ""
        return f"{pretty} (kernel {platform.release()})" if pretty else platform.release()
    if sys.platform == "darwin":
        return platform.mac_ver()[0] or platform.release()
    return platform.version() or platform.release()


def package_version(name: str) -> str | None:
    """Installed version of a distribution, read from its metadata so nothing heavy is imported."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def detect_gpus() -> tuple[bool, tuple[Gpu, ...], str | None]:
    """(cuda, gpus, driver) from NVML; any NVML failure means a host without usable GPUs."""
    try:
        import pynvml
    except ImportError:
        return False, (), None
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
        logger.debug("capability: NVML unavailable (%s); reporting cuda=false", e)
        return False, (), None
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(Gpu(
                index=index,
                name=_text(pynvml.nvmlDeviceGetName(handle)),
                uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                vram_gib=round(memory.total / _GIB, 1),
                # whole GiB (an int on the wire): the advert is republished when this changes, not at every allocation
                vram_free_gib=int(memory.free // _GIB),
            ))
    except Exception as e:
        # A driver that loads but fails on a query (e.g. a GPU fallen off the bus) is not usable.
        logger.warning("capability: NVML query failed (%s); reporting cuda=false", e)
        return False, (), None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return bool(gpus), tuple(gpus), driver


def _text(value: str | bytes) -> str:
    # nvidia-ml-py returns str, but older bindings returned bytes.
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def detect_git(repo: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the repo at `repo`; (None, None) outside a repo.

    Falls back to reading `.git` directly when git is absent or refuses (e.g. a repo
    owned by another user); dirtiness is then unknown (None).
    """
    commit = _git(repo, "rev-parse", "--verify", "HEAD")
    if commit is None:
        return _read_head(repo), None
    # Tracked changes only: untracked files (logs, outputs) do not change what trains.
    status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return commit, (bool(status) if status is not None else None)


def _git(repo: Path, *args: str) -> str | None:
    env = dict(os.environ)
    # Never take index.lock: the agent must not disturb an operator running git in the same repo.
    env["GIT_OPTIONAL_LOCKS"] = "0"
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args],
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError) as e:
        logger.debug("capability: git %s in %s failed: %s", args[0], repo, e)
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip()


def _read_head(repo: Path) -> str | None:
    """The HEAD commit read from the files under `.git`, for hosts without a working git."""
    try:
        start = repo.resolve()
    except OSError:
        return None
    for folder in (start, *start.parents):
        git_dir = _git_dir(folder)
        if git_dir is not None:
            return _resolve_head(git_dir)
    return None


def _git_dir(folder: Path) -> Path | None:
    dot_git = folder / ".git"
    if dot_git.is_dir():
        return dot_git
    if dot_git.is_file():
        # A worktree or submodule: `.git` is a file saying `gitdir: PATH`.
        try:
            line = dot_git.read_text(encoding="utf-8").strip()
        except OSError:
            return None
        if line.startswith("gitdir:"):
            return (folder / line[len("gitdir:") :].strip()).resolve()
    return None


def _resolve_head(git_dir: Path) -> str | None:
    try:
        head = (git_dir / "HEAD").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if not head.startswith("ref:"):
        return head if _is_sha(head) else None
    ref = head[len("ref:") :].strip()
    # A linked worktree keeps its HEAD locally but its refs in the common dir.
    common = git_dir
    try:
        common = (git_dir / (git_dir / "commondir").read_text(encoding="utf-8").strip()).resolve()
    except OSError:
        pass
    for base in (git_dir, common):
        try:
            sha = (base / ref).read_text(encoding="utf-8").strip()
        except OSError:
            continue
        if _is_sha(sha):
            return sha
    return _packed_ref(common, ref)


def _packed_ref(git_dir: Path, ref: str) -> str | None:
    try:
        lines = (git_dir / "packed-refs").read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in lines:
        sha, _, name = line.partition(" ")
        if name.strip() == ref and _is_sha(sha):
            return sha
    return None


def _is_sha(text: str) -> bool:
    return len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text)

"""A job's checkpoint folder on the agent: restored before the trainer starts, synced to the store while it runs.

The trainer contract (docs/INTERNALS.md, "Checkpoints"): the trainer finds `MQFLEET_CHECKPOINT_DIR`
empty on a first attempt and holding the job's latest checkpoint on a later one, on any host; it writes
its state there atomically (write, then rename) and reads it back at start.

A sync never slows or ends the attempt: it runs on a thread of its own at a lower CPU priority, packs a
snapshot (hard links, taken in one quick pass) rather than the live folder, and a sync that fails is
logged in the job's log and tried again at the next interval. Nothing is synced when the folder has not
changed since the last sync, or when it is larger than `checkpoint_max_mib`.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import stat
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mqfleet import defaults
from mqfleet.agent.isolation import TrainerUser, for_agent, trainer_files
from mqfleet.errors import (
    ArtifactMismatchError,
    BundleError,
    MqfleetError,
    ObjectMissingError,
    StoreError,
    UnpackLimitError,
)
from mqfleet.store.bundle import UnpackLimits, pack_artifact, unpack_artifact
from mqfleet.store.transfer import download_from_url, upload_to_url
from mqfleet.wire import verbs
from mqfleet.wire.requests import (
    CheckpointSavedRequest,
    CheckpointStartRequest,
    CheckpointUploadRequest,
    Grant,
    GrantedCheckpoint,
)
from mqfleet.wire.topics import JsonObject
from mqfleet.wire.verbs import Rep, Req, VerbSpec

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
#: Niceness of the sync thread (Linux): packing competes with the trainer for CPU and must lose.
SYNC_NICENESS = 10
#: How long one checkpoint request may wait for its reply; `checkpoint_saved` reads the whole bundle back.
CHECKPOINT_REQUEST_TIMEOUT_S = 60.0
#: Free disk a restore leaves for the trainer: a checkpoint that would take it is not restored on this host.
RESTORE_DISK_RESERVE_BYTES = 256 * MIB

#: (relative name, is a folder, size, mtime in ns, inode) of every entry: equal fingerprints, nothing to sync.
Fingerprint = tuple[tuple[str, bool, int, int, int], ...]


class Requester(Protocol):
    """An agent request on the job's lease: the verb and its typed message in, the decoded reply out (the
    caller reads it through a typed reply); raises MqfleetError."""

    def __call__(self, verb: VerbSpec[Req, Rep], message: Req, *, timeout_s: float | None = None) -> Rep: ...


@dataclass(frozen=True)
class CheckpointPlan:
    """What a claim grant says about checkpoints for this attempt."""

    interval_s: float
    max_bytes: int
    #: The latest checkpoint of the job, or None (a first attempt, or a fresh start).
    given: GrantedCheckpoint | None

    @classmethod
    def from_grant(cls, grant: Grant) -> CheckpointPlan | None:
        """None when the job gets no checkpoint folder: its trainer is not resumable, or the coordinator
        predates checkpoints (its grant says nothing about them). The grant was checked when it arrived
        (a malformed `checkpoint` refuses the claim there)."""
        if not grant.resumable or grant.checkpoint_interval_s is None:
            return None
        interval_s = max(defaults.CHECKPOINT_INTERVAL_MIN_S, grant.checkpoint_interval_s)
        max_mib = grant.checkpoint_max_mib or defaults.CHECKPOINT_MAX_MIB
        return cls(interval_s=interval_s, max_bytes=int(max_mib * MIB), given=grant.checkpoint)


def fingerprint(folder: Path) -> tuple[Fingerprint, int]:
    """The folder's fingerprint and the total bytes of its files; cheap (one lstat per entry)."""
    entries = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            try:
                st = path.lstat()
            except FileNotFoundError:  # renamed away while we walked
                continue
            rel = path.relative_to(folder).as_posix()
            if stat.S_ISDIR(st.st_mode):
                # A folder is its name: its own mtime and inode differ in a snapshot, its files tell changes.
                entries.append((rel, True, 0, 0, 0))
                continue
            entries.append((rel, False, st.st_size, st.st_mtime_ns, st.st_ino))
            total += st.st_size
    entries.sort()
    return tuple(entries), total


def snapshot(folder: Path, dest: Path) -> None:
    """A consistent copy of `folder` at `dest`: hard links (a copy where linking fails).

    A trainer that writes then renames never changes a file we linked, so packing the links reads one
    state even while the trainer saves the next. Symlinks and special files are refused here, at packing,
    as a link could name anything on this host.
    """
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        base = Path(dirpath)
        rel_base = base.relative_to(folder)
        for name in dirnames + filenames:
            src = base / name
            try:
                st = src.lstat()
            except FileNotFoundError:
                continue
            rel = (rel_base / name).as_posix()
            target = dest / rel_base / name
            if stat.S_ISLNK(st.st_mode):
                raise BundleError(f"{rel}: is a symlink; a checkpoint holds only regular files and folders")
            if stat.S_ISDIR(st.st_mode):
                target.mkdir(exist_ok=True)
            elif stat.S_ISREG(st.st_mode):
                try:
                    os.link(src, target)
                except FileNotFoundError:
                    continue
                except OSError:
                    shutil.copyfile(src, target)
            else:
                raise BundleError(f"{rel}: not a regular file or folder; a checkpoint holds only those")


class CheckpointSync:
    """One attempt's checkpoint folder: restore, periodic sync beside the trainer, final sync."""

    def __init__(
        self,
        *,
        plan: CheckpointPlan,
        job_id: str,
        lease_id: str,
        folder: Path,
        scratch: Path,
        request: Requester,
        log: Callable[[str], None],
        progress: Callable[[], JsonObject | None],
        name: str,
        user: TrainerUser | None = None,
    ) -> None:
        self.plan = plan
        #: the lease every checkpoint request is made on
        self.job_id = job_id
        self.lease_id = lease_id
        self.folder = folder
        self.scratch = scratch
        self._request = request
        self._log = log
        self._progress = progress
        self.name = name
        #: the user trainers run as, when not the agent's: the folder is synced with its file rights
        self._user = user
        self.syncs = 0
        self.last_sync_ts: float | None = None
        self._synced: Fingerprint = ()
        self._over_limit_said = False
        self._sync_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- before the trainer starts ----------------------------------------------------------------

    def restore(self) -> bool:
        """Fill the folder with the granted checkpoint after checking its size and sha256; True when restored.

        Bounded before a byte lands: the download reads no byte past the granted size, the free disk must
        hold it, and the bundle unpacks to at most `checkpoint_max_mib` (what a sync may pack) and what
        the disk has left; no ratio limit, since a sparse checkpoint may compress a thousandfold. Any
        failure leaves the folder empty (the trainer starts fresh) and is reported with its reason; a
        checkpoint that is bad (not one that only does not fit this host's disk) is rejected.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        given = self.plan.given
        if given is None:
            return False
        from_attempt = given.attempt
        bundle = self.scratch / "checkpoint-restore.tar.zst"
        rejected = False
        room = shutil.disk_usage(self.scratch).free - RESTORE_DISK_RESERVE_BYTES - given.size
        limits = UnpackLimits(max_bytes=max(0, min(self.plan.max_bytes, room)), max_ratio=math.inf)
        try:
            if room < 0:
                raise StoreError(f"{_mib(given.size)} to fetch and {_mib(room + given.size)} free on this host's disk "
                                 f"past the {_mib(RESTORE_DISK_RESERVE_BYTES)} kept for the trainer")
            download_from_url(given.url, bundle, size=given.size)
            unpack_artifact(bundle, self.folder, expected_sha256=given.sha256, limits=limits)
        except ArtifactMismatchError as e:
            note, rejected = f"the checkpoint of attempt {from_attempt} failed its size or sha256 check ({e})", True
        except UnpackLimitError as e:
            # Past checkpoint_max_mib no sync could have made it; past this disk's room it may fit another host.
            rejected = e.limit != "bytes" or limits.max_bytes >= self.plan.max_bytes
            note = f"the checkpoint of attempt {from_attempt} could not be unpacked ({e})"
        except BundleError as e:
            note, rejected = f"the checkpoint of attempt {from_attempt} could not be unpacked ({e})", True
        except StoreError as e:
            rejected = isinstance(e, ObjectMissingError)
            note = f"the checkpoint of attempt {from_attempt} could not be fetched ({e})"
        else:
            saved = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(given.saved_ts or 0))
            note = f"resumed from the checkpoint of attempt {from_attempt} ({_mib(given.size)}, saved {saved})"
            self._synced = fingerprint(self.folder)[0]  # what we were given needs no upload
            self._say(note)
            self._report_start(resumed=True, note=note, from_attempt=from_attempt)
            return True
        finally:
            bundle.unlink(missing_ok=True)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        note = f"started fresh: {note}"
        self._say(note, warn=True)
        self._report_start(resumed=False, note=note, from_attempt=from_attempt,
                           rejected_sha256=given.sha256 if rejected else None)
        return False

    def _report_start(self, *, resumed: bool, note: str, from_attempt: int | None,
                      rejected_sha256: str | None = None) -> None:
        start = CheckpointStartRequest(self.job_id, self.lease_id, resumed=resumed, note=note,
                                       from_attempt=from_attempt, rejected_sha256=rejected_sha256)
        try:
            self._request(verbs.CHECKPOINT_START, start)
        except MqfleetError as e:
            logger.warning("job %s: could not report how it started: %s", self.name, e)

    # --- while the trainer runs -------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"ckpt-{self.name[:12]}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        if sys.platform.startswith("linux"):
            # Linux gives each thread its own nice value: the trainer keeps the CPU, the sync takes what is left.
            with suppress(OSError, AttributeError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SYNC_NICENESS)
        # Every interval from the start of the last sync; a sync that outlasts the interval is followed by the
        # next after a tenth of it, so a folder too big for the interval still leaves the trainer some quiet.
        next_ts = time.monotonic() + self.plan.interval_s
        while not self._stop.wait(max(0.0, next_ts - time.monotonic())):
            started = time.monotonic()
            self.sync("interval")
            next_ts = max(started + self.plan.interval_s, time.monotonic() + self.plan.interval_s / 10)

    def stop(self, *, final_sync: bool) -> None:
        """Stop syncing; with `final_sync`, sync once more (an attempt that ends without completing)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(defaults.CHECKPOINT_FINAL_SYNC_S)
        if final_sync:
            self.sync("final")

    def sync(self, why: str) -> bool:
        """Pack and upload the folder if it changed; True when a new checkpoint was saved. Never raises."""
        with self._sync_lock:
            try:
                with trainer_files(self._user):
                    return self._sync_locked(why)
            except (MqfleetError, OSError) as e:
                self._say(f"checkpoint sync ({why}) failed, retried at the next interval: {e}", warn=True)
                return False
            except Exception as e:  # a bug here must not end the attempt
                logger.exception("job %s: checkpoint sync crashed", self.name)
                self._say(f"checkpoint sync ({why}) failed: {type(e).__name__}: {e}", warn=True)
                return False

    def _sync_locked(self, why: str) -> bool:
        if not self.folder.is_dir():
            return False
        current, total = fingerprint(self.folder)
        if not current or current == self._synced:
            return False
        if total > self.plan.max_bytes:
            if not self._over_limit_said:
                self._say(
                    f"checkpoint folder is {_mib(total)}, over checkpoint_max_mib = {self.plan.max_bytes / MIB:g}; "
                    "not synced (save less state, or raise [fleet] checkpoint_max_mib)", warn=True)
                self._over_limit_said = True
            return False
        self._over_limit_said = False
        progress = self._progress()
        snap = self.scratch / "checkpoint-snapshot"
        bundle = self.scratch / "checkpoint-sync.tar.zst"
        started = time.monotonic()
        try:
            snapshot(self.folder, snap)
            taken, _ = fingerprint(snap)
            try:
                sha256, size = pack_artifact(snap, bundle, durable=False)
            except BundleError as e:
                self._say(f"checkpoint not synced: {e}", warn=True)
                self._synced = current  # refused as it is; try again once the folder changes
                return False
            upload = self._request(verbs.CHECKPOINT_URL, CheckpointUploadRequest(self.job_id, self.lease_id, sha256, size))
            with for_agent(self._user, bundle) as packed:
                upload_to_url(upload.url, packed, method=upload.method, fields=upload.fields)
            self._request(verbs.CHECKPOINT_SAVED,
                          CheckpointSavedRequest(self.job_id, self.lease_id, sha256, size, progress=progress),
                          timeout_s=CHECKPOINT_REQUEST_TIMEOUT_S)
        finally:
            shutil.rmtree(snap, ignore_errors=True)
            bundle.unlink(missing_ok=True)
        # Hard links keep names, sizes, mtimes and inodes: the snapshot's fingerprint is the folder's as packed.
        self._synced = taken
        self.syncs += 1
        self.last_sync_ts = time.time()
        logger.info("job %s: checkpoint synced (%s, %s, %.2fs)", self.name, why, _mib(size), time.monotonic() - started)
        if why == "final":
            self._say(f"final checkpoint synced ({_mib(size)})")
        return True

    def _say(self, text: str, *, warn: bool = False) -> None:
        logger.log(logging.WARNING if warn else logging.INFO, "job %s: %s", self.name, text)
        with suppress(Exception):
            self._log(f"mqfleet: {text}")


def _mib(size: int) -> str:
    return f"{size / MIB:.1f} MiB"

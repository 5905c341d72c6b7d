"""Garbage collection of the artifact store: the objects no job row references, found and (unless a
dry run) deleted, for `mqfleet gc` (docs/OPERATIONS.md, "Retention").

An object is referenced when a job's `artifact` or its artifact record names its sha256; a staging
object (an upload not yet promoted, docs/SECURITY.md "Artifacts") while its lease lives. An artifact
being promoted right now has no job row yet; the coordinator remembers every sha256 it handed an
upload URL for during the URL's lifetime, and those are never collected.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import TYPE_CHECKING

from mqfleet.wire.replies import GcFailure, GcObject, GcReply

if TYPE_CHECKING:
    from mqfleet.coordinator.sql.sqlite import StateFile
    from mqfleet.store.base import ArtifactStore

logger = logging.getLogger(__name__)

#: Seconds an upload URL stays valid (store.presign_put's default): its object is spared this long.
UPLOAD_WINDOW_S = 3600.0
#: Objects listed in a gc reply, at most (the counts and byte totals cover all).
LISTED_MAX = 1000

_SHA_IN_KEY = re.compile(r"([0-9a-f]{64})")
# A job's checkpoint (store.checkpoint_key_for): kept while it is the job's latest (coordinator/tables/checkpoints.py).
_CHECKPOINT_KEY = re.compile(r"(?:^|/)checkpoints/[0-9a-f]{64}/([0-9a-f]{64})\.tar\.zst$")
# An upload's staging object (store.staging_key): garbage once its lease is gone.
_STAGING_KEY = re.compile(r"(?:^|/)staging/([0-9a-f]{32})\.tar\.zst$")


class UploadWindow:
    """sha256s handed an upload URL recently: their objects may exist before any row references them."""

    def __init__(self) -> None:
        self._granted: dict[str, float] = {}
        self._lock = threading.Lock()

    def grant(self, sha256: str, now: float) -> None:
        with self._lock:
            self._granted[sha256] = now
            if len(self._granted) > 10_000:
                self._forget(now)

    def _forget(self, now: float) -> None:
        for sha, ts in list(self._granted.items()):
            if now - ts > UPLOAD_WINDOW_S:
                del self._granted[sha]

    def open_shas(self, now: float) -> set[str]:
        with self._lock:
            self._forget(now)
            return set(self._granted)


def latest_checkpoint_keys(state: StateFile) -> set[str]:
    """Store keys of every job's latest checkpoint (the table coordinator/tables/checkpoints.py owns)."""
    return {str(r[0]) for r in state.read("SELECT key FROM checkpoints")}


def live_lease_ids(state: StateFile) -> set[str]:
    with state.lock:
        return {str(r[0]) for r in state.conn.execute("SELECT lease_id FROM leases")}


def referenced_shas(state: StateFile) -> set[str]:
    """Every sha256 a job row or a job's artifact record names."""
    with state.lock:
        rows = state.conn.execute(
            "SELECT artifact FROM jobs WHERE artifact IS NOT NULL UNION SELECT sha256 FROM job_artifacts"
        ).fetchall()
    return {str(r[0]) for r in rows}


def collect_garbage(
    state: StateFile, store: ArtifactStore, uploads: UploadWindow, *, dry_run: bool, now: float | None = None
) -> GcReply:
    """Find (and unless `dry_run`, delete) the store objects no job references.

    `objects` lists at most LISTED_MAX of them; `kept` counts the referenced (or being uploaded) objects;
    `ignored` the objects whose name holds no sha256 (not mqfleet's); `failed` the deletions that failed.
    """
    now = time.time() if now is None else now
    referenced = referenced_shas(state)
    spared = uploads.open_shas(now)
    leases = live_lease_ids(state)
    checkpoints = latest_checkpoint_keys(state)
    unreferenced: list[tuple[str, int]] = []
    kept = ignored = 0
    for key, size in store.list_objects():
        staged = _STAGING_KEY.search(key)
        if staged is not None:
            if staged.group(1) in leases:
                kept += 1  # an upload of a live lease
            else:
                unreferenced.append((key, size))  # left by an attempt that ended without completing
            continue
        checkpoint = _CHECKPOINT_KEY.search(key)
        if checkpoint is not None:
            if key in checkpoints or checkpoint.group(1) in spared:
                kept += 1  # a job's latest checkpoint, or one being uploaded
            else:
                unreferenced.append((key, size))  # replaced or discarded; the sweep may not have got to it yet
            continue
        match = _SHA_IN_KEY.search(key.rsplit("/", 1)[-1])
        if match is None:
            ignored += 1  # not an object mqfleet names (a shared bucket's other files): never ours to delete
            continue
        if match.group(1) in referenced or match.group(1) in spared:
            kept += 1
            continue
        unreferenced.append((key, size))
    failed: list[GcFailure] = []
    freed = 0
    if not dry_run:
        for key, size in unreferenced:
            try:
                store.delete(key)
            except Exception as e:  # one stuck object must not stop the rest
                failed.append(GcFailure(key=key, error=str(e)))
                continue
            freed += size
            match = _SHA_IN_KEY.search(key.rsplit("/", 1)[-1])
            if match and not _CHECKPOINT_KEY.search(key):
                # the store no longer holds it, so upload_url must not answer "exists" for it
                with state.transaction():
                    state.conn.execute("DELETE FROM artifacts WHERE sha256 = ?", (match.group(1),))
        logger.info("gc: deleted %d unreferenced object(s), %d bytes; %d failed", len(unreferenced) - len(failed),
                    freed, len(failed))
    total = sum(size for _, size in unreferenced)
    return GcReply(
        dry_run=dry_run, count=len(unreferenced), bytes=total if dry_run else freed, kept=kept, ignored=ignored,
        objects=[GcObject(key=k, size=s) for k, s in unreferenced[:LISTED_MAX]], failed=failed,
    )

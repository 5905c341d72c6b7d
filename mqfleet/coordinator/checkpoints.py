"""Checkpoints that follow a job: the latest verified checkpoint of each job, its verbs, and its store objects.

An agent syncs a running trainer's checkpoint folder as a bundle under a key of its own per job and
content (`checkpoints/{job_id}/{sha256}.tar.zst`); this module hands out the presigned PUT, checks the
uploaded object's sha256, records it as the job's latest checkpoint and puts it in the next attempt's
grant as a presigned GET (docs/INTERNALS.md, "Checkpoints"). A replaced or discarded checkpoint's
object is queued as garbage and deleted by the sweep, outside every transaction. Owns the three
`checkpoint*` tables (schema.py); it never touches a job's status.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import TYPE_CHECKING, Any

from mqfleet import defaults
from mqfleet.coordinator.sqlite import StateFile
from mqfleet.coordinator.verify import check_digest
from mqfleet.errors import ArtifactMismatchError, BadRequestError, LeaseLostError, ObjectMissingError, StoreError
from mqfleet.protocol import field as req_field
from mqfleet.protocol import ok
from mqfleet.state import JobStatus

if TYPE_CHECKING:
    from mqfleet.coordinator.handlers import HandlerContext, Request

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
#: How often the sweep deletes the store objects of replaced and discarded checkpoints.
GARBAGE_INTERVAL_S = 5.0
#: Objects deleted per sweep, so one sweep never holds up lease expiry for long.
GARBAGE_BATCH = 50



class CheckpointBook:
    """The checkpoint tables in the coordinator's state file; every method is one transaction (or joins one)."""

    def __init__(self, state: StateFile) -> None:
        self.state = state
        self.last_garbage_ts = 0.0

    def latest(self, job_id: str) -> dict[str, Any] | None:
        """The job's latest verified checkpoint: attempt, host, sha256, size, key, saved_ts, progress."""
        row = self.state.read_one(
            "SELECT attempt, host, sha256, size, key, saved_ts, progress FROM checkpoints WHERE job_id = ?", (job_id,)
        )
        if row is None:
            return None
        return {**dict(row), "progress": json.loads(row["progress"]) if row["progress"] else None}

    def detail(self, job_id: str) -> dict[str, Any]:
        """What `show` tells about a job's checkpoints: the latest (or None) and how its last attempt started."""
        latest = self.latest(job_id)
        if latest is not None:
            latest.pop("key")
        row = self.state.read_one(
            "SELECT attempt, resumed, from_attempt, note, ts FROM checkpoint_restores WHERE job_id = ?", (job_id,)
        )
        restore = None if row is None else {**dict(row), "resumed": bool(row["resumed"])}
        return {"latest": latest, "last_start": restore}

    def check_writer(self, job_id: str, lease_id: str, host: str) -> int:
        """The attempt number a checkpoint from this lease belongs to; LeaseLostError when it may not write one.

        The current lease may always write. So may an attempt whose lease just ended (a final sync after a
        failed renewal races the expiry) while no other attempt holds the job and none saved a later
        checkpoint: then its state is still the furthest the job got.
        """
        with self.state.lock:
            c = self.state.conn
            lease = c.execute("SELECT lease_id, host, attempt FROM leases WHERE job_id = ?", (job_id,)).fetchone()
            if lease is not None and lease["lease_id"] == lease_id and lease["host"] == host:
                return int(lease["attempt"])
            attempt = c.execute(
                "SELECT number FROM attempts WHERE job_id = ? AND lease_id = ? AND host = ?", (job_id, lease_id, host)
            ).fetchone()
            job = c.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            latest = c.execute("SELECT attempt FROM checkpoints WHERE job_id = ?", (job_id,)).fetchone()
        if attempt is None or job is None or lease is not None:
            raise LeaseLostError(f"lease {lease_id} of {host} is not the current lease of job {job_id}")
        if job["status"] in (JobStatus.COMPLETED.value, JobStatus.CANCELLED.value):
            raise LeaseLostError(f"job {job_id} is {job['status']}; it keeps no checkpoint")
        if latest is not None and latest["attempt"] > attempt["number"]:
            raise LeaseLostError(f"job {job_id}: attempt {latest['attempt']} already saved a later checkpoint")
        return int(attempt["number"])

    def record(
        self, job_id: str, *, attempt: int, host: str, sha256: str, size: int, key: str,
        progress: dict[str, Any] | None, now: float,
    ) -> None:
        """Make a verified object the job's latest checkpoint; the one it replaces becomes garbage."""
        with self.state.transaction() as c:
            old = c.execute("SELECT key FROM checkpoints WHERE job_id = ?", (job_id,)).fetchone()
            if old is not None and old["key"] != key:
                _queue_garbage(c, old["key"], now)
            c.execute("DELETE FROM checkpoint_garbage WHERE key = ?", (key,))
            c.execute(
                "INSERT OR REPLACE INTO checkpoints (job_id, attempt, host, sha256, size, key, saved_ts, progress) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, attempt, host, sha256, size, key, now, json.dumps(progress) if progress is not None else None),
            )
        logger.info("job %s: checkpoint of attempt %d saved (%d bytes, sha256 %s)", job_id[:12], attempt, size, sha256[:12])

    def discard(self, job_id: str, now: float, why: str) -> bool:
        """Forget a job's checkpoint (its object becomes garbage); False when it had none."""
        with self.state.transaction() as c:
            old = c.execute("SELECT key FROM checkpoints WHERE job_id = ?", (job_id,)).fetchone()
            if old is None:
                return False
            _queue_garbage(c, old["key"], now)
            c.execute("DELETE FROM checkpoints WHERE job_id = ?", (job_id,))
        logger.info("job %s: checkpoint discarded (%s)", job_id[:12], why)
        return True

    def note_start(
        self, job_id: str, *, attempt: int, resumed: bool, from_attempt: int | None, note: str, now: float
    ) -> None:
        """Remember how an attempt started (resumed from which attempt, or fresh and why) for `show`."""
        with self.state.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO checkpoint_restores (job_id, attempt, resumed, from_attempt, note, ts) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, attempt, int(resumed), from_attempt, note[:1000], now),
            )

    def garbage(self, limit: int = GARBAGE_BATCH) -> list[str]:
        rows = self.state.read("SELECT key FROM checkpoint_garbage ORDER BY since_ts LIMIT ?", (limit,))
        return [r[0] for r in rows]

    def forget_garbage(self, keys: list[str]) -> None:
        with self.state.transaction() as c:
            c.executemany("DELETE FROM checkpoint_garbage WHERE key = ?", [(k,) for k in keys])


def _queue_garbage(c: sqlite3.Connection, key: str, now: float) -> None:
    c.execute("INSERT OR IGNORE INTO checkpoint_garbage (key, since_ts) VALUES (?, ?)", (key, now))


# --- the sweep: store objects of replaced and discarded checkpoints --------------------------------


def collect_garbage(coord: HandlerContext, now: float) -> int:
    """Delete queued checkpoint objects from the store, outside the lock; returns how many went."""
    book = coord.checkpoints
    if now - book.last_garbage_ts < GARBAGE_INTERVAL_S:
        return 0
    book.last_garbage_ts = now
    with coord.lock:
        keys = book.garbage()
    deleted = []
    for key in keys:
        try:
            coord.store.delete(key)
            deleted.append(key)
        except StoreError as e:  # kept queued: the next sweep tries again
            logger.warning("checkpoint object %s: delete failed, retrying later: %s", key, e)
    if deleted:
        with coord.lock:
            book.forget_garbage(deleted)
    return len(deleted)


# --- the grant ---------------------------------------------------------------------------------


def grant_fields(coord: HandlerContext, grant: dict[str, Any]) -> dict[str, Any]:
    """What a claim grant adds for checkpoints: whether the job gets a folder, how often it syncs, its limit,
    and the latest checkpoint with a presigned GET (None on a first attempt or a fresh start)."""
    manifest = coord.manifest
    spec = grant["spec"]
    trainer = manifest.trainers.get(spec.get("model", "")) if manifest else None
    resumable = trainer.resumable if trainer is not None else True
    fleet = manifest.fleet if manifest else None
    interval_s = spec.get("checkpoint_interval_s") or (fleet.checkpoint_interval_s if fleet else defaults.CHECKPOINT_INTERVAL_S)
    max_mib = fleet.checkpoint_max_mib if fleet else defaults.CHECKPOINT_MAX_MIB
    checkpoint = None
    latest = coord.checkpoints.latest(spec["id"]) if resumable else None
    if latest is not None:
        checkpoint = {
            # The agent fetches it before the trainer starts, so a download URL's short life is enough.
            "url": coord.store.presign_get(latest["key"], expires_s=defaults.DOWNLOAD_URL_EXPIRES_S),
            "sha256": latest["sha256"],
            "size": latest["size"],
            "attempt": latest["attempt"],
            "saved_ts": latest["saved_ts"],
            "progress": latest["progress"],
        }
    return {
        "resumable": resumable,
        "checkpoint_interval_s": float(interval_s),
        "checkpoint_max_mib": float(max_mib),
        "checkpoint": checkpoint,
    }


# --- agent verbs -------------------------------------------------------------------------------


def _upload_fields(req: Request) -> tuple[str, str, str, int]:
    job_id = req_field(req.body, "job_id", str)
    lease_id = req_field(req.body, "lease_id", str)
    sha256 = req_field(req.body, "sha256", str)
    size = req_field(req.body, "size", int)
    check_digest(sha256, size)
    return job_id, lease_id, sha256, size


def handle_checkpoint_url(coord: HandlerContext, req: Request) -> dict[str, Any]:
    """A presigned PUT for a checkpoint bundle of a job this host is (or was last) running."""
    job_id, lease_id, sha256, size = _upload_fields(req)
    coord.checkpoints.check_writer(job_id, lease_id, req.client)
    manifest = coord.manifest
    max_mib = manifest.fleet.checkpoint_max_mib if manifest else defaults.CHECKPOINT_MAX_MIB
    if size > max_mib * MIB:
        raise BadRequestError(
            f"checkpoint bundle of {size / MIB:.1f} MiB is over checkpoint_max_mib = {max_mib:g}; "
            "save less state or raise [fleet] checkpoint_max_mib"
        )
    key = coord.store.checkpoint_key_for(job_id, sha256)
    coord.uploads.grant(sha256, req.now)  # gc spares the object until the checkpoint is recorded
    # Short-lived like artifact uploads (docs/SECURITY.md): S3 checks expiry when the PUT starts, which is at once.
    expires_s = int(defaults.UPLOAD_URL_SLACK_S)
    return ok(url=coord.store.presign_put(key, expires_s=expires_s), method="PUT", key=key, expires_s=expires_s)


def prepare_checkpoint_saved(coord: HandlerContext, req: Request) -> dict[str, Any]:
    """Read the uploaded bundle back and hash it, outside the lock: only verified checkpoints are handed on."""
    job_id, lease_id, sha256, size = _upload_fields(req)
    with coord.lock:
        coord.checkpoints.check_writer(job_id, lease_id, req.client)
    key = coord.store.checkpoint_key_for(job_id, sha256)
    if coord.store.stat(key) is None:
        raise ObjectMissingError(f"checkpoint {sha256[:12]} of job {job_id[:12]} is not in the store; upload it first")
    actual_sha, actual_size = coord.store.hash_object(key)
    if (actual_sha, actual_size) != (sha256, size):
        coord.store.delete(key)
        raise ArtifactMismatchError(
            f"stored checkpoint is {actual_size} bytes with sha256 {actual_sha[:12]}, "
            f"not {size} bytes with sha256 {sha256[:12]}; sync again"
        )
    return {"key": key}


def handle_checkpoint_saved(coord: HandlerContext, req: Request) -> dict[str, Any]:
    job_id, lease_id, sha256, size = _upload_fields(req)
    attempt = coord.checkpoints.check_writer(job_id, lease_id, req.client)
    progress = req_field(req.body, "progress", dict, None)
    if progress is not None and len(json.dumps(progress)) > 4096:
        progress = None  # shown in `show` only; a huge one is not worth keeping
    coord.checkpoints.record(
        job_id, attempt=attempt, host=req.client, sha256=sha256, size=size, key=req.prepared["key"],
        progress=progress, now=req.now,
    )
    coord.mark_changed(job_id)
    return ok(saved_ts=req.now, attempt=attempt)


def handle_checkpoint_start(coord: HandlerContext, req: Request) -> dict[str, Any]:
    """How an attempt started: resumed from the checkpoint it was given, or fresh with the reason.

    A checkpoint that failed its sha256 check or could not be read is discarded, so the next attempt
    does not stumble over it again.
    """
    job_id = req_field(req.body, "job_id", str)
    lease_id = req_field(req.body, "lease_id", str)
    resumed = req_field(req.body, "resumed", bool)
    note = req_field(req.body, "note", str, "")
    bad_sha256 = req_field(req.body, "rejected_sha256", str, None)
    attempt = coord.checkpoints.check_writer(job_id, lease_id, req.client)
    latest = coord.checkpoints.latest(job_id)
    from_attempt = req_field(req.body, "from_attempt", int, None)
    if bad_sha256 is not None and latest is not None and latest["sha256"] == bad_sha256:
        coord.checkpoints.discard(job_id, req.now, f"attempt {attempt} could not use it: {note}")
    coord.checkpoints.note_start(
        job_id, attempt=attempt, resumed=resumed, from_attempt=from_attempt, note=note, now=req.now
    )
    coord.mark_changed(job_id)
    return ok(attempt=attempt)

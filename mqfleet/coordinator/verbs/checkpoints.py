"""Checkpoint verbs (`checkpoint_url`, `checkpoint_saved`, `checkpoint_start`), the grant's checkpoint
fields and the sweep that deletes replaced checkpoints' store objects; the table they read and write
is `checkpoints.CheckpointBook` (docs/INTERNALS.md, "Checkpoints").
"""

from __future__ import annotations

import dataclasses
import json
import logging

from mqfleet import defaults
from mqfleet.coordinator.tables.checkpoints import GARBAGE_INTERVAL_S, MIB
from mqfleet.coordinator.verbs.context import HandlerContext, Request
from mqfleet.coordinator.verbs.verify import check_digest
from mqfleet.errors import ArtifactMismatchError, BadRequestError, ObjectMissingError, StateError, StoreError
from mqfleet.wire.replies import CheckpointSavedReply, CheckpointStartReply, CheckpointUrlReply
from mqfleet.wire.requests import (
    CheckpointSavedRequest,
    CheckpointStartRequest,
    CheckpointUploadRequest,
    Grant,
    GrantedCheckpoint,
)
from mqfleet.wire.topics import JsonObject

logger = logging.getLogger(__name__)


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


def with_checkpoint(coord: HandlerContext, grant: Grant) -> Grant:
    """A claim's grant with its checkpoint fields: whether the job gets a folder, how often it syncs, its limit,
    and the latest checkpoint with a presigned GET (None on a first attempt or a fresh start)."""
    manifest = coord.manifest
    trainer = manifest.trainers.get(grant.job.model) if manifest else None
    resumable = trainer.resumable if trainer is not None else True
    checkpoint = None
    latest = coord.checkpoints.latest(grant.job.id) if resumable else None
    if latest is not None:
        checkpoint = GrantedCheckpoint(
            # The agent fetches it before the trainer starts, so a download URL's short life is enough.
            url=coord.store.presign_get(latest.key, expires_s=defaults.DOWNLOAD_URL_EXPIRES_S),
            sha256=latest.saved.sha256, size=latest.saved.size, attempt=latest.saved.attempt,
            saved_ts=latest.saved.saved_ts, progress=latest.saved.progress,
        )
    return dataclasses.replace(grant, resumable=resumable, checkpoint_interval_s=_interval_s(coord, grant.spec),
                               checkpoint_max_mib=_max_mib(coord), checkpoint=checkpoint)


def _interval_s(coord: HandlerContext, spec: JsonObject) -> float:
    """How often the job's agent syncs its checkpoint: the job's own interval, else the fleet's."""
    own_interval_s = spec.get("checkpoint_interval_s")  # from the job's stored spec
    if isinstance(own_interval_s, (int, float)) and own_interval_s > 0:
        return float(own_interval_s)
    manifest = coord.manifest
    return float(manifest.fleet.checkpoint_interval_s if manifest else defaults.CHECKPOINT_INTERVAL_S)


def _max_mib(coord: HandlerContext) -> float:
    manifest = coord.manifest
    return float(manifest.fleet.checkpoint_max_mib if manifest else defaults.CHECKPOINT_MAX_MIB)


# --- agent verbs -------------------------------------------------------------------------------


def _upload_fields(upload: CheckpointUploadRequest | CheckpointSavedRequest) -> tuple[str, str, str, int]:
    check_digest(upload.sha256, upload.size)
    return upload.job_id, upload.lease_id, upload.sha256, upload.size


def handle_checkpoint_url(coord: HandlerContext, req: Request[CheckpointUploadRequest]) -> CheckpointUrlReply:
    """A presigned upload for a checkpoint bundle of a job this host is (or was last) running.

    On S3 the store takes exactly the declared size (a POST policy); a lease gets URLs at its sync's pace
    and each URL earns one check of what it names (upload_limits).
    """
    job_id, lease_id, sha256, size = _upload_fields(req.body)
    coord.checkpoints.check_writer(job_id, lease_id, req.client)
    max_mib = _max_mib(coord)
    if size > max_mib * MIB:
        raise BadRequestError(
            f"checkpoint bundle of {size / MIB:.1f} MiB is over checkpoint_max_mib = {max_mib:g}; "
            "save less state or raise [fleet] checkpoint_max_mib"
        )
    # The agent syncs at most once per interval (never under its floor), plus a final sync.
    every_s = max(defaults.CHECKPOINT_INTERVAL_MIN_S, _interval_s(coord, coord.catalog.job_spec(job_id)))
    coord.upload_limits.take_url(lease_id, "checkpoint", req.now, every_s=every_s)
    key = coord.store.checkpoint_key_for(job_id, sha256)
    coord.uploads.grant(sha256, req.now)  # gc spares the object until the checkpoint is recorded
    # Short-lived like artifact uploads (docs/SECURITY.md): S3 checks expiry when the upload starts, which is at once.
    expires_s = int(defaults.UPLOAD_URL_SLACK_S)
    upload = coord.store.presign_upload(key, size, expires_s)
    coord.upload_limits.earn_check(lease_id, sha256, size)
    return CheckpointUrlReply(url=upload.url, method=upload.method, key=key, expires_s=expires_s,
                              fields=upload.fields or None)


def prepare_checkpoint_saved(coord: HandlerContext, req: Request[CheckpointSavedRequest]) -> str:
    """Check the uploaded bundle outside the lock, its size before a byte is read, then its sha256: only
    verified checkpoints are handed on (the key they are stored under)."""
    job_id, lease_id, sha256, size = _upload_fields(req.body)
    with coord.lock:
        coord.checkpoints.check_writer(job_id, lease_id, req.client)
        latest = coord.checkpoints.latest(job_id)
    coord.upload_limits.check_reads_allowed(lease_id)
    if not coord.upload_limits.take_check(lease_id, sha256, size):
        raise StateError(f"checkpoint {sha256[:12]} of {size} bytes was not uploaded through a checkpoint_url of "
                         "this lease, or was checked already; sync again (a new checkpoint_url)")
    key = coord.store.checkpoint_key_for(job_id, sha256)
    try:
        _check_checkpoint(coord, key, sha256, size, keep=latest is not None and latest.key == key)
    except ArtifactMismatchError:
        coord.upload_limits.note_failed_check(lease_id)
        raise
    return key


def _check_checkpoint(coord: HandlerContext, key: str, sha256: str, size: int, *, keep: bool) -> None:
    """The stored object's size (a stat), then its sha256; a mismatching object is deleted, unless `keep`
    (the job's verified checkpoint is never deleted for what a request said of it)."""
    stored_size = coord.store.stat(key)
    if stored_size is None:
        raise ObjectMissingError(f"checkpoint {sha256[:12]} is not in the store; upload it first")
    if stored_size != size:
        if not keep:
            coord.store.delete(key)
        raise ArtifactMismatchError(f"stored checkpoint is {stored_size} bytes, not {size}; nothing was read; sync again")
    actual_sha, actual_size = coord.store.hash_object(key)
    if (actual_sha, actual_size) != (sha256, size):
        coord.store.delete(key)
        raise ArtifactMismatchError(
            f"stored checkpoint is {actual_size} bytes with sha256 {actual_sha[:12]}, "
            f"not {size} bytes with sha256 {sha256[:12]}; sync again"
        )


def handle_checkpoint_saved(coord: HandlerContext, req: Request[CheckpointSavedRequest]) -> CheckpointSavedReply:
    job_id, lease_id, sha256, size = _upload_fields(req.body)
    assert isinstance(req.prepared, str), "prepare_checkpoint_saved runs first"
    attempt = coord.checkpoints.check_writer(job_id, lease_id, req.client)
    progress = req.body.progress
    if progress is not None and len(json.dumps(progress)) > 4096:
        progress = None  # shown in `show` only; a huge one is not worth keeping
    coord.checkpoints.record(
        job_id, attempt=attempt, host=req.client, sha256=sha256, size=size, key=req.prepared,
        progress=progress, now=req.now,
    )
    coord.mark_changed(job_id)
    return CheckpointSavedReply(saved_ts=req.now, attempt=attempt)


def handle_checkpoint_start(coord: HandlerContext, req: Request[CheckpointStartRequest]) -> CheckpointStartReply:
    """How an attempt started: resumed from the checkpoint it was given, or fresh with the reason.

    A checkpoint that failed its sha256 check or could not be read is discarded, so the next attempt
    does not stumble over it again.
    """
    start = req.body
    job_id, lease_id, resumed, note, bad_sha256 = start.job_id, start.lease_id, start.resumed, start.note, start.rejected_sha256
    attempt = coord.checkpoints.check_writer(job_id, lease_id, req.client)
    record = coord.checkpoints.latest(job_id)
    latest = record.saved if record is not None else None
    from_attempt = start.from_attempt
    if bad_sha256 is not None and latest is not None and latest.sha256 == bad_sha256:
        coord.checkpoints.discard(job_id, req.now, f"attempt {attempt} could not use it: {note}")
    resumed_from = latest if resumed and latest is not None and latest.attempt == from_attempt else None
    coord.checkpoints.note_start(
        job_id, attempt=attempt, resumed=resumed, from_attempt=from_attempt, note=note, now=req.now,
        from_progress=resumed_from.progress if resumed_from is not None else None,
    )
    coord.mark_changed(job_id)
    return CheckpointStartReply(attempt=attempt)

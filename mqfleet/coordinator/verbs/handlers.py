"""One `handle_<verb>` per RPC verb, and the HANDLERS table the service dispatches through.

Handlers raise MqfleetError subclasses; the service alone turns them into replies.
Each handler runs inside one database transaction opened by the service; anything
slow (reading an artifact back from the store) happens in a `prepare` step before
the transaction, so other requests are not held up by it. Handlers see the
coordinator only through `HandlerContext`, the narrow part of it they need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic

from mqfleet import defaults
from mqfleet.coordinator.tables.leases import Completion
from mqfleet.coordinator.tables.listing import JobFilter
from mqfleet.coordinator.tables.manifests import ORIGIN_FILE, ORIGIN_SENT
from mqfleet.coordinator.tables.rows import ManifestRows, manifest_rows
from mqfleet.coordinator.tables.upload_limits import ARTIFACT_URL_EVERY_S
from mqfleet.coordinator.verbs import checkpoints
from mqfleet.coordinator.verbs.context import Body, Handler, HandlerContext, Prepare, Rep, Request
from mqfleet.coordinator.verbs.queries import (
    handle_artifacts,
    handle_download_url,
    handle_health,
    handle_job,
    handle_workers,
)
from mqfleet.coordinator.verbs.reports import handle_compare, handle_gc, prepare_gc, record_attempt_history
from mqfleet.coordinator.verbs.verify import accept_artifact, check_digest
from mqfleet.errors import ArtifactMismatchError, ManifestError, NotFoundError, UnknownHostError
from mqfleet.manifest.load import load_manifest, parse_manifest
from mqfleet.wire import verbs
from mqfleet.wire.published import ControlAction, ControlMessage
from mqfleet.wire.replies import (
    CompleteReply,
    DrainReply,
    JobReply,
    JobsReply,
    LogsReply,
    ManifestReply,
    ReloadReply,
    RequeuedJob,
    RequeueReply,
    UndrainReply,
)
from mqfleet.wire.requests import (
    ClaimReply,
    CompleteRequest,
    FailRequest,
    HostRequest,
    JobOrder,
    JobRefRequest,
    JobsRequest,
    LogsRequest,
    NoFields,
    ReloadRequest,
    RenewReply,
    RenewRequest,
    RequeueRequest,
    StatusReply,
    UploadUrlReply,
    UploadUrlRequest,
)
from mqfleet.wire.topics import Verb
from mqfleet.wire.verbs import VerbSpec

# --- agent verbs: the host is the client level of the topic ---------------------------


def _check_known_host(coord: HandlerContext, host: str) -> None:
    # A phantom host (any certificate, any client level) must not create rows or take jobs.
    if not coord.is_known_host(host):
        raise UnknownHostError(
            f"host {host!r} has no [[hosts]] entry and no advert; start its agent (which publishes "
            "one) or add it to the manifest"
        )


def handle_claim(coord: HandlerContext, req: Request[NoFields]) -> ClaimReply:
    host = req.client
    _check_known_host(coord, host)
    # A claim proves the host is alive even if its retained status has not arrived yet.
    coord.hosts.record_presence(host, True, req.now, grace_s=coord.grace_s)
    grant = coord.claims.claim(host, req.now, coord.manifest)
    if grant is None:
        return ClaimReply(job=None)
    coord.history.note_attempt(grant.job.id, grant.attempt, host)  # its log batches skip a query
    return ClaimReply(job=checkpoints.with_checkpoint(coord, grant))


def handle_renew(coord: HandlerContext, req: Request[RenewRequest]) -> RenewReply:
    _check_known_host(coord, req.client)
    asked = req.body
    job_id, lease_id = asked.job_id, asked.lease_id
    renewal = coord.leases.renew(job_id, lease_id, req.client, req.now, asked.progress, lease_s=coord.lease_s)
    if renewal.progressed:
        # Watchers see progress through the retained job state (at most 1/s); the same progress again
        # carries nothing new, so it is not republished.
        coord.mark_progress(job_id)
    if asked.progress_reports is not None:
        record_attempt_history(coord, asked.progress_reports, None, job_id, _attempt_of(coord, job_id))
    return RenewReply(expires_ts=renewal.expires_ts)


def _attempt_of(coord: HandlerContext, job_id: str) -> int | None:
    """The attempt number of a job's live lease, for its history; read before the lease is checked (and
    ended). None, and no query, when `[fleet] keep_history = false` stores no history."""
    if not coord.fleet.keep_history:
        return None
    lease = coord.catalog.lease(job_id)
    return lease.attempt if lease else None


def handle_upload_url(coord: HandlerContext, req: Request[UploadUrlRequest]) -> UploadUrlReply:
    upload = req.body
    job_id, lease_id, sha256, size = upload.job_id, upload.lease_id, upload.sha256, upload.size
    check_digest(sha256, size)
    coord.leases.check_lease(job_id, lease_id, req.client)
    coord.uploads.grant(sha256, req.now)  # gc spares the object until a job row references it
    key = coord.store.key_for(sha256)
    if coord.artifacts.is_verified(sha256) and coord.store.stat(key) == size:
        # The completion hashes the stored object again before trusting it (verify.accept_artifact).
        return UploadUrlReply(exists=True, key=key)
    # Never a URL for the artifact key itself: the bytes land in this lease's staging key and
    # become the artifact only once the coordinator has hashed them (docs/SECURITY.md, "Artifacts").
    # On S3 the store takes exactly `size` bytes there (a POST policy), and a lease gets URLs at a pace.
    coord.upload_limits.take_url(lease_id, "artifact", req.now, every_s=ARTIFACT_URL_EVERY_S)
    lease = coord.catalog.lease(job_id)
    lease_left_s = (lease.expires_ts - req.now) if lease else 0.0
    expires_s = int(min(defaults.UPLOAD_URL_MAX_S, max(0.0, lease_left_s) + defaults.UPLOAD_URL_SLACK_S))
    staged = coord.store.staging_key(lease_id)
    presigned = coord.store.presign_upload(staged, size, expires_s)
    return UploadUrlReply(exists=False, url=presigned.url, method=presigned.method, key=key, upload_key=staged,
                          expires_s=expires_s, fields=presigned.fields or None)


def prepare_complete(coord: HandlerContext, req: Request[CompleteRequest]) -> str:
    """The artifact's key, once its bytes are hashed and moved there."""
    done = req.body
    with coord.lock:
        coord.leases.check_lease(done.job_id, done.lease_id, req.client)
    coord.upload_limits.check_reads_allowed(done.lease_id)
    try:
        return accept_artifact(coord.store, done.sha256, done.size, lease_id=done.lease_id)
    except ArtifactMismatchError:
        coord.upload_limits.note_failed_check(done.lease_id)
        raise


def handle_complete(coord: HandlerContext, req: Request[CompleteRequest]) -> CompleteReply:
    done = req.body
    job_id, lease_id = done.job_id, done.lease_id
    assert isinstance(req.prepared, str), "prepare_complete runs first"
    artifact = Completion(sha256=done.sha256, size=done.size, key=req.prepared,
                          metrics=done.metrics, output_tail=done.output_tail)
    attempt = _attempt_of(coord, job_id)
    row = coord.leases.complete(job_id, lease_id, req.client, artifact, req.now)
    record_attempt_history(coord, done.progress_reports, done.usage, job_id, attempt)
    # The artifact is the result; a checkpoint only ever served to get there.
    coord.checkpoints.discard(job_id, req.now, "job completed")
    return CompleteReply(status=row.status, job=row)


def handle_fail(coord: HandlerContext, req: Request[FailRequest]) -> StatusReply:
    failure = req.body
    job_id, lease_id, cause = failure.job_id, failure.lease_id, failure.cause  # an AGENT_CAUSES member
    attempt = _attempt_of(coord, job_id)
    status = coord.leases.fail(
        job_id,
        lease_id,
        req.client,
        cause,
        exit_code=failure.exit_code,
        output_tail=failure.output_tail[-20_000:],
        error=failure.error[:2000],
        now=req.now,
        fleet=coord.fleet,
    )
    record_attempt_history(coord, failure.progress_reports, failure.usage, job_id, attempt)
    return StatusReply(status=status)


# --- operator verbs: need the operator token ------------------------------------------


def handle_cancel(coord: HandlerContext, req: Request[JobRefRequest]) -> JobReply:
    job_id = coord.catalog.resolve_job(req.body.job)
    ended = coord.leases.cancel(job_id, req.now, fleet=coord.fleet)
    coord.checkpoints.discard(job_id, req.now, "job cancelled")
    if ended:
        coord.send_control(ended.host, ControlMessage(action=ControlAction.CANCEL, job_id=job_id, lease_id=ended.lease_id))
    return JobReply(job=coord.catalog.job(job_id))


def handle_requeue(coord: HandlerContext, req: Request[RequeueRequest]) -> RequeueReply:
    job_id = coord.catalog.resolve_job(req.body.job)
    row = coord.leases.requeue(job_id, req.now)
    if req.body.fresh:
        coord.checkpoints.discard(job_id, req.now, "requeued with --fresh")
    checkpoint = coord.checkpoints.detail(job_id)
    return RequeueReply(job=RequeuedJob(**vars(row), checkpoint=checkpoint))


def prepare_reload(coord: HandlerContext, req: Request[ReloadRequest]) -> ManifestRows:
    """Parse, validate and build the rows off the lock: at 100,000 jobs that is seconds of work, and
    renewals must wait for the writes alone (docs/CLI.md, `mqfleet reload`)."""
    reload = req.body
    try:
        if reload.manifest is None:
            manifest = load_manifest(coord.manifest_path)
        else:
            manifest = parse_manifest(reload.manifest, source=reload.source)
    except ManifestError as e:
        # Refused whole: the manifest in force stays. The problems travel in the reply.
        coord.refuse_manifest(e)
        raise
    return manifest_rows(manifest)


def handle_reload(coord: HandlerContext, req: Request[ReloadRequest]) -> ReloadReply:
    prepared = req.prepared
    assert isinstance(prepared, ManifestRows), "prepare_reload runs first"
    sent = req.body.manifest is not None
    # Stored with the jobs it made, so a restart keeps a manifest that exists only in this database.
    summary = coord.apply_manifest(prepared, req.now, origin=ORIGIN_SENT if sent else ORIGIN_FILE)
    return ReloadReply(
        source=prepared.header.source,
        added=summary["added"],
        kept=len(summary["kept"]),
        orphaned=summary["orphaned"],
        jobs=len(prepared.rows),
    )


def handle_manifest(coord: HandlerContext, req: Request[NoFields]) -> ManifestReply:
    """The manifest in force exactly as applied, so an operator can pull, edit and push it back."""
    stored = coord.stored_manifest
    if stored is None:
        raise NotFoundError("no manifest has been applied yet")
    return ManifestReply(text=stored.text, source=stored.source, sha256=stored.sha256, applied_ts=stored.applied_ts,
                         origin=stored.origin)


def handle_drain(coord: HandlerContext, req: Request[HostRequest]) -> DrainReply:
    host = req.body.host
    coord.hosts.set_draining(host, True, req.now)
    return DrainReply(host=host, draining=True)


def handle_undrain(coord: HandlerContext, req: Request[HostRequest]) -> UndrainReply:
    host = req.body.host
    released = coord.hosts.set_draining(host, False, req.now)
    return UndrainReply(host=host, draining=False, quarantine_released=released)


# --- query verbs: read-only, anyone ---------------------------------------------------


#: Jobs per `jobs` reply: a page stays well under the broker's packet limit whatever the fleet's size.
JOBS_PAGE = 2000


def handle_jobs(coord: HandlerContext, req: Request[JobsRequest]) -> JobsReply:
    asked = req.body
    where = JobFilter(status=asked.status, name_glob=asked.name)
    limit = min(JOBS_PAGE, max(1, asked.limit if asked.limit is not None else JOBS_PAGE))
    after = asked.after
    offset = max(0, asked.offset or 0)
    # A client that knows the total from its first page asks the later ones without it (a count
    # walks every matching row).
    counted = asked.count
    page, next_after, total = coord.catalog.job_page(
        where, limit=limit, after=after, newest_first=asked.order is JobOrder.NEWEST, offset=None if after is not None else offset,
        count=counted,
    )
    # next_offset serves clients that page by position; next_after is the keyset the CLI pages with.
    next_offset = None if after is not None or next_after is None else offset + len(page)
    return JobsReply(jobs=page, next_offset=next_offset, next_after=next_after, total=total if counted else None)


#: Lines per `logs` reply; the CLI asks for the next page until `next_offset` is null.
LOGS_PAGE = 5000
#: Characters of lines per `logs` page (JSON-escaping may grow them; the broker takes 4 MiB).
LOGS_PAGE_CHARS = 1024 * 1024


def handle_logs(coord: HandlerContext, req: Request[LogsRequest]) -> LogsReply:
    asked = req.body
    job_id = coord.catalog.resolve_job(asked.job)
    attempt = asked.attempt
    offset = max(0, asked.offset)
    limit = min(LOGS_PAGE, max(1, asked.limit if asked.limit is not None else LOGS_PAGE))
    shown, lines, attempts = coord.job_logs(job_id, attempt)
    page = lines[offset : offset + limit]
    # Also cut by size: the reply must stay under the broker's packet limit (4 MiB) even when every
    # line is at MAX_LOG_LINE_CHARS; a page always holds at least one line.
    size = 0
    for n, line in enumerate(page):
        size += len(line) + 8
        if size > LOGS_PAGE_CHARS and n:
            page = page[:n]
            break
    next_offset = offset + len(page) if offset + len(page) < len(lines) else None
    return LogsReply(job_id=job_id, attempt=shown, attempts=attempts, lines=page, total=len(lines), next_offset=next_offset)


@dataclass(frozen=True)
class Handling(Generic[Body, Rep]):
    """How the coordinator answers one verb of the wire table (mqfleet/wire/verbs.py): its handler, given the
    request's fields as the table's request type and returning its reply type (mypy holds the three together),
    and the slow step, if any, that runs off the lock before it."""

    wire: VerbSpec[Body, Rep]
    handler: Handler[Body, Rep]
    prepare: Prepare[Body] | None = None


#: Every verb's handling, by verb (a unit test holds its verbs to the wire table's).
HANDLERS: dict[Verb, Handling[Any, Any]] = {handling.wire.verb: handling for handling in (
    Handling(verbs.CLAIM, handle_claim),
    Handling(verbs.RENEW, handle_renew),
    Handling(verbs.UPLOAD_URL, handle_upload_url),
    Handling(verbs.COMPLETE, handle_complete, prepare=prepare_complete),
    Handling(verbs.FAIL, handle_fail),
    Handling(verbs.CHECKPOINT_URL, checkpoints.handle_checkpoint_url),
    Handling(verbs.CHECKPOINT_SAVED, checkpoints.handle_checkpoint_saved, prepare=checkpoints.prepare_checkpoint_saved),
    Handling(verbs.CHECKPOINT_START, checkpoints.handle_checkpoint_start),
    Handling(verbs.CANCEL, handle_cancel),
    Handling(verbs.REQUEUE, handle_requeue),
    Handling(verbs.RELOAD, handle_reload, prepare=prepare_reload),
    Handling(verbs.DRAIN, handle_drain),
    Handling(verbs.UNDRAIN, handle_undrain),
    Handling(verbs.GC, handle_gc, prepare=prepare_gc),
    Handling(verbs.JOBS, handle_jobs),
    Handling(verbs.JOB, handle_job),
    Handling(verbs.WORKERS, handle_workers),
    Handling(verbs.HEALTH, handle_health),
    Handling(verbs.ARTIFACTS, handle_artifacts),
    Handling(verbs.LOGS, handle_logs),
    Handling(verbs.DOWNLOAD_URL, handle_download_url),
    Handling(verbs.COMPARE, handle_compare),
    Handling(verbs.MANIFEST, handle_manifest),
)}

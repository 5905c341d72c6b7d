"""The handlers of the query verbs that show one job or the fleet (`job`, `workers`, `health`, `artifacts`,
`download_url`), each returning its typed reply (mqfleet/wire/replies.py).

The state modules hand over typed records (a job's attempts, lease, artifact, checkpoint, a host's row);
the handlers add what only the coordinator knows (usage, a refused advert) with `dataclasses.replace`,
never checking again values the coordinator itself just read.
"""

from __future__ import annotations

from dataclasses import replace

from mqfleet import defaults
from mqfleet.coordinator.verbs.context import HandlerContext, Request
from mqfleet.errors import BadRequestError
from mqfleet.wire.replies import ArtifactsReply, DownloadUrlReply, JobDetail, JobDetailReply, WorkersReply
from mqfleet.wire.requests import Health, JobRefRequest, NoFields


def handle_job(coord: HandlerContext, req: Request[JobRefRequest]) -> JobDetailReply:
    job_id = coord.catalog.resolve_job(req.body.job)
    row = coord.catalog.job(job_id)
    usage = coord.history.usage_of(job_id)
    trainer = coord.manifest.trainers.get(row.model) if coord.manifest else None
    # metrics and size live with the artifact record, not the job row
    stored = coord.artifacts.artifacts(job_id) if row.artifact else []
    return JobDetailReply(job=JobDetail(
        **vars(row),
        spec=coord.catalog.job_spec(job_id),
        attempts_detail=[replace(a, usage=usage.get(a.number)) for a in coord.catalog.attempts(job_id)],
        progress_history=coord.history.progress(job_id),
        why_waiting=coord.claims.why_waiting(job_id, coord.manifest, req.now),
        lease=coord.catalog.lease(job_id),
        outputs=list(trainer.outputs) if trainer else [],
        artifact_detail=stored[-1] if stored else None,
        checkpoint=coord.checkpoints.detail(job_id),
    ))


def handle_workers(coord: HandlerContext, req: Request[NoFields]) -> WorkersReply:
    usage = coord.history.usage_by_host()
    workers = [
        # advert_error: why the host's latest advert was refused (`advert` still shows its last good one)
        replace(w, usage=usage.get(w.id), advert_error=coord.advert_problem(w.id))
        for w in coord.hosts.hosts(coord.manifest.hosts if coord.manifest else {}, now=req.now)
    ]
    return WorkersReply(workers=workers)


def handle_health(coord: HandlerContext, req: Request[NoFields]) -> Health:
    return coord.health(req.now)


def handle_artifacts(coord: HandlerContext, req: Request[NoFields]) -> ArtifactsReply:
    return ArtifactsReply(artifacts=coord.artifacts.artifacts())


def handle_download_url(coord: HandlerContext, req: Request[JobRefRequest]) -> DownloadUrlReply:
    job_id = coord.catalog.resolve_job(req.body.job)
    row = coord.catalog.job(job_id)
    sha256 = row.artifact
    if not sha256:
        raise BadRequestError(f"job {row.name} has no artifact (status {row.status})")
    stored = coord.artifacts.artifact(sha256)
    key = coord.store.key_for(sha256)
    expires_s = defaults.DOWNLOAD_URL_EXPIRES_S
    return DownloadUrlReply(job_id=job_id, sha256=sha256, size=stored.size if stored else None,
                            url=coord.store.presign_get(key, expires_s=expires_s), expires_s=expires_s)

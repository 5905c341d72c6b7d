"""The handlers of what the coordinator reports about past work: `compare` (jobs' final metrics side
by side), `gc` (store objects no job needs), and the history of the progress reports and usage agents
send with renew, complete and fail (checked by their types: mqfleet/wire/reports.py). The HANDLERS table in coordinator/verbs/handlers.py dispatches to them.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

from mqfleet.coordinator.tables.garbage import collect_garbage
from mqfleet.errors import BadRequestError, NotFoundError
from mqfleet.wire.replies import CompareReply, CompareRow, GcReply
from mqfleet.wire.reports import ProgressReport, Usage
from mqfleet.wire.requests import COMPARE_MAX_JOBS, CompareRequest, GcRequest
from mqfleet.wire.topics import JsonObject, JsonValue

if TYPE_CHECKING:
    from mqfleet.coordinator.verbs.context import HandlerContext as Coordinator
    from mqfleet.coordinator.verbs.context import Request



def record_attempt_history(coord: Coordinator, reports: list[ProgressReport] | None, usage: Usage | None, job_id: str,
                           attempt: int | None) -> None:
    """Store the progress reports and the usage (sent when the attempt ends) a request carries, unless
    `[fleet] keep_history = false` (docs/OPERATIONS.md, "Logs"); times are kept to the millisecond."""
    if attempt is None or not coord.fleet.keep_history:
        return
    if usage is not None:
        usage = replace(usage, wall_s=round(usage.wall_s, 3), cpu_s=round(usage.cpu_s, 3))
    if reports or usage is not None:
        coord.history.append_progress(job_id, attempt, reports or [], usage=usage)


def _numeric(value: JsonValue) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def final_metrics(progress: JsonObject | None, artifact_metrics: JsonObject | None,
                  last_report: JsonObject | None) -> JsonObject:
    """A job's final (or, while it runs, latest) metrics: the artifact's, else the last progress report's,
    plus the report's loss and epoch. The last stored report is newer than the row's `progress`, which
    only renewals update (the final reports arrive with the completion)."""
    progress = last_report or progress or {}
    metrics: JsonObject = {}
    for name in ("loss", "epoch"):
        if name in progress:
            metrics[name] = progress[name]
    reported = progress.get("metrics")
    if isinstance(reported, dict):
        metrics.update(reported)
    if artifact_metrics:
        metrics.update(artifact_metrics)
    return metrics


def handle_compare(coord: Coordinator, req: Request[CompareRequest]) -> CompareReply:
    asked = req.body
    sweep, refs = asked.sweep, asked.jobs
    if (sweep is None) == (refs is None):
        raise BadRequestError("compare needs either 'jobs' (a list of job references) or 'sweep' (a sweep name)")
    if sweep is not None:
        # sweep members are rows (catalog), not held in memory with the manifest
        job_ids = coord.catalog.sweep_jobs(sweep)
        if not job_ids:
            known = ", ".join(coord.catalog.sweep_names()) or "none: the manifest has no [[sweeps]]"
            raise NotFoundError(f"no sweep named {sweep!r}; known sweeps: {known}")
    else:
        assert refs is not None
        if not refs:
            raise BadRequestError(f"'jobs' must name 1 to {COMPARE_MAX_JOBS} jobs, not none")
        job_ids = [coord.catalog.resolve_job(ref) for ref in refs]
    by_job = {a.job_id: a.metrics for a in coord.artifacts.artifacts()} if job_ids else {}
    rows = []
    for job_id in dict.fromkeys(job_ids):
        row = coord.catalog.job(job_id)
        usage = coord.history.usage_of(job_id)
        hyper = coord.catalog.job_spec(job_id).get("hyper")
        rows.append(CompareRow(
            id=row.id, name=row.name, model=row.model, mode=row.mode, status=row.status,
            host=row.host, attempts=row.attempts, hyper=hyper if isinstance(hyper, dict) else {},
            metrics=final_metrics(row.progress, by_job.get(job_id), coord.history.last_report(job_id)),
            usage=usage[max(usage)] if usage else None,
        ))
    names = sorted({k for r in rows for k, v in r.metrics.items() if _numeric(v)})
    return CompareReply(sweep=sweep, jobs=rows, metric_names=names)


def prepare_gc(coord: Coordinator, req: Request[GcRequest]) -> GcReply:
    # Listing and deleting objects is slow store work: done here, off the dispatcher thread.
    dry_run = req.body.dry_run
    return collect_garbage(coord.state, coord.store, coord.uploads, dry_run=dry_run, now=req.now)


def handle_gc(coord: Coordinator, req: Request[GcRequest]) -> GcReply:
    assert isinstance(req.prepared, GcReply), "prepare_gc runs first"
    return req.prepared

"""Jobs as rows: the rows a validated manifest becomes (built off the lock, so only the writes hold
it), a stored spec read back into a `JobSpec`, and a job's row as the wire and the CLI see it
(`JOB_SELECT`, `job_row`, `job_json`). Pure: no connection, no lock."""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from typing import Any

from mqfleet.coordinator.sql.connection import SqlRow
from mqfleet.coordinator.tables.manifest_memo import manifest_digest
from mqfleet.lifecycle import JobStatus
from mqfleet.manifest.types import JobSpec, Manifest
from mqfleet.wire.requests import JobRow
from mqfleet.wire.topics import JsonObject

#: Parsed specs kept (about 2 KB each): the candidates claims walk again and again.
SPEC_CACHE_SIZE = 2048


@dataclass(frozen=True)
class ManifestRows:
    """A validated manifest turned into jobs-table rows, ready for `Catalog.apply_manifest`."""

    #: The manifest without its jobs: what the coordinator keeps in memory once the rows are written.
    header: Manifest
    #: (id, spec JSON, column values in the INSERT's order after id) per job.
    rows: list[tuple[str, str, tuple[Any, ...]]]
    deps: list[tuple[str, str]]
    #: (sweep name, job id) for every job a [[sweeps]] entry made.
    sweeps: list[tuple[str, str]]
    #: (job id, host) for every job with allowed_hosts.
    allowed: list[tuple[str, str]]
    max_attempts: int
    #: `manifest_memo.manifest_digest` of the text, so a restart on the same file skips the load.
    digest: str
    #: The text as applied (the manifest history keeps it); the header in memory drops it.
    text: str


def manifest_rows(manifest: Manifest) -> ManifestRows:
    """The rows a manifest's jobs become; pure, so it runs off the lock (a reload's `prepare`)."""
    rows = []
    for spec in manifest.jobs:
        text = json.dumps(spec.to_dict(), sort_keys=True)
        cols = (spec.name, spec.model, spec.mode, text, spec.priority, int(spec.prefer_cuda), int(spec.require_cuda),
                spec.min_vram_gib, spec.min_ram_gib, spec.requirements_key)
        rows.append((spec.id, text, cols))
    deps = [(spec.id, after) for spec in manifest.jobs for after in spec.after]
    sweeps = [(name, job_id) for name, ids in manifest.sweeps.items() for job_id in ids]
    # what stays in memory: no per-job data (jobs, their places, sweep members); those are rows
    header = dataclasses.replace(manifest, jobs=(), text="", places={}, sweeps={})
    allowed = [(spec.id, host) for spec in manifest.jobs for host in spec.allowed_hosts]
    return ManifestRows(header=header, rows=rows, deps=deps, sweeps=sweeps, allowed=allowed,
                        max_attempts=manifest.fleet.max_attempts,
                        digest=manifest_digest(manifest.text, manifest.source), text=manifest.text)


@functools.lru_cache(maxsize=SPEC_CACHE_SIZE)
def spec_from_json(text: str) -> JobSpec:
    """A JobSpec back from its stored `to_dict()` JSON; cached by the text (parsing specs was most of a
    claim's cost), so an unchanged spec is parsed once and a changed one is a new key."""
    d = json.loads(text)
    for name in ("train_hosts", "allowed_hosts", "arch", "after"):
        d[name] = tuple(d.get(name) or ())
    known = JobSpec.__dataclass_fields__
    return JobSpec(**{k: v for k, v in d.items() if k in known})


JOB_COLUMNS = (
    "j.id, j.name, j.model, j.mode, j.status, j.host, j.attempts, j.max_attempts, j.priority, j.artifact, "
    "j.attempt_seq AS attempts_started, j.attempts AS attempts_charged, "
    "j.error, j.in_manifest, j.progress, j.created_ts, j.updated_ts, l.expires_ts AS lease_expires_ts, "
    "json_extract(j.spec, '$.timeout_s') AS timeout_s, json_extract(j.spec, '$.stall_s') AS stall_s, "
    "(SELECT r.not_before_ts FROM retries r WHERE r.job_id = j.id AND j.status = 'pending') AS retry_after_ts, "
    # only a blocked pending job can wait on a dependency, so the look-up runs for few rows
    "CASE WHEN j.status = 'pending' AND j.blocked = 1 THEN (SELECT 'dependency never satisfied: ' || "
    "group_concat(a.name || ' (' || a.status || ')', ', ') FROM deps d JOIN jobs a ON a.id = d.after_id "
    "WHERE d.job_id = j.id AND a.status IN ('failed', 'cancelled')) END AS unsatisfied"
)
JOB_SELECT = f"SELECT {JOB_COLUMNS} FROM jobs j LEFT JOIN leases l ON l.job_id = j.id"


#: The JobRow's fields, in its order: the keys of `job_json`.
JOB_FIELDS = tuple(f.name for f in dataclasses.fields(JobRow))


def job_json(row: SqlRow) -> JsonObject:
    """A row of JOB_SELECT as its JobRow's JSON object, built straight from the row (other columns left out).

    For the paths that handle thousands of rows at once (the `jobs` listing, the republish sweep):
    building and converting a JobRow per row would cost more than encoding the page. A unit test holds
    it equal to `job_row(row).to_wire()`.
    """
    out: JsonObject = {name: row[name] for name in JOB_FIELDS}
    out["in_manifest"] = bool(row["in_manifest"])
    out["progress"] = json.loads(row["progress"]) if row["progress"] else None
    return out


def job_row(row: SqlRow) -> JobRow:
    """A row of JOB_SELECT as the wire and the CLI see it."""
    return JobRow(
        id=row["id"], name=row["name"], status=JobStatus(row["status"]), model=row["model"], mode=row["mode"], host=row["host"],
        attempts=row["attempts"], max_attempts=row["max_attempts"], priority=row["priority"], artifact=row["artifact"],
        error=row["error"], in_manifest=bool(row["in_manifest"]),
        progress=json.loads(row["progress"]) if row["progress"] else None,
        created_ts=row["created_ts"], updated_ts=row["updated_ts"], lease_expires_ts=row["lease_expires_ts"],
        timeout_s=row["timeout_s"], stall_s=row["stall_s"], retry_after_ts=row["retry_after_ts"],
        unsatisfied=row["unsatisfied"], attempts_started=row["attempts_started"],
        attempts_charged=row["attempts_charged"],
    )

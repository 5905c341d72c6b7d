"""The job catalog: the jobs table following the manifest, dependencies, and read-only job queries.

`apply_manifest` is the only writer of a job's spec; status moves through
`sqlite.transition()` alone. The manifest in force is the service's, passed in.
"""

from __future__ import annotations

import json
import logging

from mqfleet.coordinator.sql.sqlite import StateFile, record_events
from mqfleet.coordinator.tables import listing
from mqfleet.coordinator.tables.blocking import HOST_LIMITED, OPEN, refresh_blocked
from mqfleet.coordinator.tables.manifest_memo import recall_manifest, remember_manifest
from mqfleet.coordinator.tables.rows import JOB_SELECT, ManifestRows, job_json, job_row, manifest_rows, spec_from_json
from mqfleet.errors import AmbiguousError, BadRequestError, NotFoundError
from mqfleet.lifecycle import Cause, JobStatus
from mqfleet.manifest.types import JobSpec, Manifest
from mqfleet.wire.replies import AttemptDetail, LeaseDetail
from mqfleet.wire.requests import JobRow
from mqfleet.wire.topics import JsonObject

logger = logging.getLogger(__name__)


class Catalog:
    """The jobs the coordinator knows, in one state file."""

    def __init__(self, state: StateFile) -> None:
        self.state = state

    def apply_manifest(self, manifest: Manifest | ManifestRows, now: float) -> dict[str, list[str]]:
        """Make the jobs table follow a validated manifest: add new jobs, update kept ones, orphan the rest.
        Returns the ids `added`, `kept`, `changed` (kept jobs whose row was rewritten) and `orphaned`.

        Given `ManifestRows` (built by `manifest_rows()` off the lock), the transaction only
        compares and writes: the JSON of 100,000 specs is not built while renewals wait.
        """
        prepared = manifest if isinstance(manifest, ManifestRows) else manifest_rows(manifest)
        added: list[str] = []
        kept: list[str] = []
        changed: list[str] = []
        with self.state.transaction() as c:
            existing = {r[0]: (r[1], r[2], r[3]) for r in c.execute("SELECT id, spec, max_attempts, in_manifest FROM jobs")}
            inserts, updates = [], []
            max_attempts = prepared.max_attempts
            for job_id, text, cols in prepared.rows:
                old = existing.get(job_id)
                if old is None:
                    added.append(job_id)
                    inserts.append((job_id, *cols, max_attempts, now, now))
                    continue
                kept.append(job_id)
                if old != (text, max_attempts, 1):
                    changed.append(job_id)
                    updates.append((*cols, max_attempts, now, job_id))
            c.executemany(
                "INSERT INTO jobs (id, name, model, mode, spec, priority, prefer_cuda, require_cuda, "
                "min_vram_gib, min_ram_gib, req_key, max_attempts, status, created_ts, updated_ts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                inserts,
            )
            c.executemany(
                "UPDATE jobs SET name = ?, model = ?, mode = ?, spec = ?, priority = ?, prefer_cuda = ?, "
                "require_cuda = ?, min_vram_gib = ?, min_ram_gib = ?, req_key = ?, max_attempts = ?, in_manifest = 1, "
                "updated_ts = ? "
                "WHERE id = ?",
                updates,
            )
            record_events(c, [(now, job_id, None, JobStatus.PENDING.value, "added", None) for job_id in added])
            in_file = {job_id for job_id, _, _ in prepared.rows}
            orphaned = [job_id for job_id in existing if job_id not in in_file]
            c.executemany(
                "UPDATE jobs SET in_manifest = 0, updated_ts = ? WHERE id = ? AND in_manifest = 1",
                [(now, job_id) for job_id in orphaned],
            )
            # an orphan is blocked by in_manifest alone, so only the file's jobs need their edges
            c.execute("DELETE FROM deps")
            c.executemany("INSERT INTO deps (job_id, after_id) VALUES (?, ?) ON CONFLICT DO NOTHING", prepared.deps)
            c.execute("DELETE FROM job_hosts")
            c.executemany("INSERT INTO job_hosts (job_id, host) VALUES (?, ?) ON CONFLICT DO NOTHING", prepared.allowed)
            c.execute("DELETE FROM sweep_jobs")
            c.executemany("INSERT INTO sweep_jobs (sweep, job_id) VALUES (?, ?) ON CONFLICT DO NOTHING", prepared.sweeps)
            refresh_blocked(c)
            remember_manifest(c, prepared.digest, prepared.header, len(prepared.rows))
        logger.info("manifest %s: %d added, %d kept (%d changed), %d orphaned", prepared.header.source or "(text)",
                    len(added), len(kept), len(changed), len(orphaned))
        return {"added": added, "kept": kept, "changed": changed, "orphaned": orphaned}

    def resume_manifest(self, digest: str) -> tuple[Manifest, int] | None:
        """The stored manifest in force (without jobs) and its job count, when it has this digest."""
        with self.state.lock:
            return recall_manifest(self.state.conn, digest)

    def sweep_jobs(self, sweep: str) -> list[str]:
        """The jobs a [[sweeps]] entry of the manifest in force made, in creation order ([] for no such sweep)."""
        rows = self.state.read("SELECT s.job_id FROM sweep_jobs s JOIN jobs j ON j.id = s.job_id WHERE s.sweep = ? "
                               "ORDER BY j.seq", (sweep,))
        return [r[0] for r in rows]

    def sweep_names(self) -> list[str]:
        return [r[0] for r in self.state.read("SELECT DISTINCT sweep FROM sweep_jobs ORDER BY sweep")]


    def pending_dependents(self, job_id: str) -> list[str]:
        """Pending jobs that wait for this one (its completion may have unblocked them)."""
        waiting = [r[0] for r in self.state.read("SELECT job_id FROM deps WHERE after_id = ?", (job_id,))]
        if not waiting:
            return []
        marks = ",".join("?" * len(waiting))
        return [r[0] for r in self.state.read(f"SELECT id FROM jobs WHERE id IN ({marks}) AND status = 'pending'", waiting)]

    def claimable_specs(self, job_ids: list[str], now: float | None = None) -> list[JobSpec]:
        """The specs of those jobs a claim could take now: pending, not blocked and (given `now`) past
        their retry back-off, so no host is woken for a job it may not claim yet."""
        specs: list[JobSpec] = []
        backoff = "" if now is None else (
            " AND NOT EXISTS (SELECT 1 FROM retries r WHERE r.job_id = jobs.id AND r.not_before_ts > ?)")
        for start in range(0, len(job_ids), 500):
            chunk = job_ids[start : start + 500]
            rows = self.state.read(
                f"SELECT spec FROM jobs WHERE id IN ({','.join('?' * len(chunk))}) AND status = 'pending' "
                f"AND blocked IN ({OPEN}, {HOST_LIMITED}){backoff}",
                [*chunk, now] if now is not None else chunk,
            )
            specs.extend(spec_from_json(r[0]) for r in rows)
        return specs

    def resolve_job(self, ref: str) -> str:
        """A job id from a full id, a unique id prefix or a name; prefers the manifest's job on a shared name."""
        ref = ref.strip()
        if not ref:
            raise NotFoundError("no job named ''")
        with self.state.lock:
            c = self.state.conn
            if c.execute("SELECT 1 FROM jobs WHERE id = ?", (ref,)).fetchone():
                return ref
            named = c.execute("SELECT id, name, in_manifest FROM jobs WHERE name = ? ORDER BY seq", (ref,)).fetchall()
            current = [r for r in named if r["in_manifest"]]
            for group in (current, named):
                if len(group) == 1:
                    return str(group[0]["id"])
            if not named:
                named = c.execute(
                    "SELECT id, name FROM jobs WHERE id >= ? AND id < ? ORDER BY seq LIMIT 11", (ref, ref + "\U0010ffff")
                ).fetchall()
        if len(named) == 1:
            return str(named[0]["id"])
        if not named:
            raise NotFoundError(f"no job matches '{ref}' (by id, id prefix or name)")
        listed = ", ".join(f"{r['name']} ({r['id'][:12]})" for r in named[:10])
        more = " ..." if len(named) > 10 else ""
        raise AmbiguousError(f"'{ref}' matches several jobs: {listed}{more}", [(r["id"], r["name"]) for r in named])

    def job(self, job_id: str) -> JobRow:
        row = self.state.read_one(f"{JOB_SELECT} WHERE j.id = ?", (job_id,))
        if row is None:
            raise NotFoundError(f"no job {job_id}")
        return job_row(row)

    def job_state(self, job_id: str) -> JsonObject | None:
        """The JSON of a job's retained `jobs/{id}/state` (`rows.job_json`: its JobRow's, built straight from
        the row), or None for no such job. Published after every commit that changed the job, so that path
        builds no JobRow."""
        row = self.state.read_one(f"{JOB_SELECT} WHERE j.id = ?", (job_id,))
        return job_json(row) if row is not None else None

    def job_spec(self, job_id: str) -> JsonObject:
        """The stored spec of a job (the JobSpec's `to_dict()`, as shown), which outlives the job's removal
        from the manifest."""
        row = self.state.read_one("SELECT spec FROM jobs WHERE id = ?", (job_id,))
        if row is None:
            raise NotFoundError(f"no job {job_id}")
        spec: JsonObject = json.loads(row[0])
        return spec

    def jobs(self, status: str | None = None) -> list[JobRow]:
        if status is not None and status not in {s.value for s in JobStatus}:
            raise BadRequestError(f"unknown status '{status}' (one of {', '.join(s.value for s in JobStatus)})")
        if status is None:
            rows = self.state.read(f"{JOB_SELECT} ORDER BY j.seq")
        else:
            rows = self.state.read(f"{JOB_SELECT} WHERE j.status = ? ORDER BY j.seq", (status,))
        return [job_row(r) for r in rows]

    def job_page(
        self, where: listing.JobFilter, *, limit: int, after: int | None = None, newest_first: bool = False,
        offset: int | None = None, count: bool = True,
    ) -> tuple[list[JsonObject], int | None, int]:
        """One keyset page of the listing (`listing.job_page`: JobRows' JSON objects), its next keyset, and the filter's total
        (-1 unless `count`)."""
        with self.state.lock:
            page, next_after = listing.job_page(
                self.state.conn, where, limit=limit, after=after, newest_first=newest_first, offset=offset
            )
            return page, next_after, listing.count_jobs(self.state.conn, where) if count else -1

    def attempts(self, job_id: str) -> list[AttemptDetail]:
        """The job's attempts, oldest first (their `usage` is the history's: left None here)."""
        rows = self.state.read(
            "SELECT number, host, lease_id, started_ts, ended_ts, outcome, exit_code, output_tail, error "
            "FROM attempts WHERE job_id = ? ORDER BY number",
            (job_id,),
        )
        return [
            AttemptDetail(number=r["number"], host=r["host"], lease_id=r["lease_id"], started_ts=r["started_ts"],
                          ended_ts=r["ended_ts"], outcome=r["outcome"], cause=cause_of(r["outcome"]), exit_code=r["exit_code"],
                          output_tail=r["output_tail"], error=r["error"])
            for r in rows
        ]

    def lease(self, job_id: str) -> LeaseDetail | None:
        row = self.state.read_one("SELECT lease_id, host, expires_ts, attempt, gpus FROM leases WHERE job_id = ?", (job_id,))
        if row is None:
            return None
        return LeaseDetail(lease_id=row["lease_id"], host=row["host"], expires_ts=row["expires_ts"],
                           attempt=row["attempt"], gpus=json.loads(row["gpus"]))

    def counts(self) -> dict[str, int]:
        found = {r[0]: int(r[1]) for r in self.state.read("SELECT status, COUNT(*) FROM jobs GROUP BY status")}
        return {s.value: found.get(s.value, 0) for s in JobStatus}


def cause_of(outcome: str | None) -> Cause | None:
    """An attempt's cause (`app`, `lost`, ...): its outcome, unless it completed or still runs."""
    try:
        return Cause(outcome) if outcome is not None and outcome != "completed" else None
    except ValueError:  # an outcome this version does not know (written by a newer coordinator)
        return None

"""Leases after the grant: renewal, completion, failure, expiry, resumption, cancel and requeue.

Every method is one transaction and takes the time as `now`; the lease term
(`lease_s`) and the retry rules (`fleet`: back-off, quarantine, cancel_unsatisfiable,
kept by `faults`) come in from the manifest in force, which the service holds.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from mqfleet.coordinator.sql.connection import SqlRow, one_row
from mqfleet.coordinator.sql.sqlite import StateFile, transition
from mqfleet.coordinator.tables import faults
from mqfleet.coordinator.tables.artifacts import Artifacts
from mqfleet.coordinator.tables.blocking import dependents, refresh_blocked
from mqfleet.coordinator.tables.catalog import Catalog
from mqfleet.errors import IllegalTransitionError, LeaseLostError, NotFoundError
from mqfleet.lifecycle import (
    FAULT_CAUSES,
    LEASED,
    TERMINAL,
    Cause,
    JobStatus,
    after_attempt_ended,
    counts_against_budget,
)
from mqfleet.manifest.types import FleetSettings
from mqfleet.wire.requests import JobRow
from mqfleet.wire.topics import JsonObject

logger = logging.getLogger(__name__)

#: The [fleet] settings of a manifest that sets none: no back-off, no quarantine.
_NO_RULES = FleetSettings()


@dataclass(frozen=True)
class Completion:
    """A completed attempt's verified artifact: the stored object, the trainer's metrics and output tail."""

    sha256: str
    size: int
    key: str
    metrics: JsonObject = field(default_factory=dict)
    output_tail: str = ""


@dataclass(frozen=True)
class Renewal:
    """What a renewal did: the lease's new expiry, and whether the job's progress changed (only then is
    its retained state worth publishing again)."""

    expires_ts: float
    progressed: bool


@dataclass(frozen=True)
class TakenLease:
    """The lease a cancel took away: the agent holding it is told to stop."""

    host: str
    lease_id: str


class Leases:
    """The live leases of one state file and the attempts they belong to."""

    def __init__(self, state: StateFile, catalog: Catalog, artifacts: Artifacts) -> None:
        self.state = state
        self.catalog = catalog
        self.artifacts = artifacts

    def _current_lease(self, job_id: str, lease_id: str, host: str) -> SqlRow:
        row = self.state.read_one(
            "SELECT j.status, l.lease_id, l.host, l.attempt, l.expires_ts FROM jobs j "
            "LEFT JOIN leases l ON l.job_id = j.id WHERE j.id = ?",
            (job_id,),
        )
        if row is None:
            raise NotFoundError(f"no job {job_id}")
        if row["lease_id"] is None:
            raise LeaseLostError(f"job {job_id} holds no lease (it is {row['status']})")
        if row["lease_id"] != lease_id or row["host"] != host:
            raise LeaseLostError(f"lease {lease_id} of {host} is not the current lease of job {job_id}")
        return row

    def check_lease(self, job_id: str, lease_id: str, host: str) -> None:
        """LeaseLostError unless `lease_id` held by `host` is the job's current lease; NotFoundError for no job."""
        self._current_lease(job_id, lease_id, host)

    def renew(
        self, job_id: str, lease_id: str, host: str, now: float, progress: JsonObject | None = None, *, lease_s: float
    ) -> Renewal:
        """Extend a lease to now + lease_s and keep the latest progress; the first renewal means running."""
        with self.state.transaction() as c:
            lease = self._current_lease(job_id, lease_id, host)
            expires_ts = now + lease_s
            c.execute("UPDATE leases SET expires_ts = ? WHERE job_id = ?", (expires_ts, job_id))
            progressed = False
            if progress is not None:
                text = json.dumps(progress)
                progressed = c.execute("UPDATE jobs SET progress = ? WHERE id = ? AND (progress IS NULL OR progress <> ?)",
                                       (text, job_id, text)).rowcount > 0
            if lease["status"] == JobStatus.CLAIMED.value:
                transition(c, job_id, JobStatus.RUNNING, expect=[JobStatus.CLAIMED], reason=f"running on {host}", now=now, host=host)
        return Renewal(expires_ts=expires_ts, progressed=progressed)

    def complete(self, job_id: str, lease_id: str, host: str, artifact: Completion, now: float) -> JobRow:
        """Record a verified artifact as the job's one completion; the lease ends with it."""
        with self.state.transaction() as c:
            lease = self._current_lease(job_id, lease_id, host)
            sha256, size, key = artifact.sha256, artifact.size, artifact.key
            c.execute(
                "UPDATE attempts SET ended_ts = ?, outcome = 'completed', exit_code = 0, output_tail = ? "
                "WHERE job_id = ? AND number = ?",
                (now, artifact.output_tail[-20_000:], job_id, lease["attempt"]),
            )
            c.execute("DELETE FROM leases WHERE job_id = ?", (job_id,))
            transition(c, job_id, JobStatus.COMPLETED, expect=LEASED, reason=f"completed on {host}", now=now, host=host)
            c.execute("UPDATE jobs SET artifact = ?, error = NULL WHERE id = ?", (sha256, job_id))
            self.artifacts.record_verified(sha256, size, key, now)
            self.artifacts.record_job_artifact(job_id, sha256, size, host=host, metrics=artifact.metrics, now=now)
            refresh_blocked(c, dependents(c, job_id))
            faults.note_completion(c, job_id, host)
            return self.catalog.job(job_id)

    def fail(
        self, job_id: str, lease_id: str, host: str, cause: Cause, *, exit_code: int | None, output_tail: str, error: str,
        now: float, fleet: FleetSettings = _NO_RULES,
    ) -> JobStatus:
        """End the current attempt with `cause`; the job goes back to pending or ends failed or cancelled."""
        with self.state.transaction():
            lease = self._current_lease(job_id, lease_id, host)
            text = error or (f"exit code {exit_code}" if exit_code is not None else cause.value)
            return self._end_attempt(
                job_id, lease, cause, now, exit_code=exit_code, output_tail=output_tail, error=text,
                reason=f"attempt {lease['attempt']} on {host} ended: {cause.value}", fleet=fleet,
            )

    def _end_attempt(
        self, job_id: str, lease: SqlRow, cause: Cause, now: float, *, reason: str, fleet: FleetSettings,
        exit_code: int | None = None, output_tail: str = "", error: str = "",
    ) -> JobStatus:
        """Inside the caller's transaction: close the attempt, drop the lease, move the job on."""
        c = self.state.conn
        row = one_row(c.execute("SELECT attempts, max_attempts FROM jobs WHERE id = ?", (job_id,)))
        attempts = row["attempts"] + (1 if counts_against_budget(cause) else 0)
        to = after_attempt_ended(cause, attempts, row["max_attempts"])
        c.execute(
            "UPDATE attempts SET ended_ts = ?, outcome = ?, exit_code = ?, output_tail = ?, error = ? "
            "WHERE job_id = ? AND number = ?",
            (now, cause.value, exit_code, output_tail, error, job_id, lease["attempt"]),
        )
        c.execute("DELETE FROM leases WHERE job_id = ?", (job_id,))
        # a graceful handback or a cancel is not a fault, so it leaves the last error as it was
        if cause in FAULT_CAUSES:
            c.execute("UPDATE jobs SET attempts = ?, error = ? WHERE id = ?", (attempts, error, job_id))
        else:
            c.execute("UPDATE jobs SET attempts = ? WHERE id = ?", (attempts, job_id))
        transition(c, job_id, to, expect=LEASED, reason=reason, now=now, host=lease["host"])
        faults.note_attempt_end(c, fleet, job_id=job_id, host=lease["host"], cause=cause, to=to, attempts=attempts, now=now)
        if to in (JobStatus.FAILED, JobStatus.CANCELLED) and fleet.cancel_unsatisfiable:
            faults.cancel_unsatisfiable(c, [job_id], now)
        return to

    def expire_leases(self, now: float, *, fleet: FleetSettings = _NO_RULES) -> list[str]:
        """End every lease whose expiry has passed as `lost`; returns the job ids."""
        with self.state.transaction() as c:
            rows = c.execute(
                "SELECT job_id, lease_id, host, attempt FROM leases WHERE expires_ts <= ? ORDER BY expires_ts", (now,)
            ).fetchall()
            for lease in rows:
                to = self._end_attempt(
                    lease["job_id"], lease, Cause.LOST, now,
                    error=f"lease expired on {lease['host']} (attempt {lease['attempt']})",
                    reason=f"lease on {lease['host']} expired", fleet=fleet,
                )
                logger.warning("job %s: lease %s on %s expired, now %s", lease["job_id"][:12], lease["lease_id"][:8], lease["host"], to.value)
        return [r["job_id"] for r in rows]

    def resume_leases(self, now: float, *, lease_s: float) -> list[str]:
        """Give every live lease a full lease_s from now; for a coordinator start, since while it was
        down no agent could renew. A host that is really gone is still noticed through its status."""
        with self.state.transaction() as c:
            rows = c.execute("SELECT job_id FROM leases WHERE expires_ts < ?", (now + lease_s,)).fetchall()
            c.execute("UPDATE leases SET expires_ts = ? WHERE expires_ts < ?", (now + lease_s, now + lease_s))
        return [r[0] for r in rows]

    def cancel(self, job_id: str, now: float, *, fleet: FleetSettings = _NO_RULES) -> TakenLease | None:
        """Cancel a job that has not ended; returns the host and lease it took away, if it held one."""
        with self.state.transaction() as c:
            row = c.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no job {job_id}")
            if JobStatus(row["status"]) in TERMINAL:
                raise IllegalTransitionError(f"job {job_id} is already {row['status']}")
            lease = c.execute("SELECT job_id, lease_id, host, attempt FROM leases WHERE job_id = ?", (job_id,)).fetchone()
            if lease is None:
                transition(c, job_id, JobStatus.CANCELLED, expect=[JobStatus.PENDING], reason="cancelled by operator", now=now)
                if fleet.cancel_unsatisfiable:
                    faults.cancel_unsatisfiable(c, [job_id], now)
                return None
            self._end_attempt(job_id, lease, Cause.CANCELLED, now, reason="cancelled by operator", fleet=fleet)
            return TakenLease(host=lease["host"], lease_id=lease["lease_id"])

    def requeue(self, job_id: str, now: float) -> JobRow:
        """Put a failed or cancelled job back to pending with a fresh attempt budget."""
        with self.state.transaction() as c:
            transition(
                c, job_id, JobStatus.PENDING, expect=[JobStatus.FAILED, JobStatus.CANCELLED], reason="requeued by operator", now=now
            )
            c.execute("UPDATE jobs SET attempts = 0, error = NULL, progress = NULL WHERE id = ?", (job_id,))
            refresh_blocked(c, [job_id])
            faults.forget_retries(c, job_id)
            faults.restore_dependents(c, job_id, now)
            return self.catalog.job(job_id)

    def cancel_unsatisfiable(self, now: float) -> list[str]:
        """Cancel every pending job whose dependency ended failed or cancelled (`cancel_unsatisfiable`
        turned on by a reload, or set at start); the ids cancelled."""
        with self.state.transaction() as c:
            return faults.cancel_all_unsatisfiable(c, now)

    def backoffs_ended(self, after: float, until: float) -> list[str]:
        """Pending jobs whose retry back-off ended in (after, until]."""
        with self.state.lock:
            return faults.backoffs_ended(self.state.conn, after, until)

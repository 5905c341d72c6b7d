"""`Database`: the coordinator's SQLite state (jobs, leases, attempts, hosts, artifacts, events, replies).

Every method is one transaction; `schema.transition()` is the only status write.
Eligibility and ranking are asked of `scheduler`, so a claim and `why_waiting`
give the same answer. Time always comes in as `now`, never from the clock.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
from typing import Any

from mqfleet import defaults
from mqfleet.coordinator import listing, scheduler
from mqfleet.coordinator.schema import (
    JOB_SELECT,
    StateFile,
    dependents,
    job_row,
    refresh_blocked,
    spec_from_json,
    transition,
)
from mqfleet.errors import AmbiguousError, BadRequestError, IllegalTransitionError, LeaseLostError, NotFoundError
from mqfleet.manifest import JobSpec, Manifest
from mqfleet.state import FAULT_CAUSES, LEASED, TERMINAL, Cause, JobStatus, after_attempt_ended, counts_against_budget

logger = logging.getLogger(__name__)

#: Candidates read per step of a claim's walk down the ranking index.
CLAIM_BATCH = 32
#: Candidates read by the first step of that walk.
CLAIM_FIRST_BATCH = 4


class Database(StateFile):
    """Job state in one SQLite file, safe to share between the coordinator's threads."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        self._manifest: Manifest | None = None

    # manifest

    @property
    def manifest(self) -> Manifest | None:
        return self._manifest

    def apply_manifest(self, manifest: Manifest, now: float) -> dict[str, list[str]]:
        """Make the jobs table follow a validated manifest: add new jobs, update kept ones, orphan the rest."""
        c = self._conn
        added: list[str] = []
        kept: list[str] = []
        with self.transaction():
            existing = {r["id"]: r for r in c.execute("SELECT id, spec, max_attempts, in_manifest FROM jobs")}
            inserts, updates = [], []
            max_attempts = manifest.fleet.max_attempts
            for spec in manifest.jobs:
                text = json.dumps(spec.to_dict(), sort_keys=True)
                cols = (spec.name, spec.model, spec.mode, text, max_attempts, spec.priority, int(spec.prefer_cuda),
                        int(spec.require_cuda), spec.min_vram_gib, spec.min_ram_gib)
                old = existing.get(spec.id)
                if old is None:
                    added.append(spec.id)
                    inserts.append((spec.id, *cols, now, now))
                    continue
                kept.append(spec.id)
                if (old["spec"], old["max_attempts"], old["in_manifest"]) != (text, max_attempts, 1):
                    updates.append((*cols, now, spec.id))
            c.executemany(
                "INSERT INTO jobs (id, name, model, mode, spec, max_attempts, priority, prefer_cuda, require_cuda, "
                "min_vram_gib, min_ram_gib, status, created_ts, updated_ts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                inserts,
            )
            c.executemany(
                "UPDATE jobs SET name = ?, model = ?, mode = ?, spec = ?, max_attempts = ?, priority = ?, prefer_cuda = ?, "
                "require_cuda = ?, min_vram_gib = ?, min_ram_gib = ?, in_manifest = 1, updated_ts = ? WHERE id = ?",
                updates,
            )
            c.executemany(
                "INSERT INTO events (ts, job_id, from_status, to_status, reason, host) VALUES (?, ?, NULL, 'pending', 'added', NULL)",
                [(now, job_id) for job_id in added],
            )
            in_file = {spec.id for spec in manifest.jobs}
            orphaned = [job_id for job_id in existing if job_id not in in_file]
            c.executemany(
                "UPDATE jobs SET in_manifest = 0, updated_ts = ? WHERE id = ? AND in_manifest = 1",
                [(now, job_id) for job_id in orphaned],
            )
            # an orphan is blocked by in_manifest alone, so only the file's jobs need their edges
            c.execute("DELETE FROM deps")
            c.executemany(
                "INSERT OR IGNORE INTO deps (job_id, after_id) VALUES (?, ?)",
                [(spec.id, after) for spec in manifest.jobs for after in spec.after],
            )
            refresh_blocked(c)
        self._manifest = manifest
        logger.info("manifest %s: %d added, %d kept, %d orphaned", manifest.source or "(text)", len(added), len(kept), len(orphaned))
        return {"added": added, "kept": kept, "orphaned": orphaned}

    @property
    def _lease_s(self) -> float:
        return self._manifest.fleet.lease_s if self._manifest else defaults.LEASE_S

    # hosts

    def record_advert(self, host: str, advert: dict[str, Any], now: float) -> None:
        """Store a host's capability advert; presence comes from its status topic, not from this."""
        with self.transaction():
            self._conn.execute(
                "INSERT INTO hosts (id, advert, last_seen_ts) VALUES (?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET advert = excluded.advert, last_seen_ts = excluded.last_seen_ts",
                (host, json.dumps(advert, sort_keys=True), now),
            )

    def is_known_host(self, host: str) -> bool:
        """True when the manifest lists the host or it has published an advert (docs/SECURITY.md)."""
        if self._manifest is not None and host in self._manifest.hosts:
            return True
        row = self._conn.execute("SELECT 1 FROM hosts WHERE id = ? AND advert != '{}'", (host,)).fetchone()
        return row is not None

    def record_presence(self, host: str, online: bool, now: float) -> list[str]:
        """Mark a host online or offline. Offline shortens its leases to the grace; returns their job ids."""
        grace_s = self._manifest.fleet.grace_s if self._manifest else defaults.GRACE_S
        with self.transaction():
            self._conn.execute(
                "INSERT INTO hosts (id, online, last_seen_ts) VALUES (?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET online = excluded.online, last_seen_ts = excluded.last_seen_ts",
                (host, int(online), now),
            )
            if online:
                return []
            job_ids = [r[0] for r in self._conn.execute("SELECT job_id FROM leases WHERE host = ?", (host,))]
            self._conn.execute("UPDATE leases SET expires_ts = MIN(expires_ts, ?) WHERE host = ?", (now + grace_s, host))
        if job_ids:
            logger.warning("host %s: offline; %d lease(s) now expire within %gs", host, len(job_ids), grace_s)
        return job_ids

    def set_draining(self, host: str, draining: bool, now: float) -> None:
        with self.transaction():
            self._conn.execute(
                "INSERT INTO hosts (id, draining) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET draining = excluded.draining",
                (host, int(draining)),
            )
        logger.info("host %s: %s", host, "draining" if draining else "undrained")

    def hosts(self) -> list[dict[str, Any]]:
        with self._lock:
            views = self._host_views()
            leases = self._conn.execute("SELECT host, job_id FROM leases ORDER BY granted_ts").fetchall()
            seen = {r["id"]: r["last_seen_ts"] for r in self._conn.execute("SELECT id, last_seen_ts FROM hosts")}
        return [
            {"id": v.id, "advert": v.advert, "online": v.online, "draining": v.draining, "last_seen_ts": seen[v.id],
             "slots": v.slots, "slots_used": v.slots_used, "jobs": [r["job_id"] for r in leases if r["host"] == v.id]}
            for v in views
        ]

    def _host_views(self, where: str = "", params: tuple[Any, ...] = ()) -> list[scheduler.HostView]:
        rows = self._conn.execute(
            "SELECT h.id, h.advert, h.online, h.draining, (SELECT COUNT(*) FROM leases l WHERE l.host = h.id) AS used "
            f"FROM hosts h {where} ORDER BY h.id",
            params,
        ).fetchall()
        return [self._host_view(r, r["used"]) for r in rows]

    def _host_view(self, row: sqlite3.Row, used: int) -> scheduler.HostView:
        advert = json.loads(row["advert"])
        policy = self._manifest.hosts.get(row["id"]) if self._manifest else None
        return scheduler.HostView(
            id=row["id"], advert=advert, online=bool(row["online"]), draining=bool(row["draining"]),
            slots=scheduler.host_slots(advert, policy), slots_used=used, policy=policy,
        )

    # leases

    def claim(self, host: str, now: float) -> dict[str, Any] | None:
        """Pick the best job this host may run and lease it to the host, atomically; None when there is none."""
        manifest = self._manifest
        if manifest is None:
            return None
        c = self._conn
        with self.transaction():
            hrow = c.execute("SELECT id, advert, online, draining FROM hosts WHERE id = ?", (host,)).fetchone()
            if hrow is None:
                return None
            held = [json.loads(r[0]) for r in c.execute("SELECT gpus FROM leases WHERE host = ?", (host,))]
            view = self._host_view(hrow, len(held))
            if scheduler.host_reasons(view):
                return None
            spec = self._pick(view, manifest)
            if spec is None:
                return None
            gpus = scheduler.pick_gpu(spec, view, (i for g in held for i in g))
            lease_id = secrets.token_hex(16)
            c.execute("UPDATE jobs SET attempt_seq = attempt_seq + 1, progress = NULL WHERE id = ?", (spec.id,))
            attempt = int(c.execute("SELECT attempt_seq FROM jobs WHERE id = ?", (spec.id,)).fetchone()[0])
            transition(c, spec.id, JobStatus.CLAIMED, expect=[JobStatus.PENDING], reason=f"claimed by {host}", now=now, host=host)
            expires_ts = now + self._lease_s
            c.execute(
                "INSERT INTO leases (job_id, lease_id, host, attempt, gpus, granted_ts, expires_ts) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (spec.id, lease_id, host, attempt, json.dumps(gpus), now, expires_ts),
            )
            c.execute(
                "INSERT INTO attempts (job_id, number, host, lease_id, started_ts) VALUES (?, ?, ?, ?, ?)",
                (spec.id, attempt, host, lease_id, now),
            )
            row = self.job(spec.id)
        trainer = manifest.trainers.get(spec.model)
        return {
            "job": row,
            "spec": spec.to_dict(),
            "trainer": _trainer_dict(trainer, spec.model),
            "lease_id": lease_id,
            "attempt": attempt,
            "expires_ts": expires_ts,
            "lease_s": self._lease_s,
            "gpus": gpus,
        }

    def _pick(self, view: scheduler.HostView, manifest: Manifest) -> JobSpec | None:
        """Walk pending jobs in rank order, a batch at a time, until one fits this host.

        Cheap numeric rules are in the WHERE clause so the walk rarely reads a row
        it must skip; the ORDER BY is `scheduler.rank_key`, served by an index.
        """
        where = "status = 'pending' AND blocked = 0 AND min_ram_gib <= ? AND min_vram_gib <= ?"
        if view.has_cuda:
            order = "priority DESC, prefer_cuda DESC, seq"
        else:
            where += " AND require_cuda = 0"
            order = "priority DESC, seq"
        # The other hosts matter only to the prefer_cuda rule, and reading them costs a row and an
        # advert parse per host; so they are read once, and only when a prefer_cuda job comes up.
        others: list[scheduler.HostView] | None = None
        cur = self._conn.execute(f"SELECT seq, spec FROM jobs WHERE {where} ORDER BY {order}", (view.ram_gib, view.vram_gib))
        try:
            # The first job in rank order usually fits, so the first batch is small: parsing a
            # spec is most of a claim's cost.
            size = CLAIM_FIRST_BATCH
            while batch := cur.fetchmany(size):
                size = CLAIM_BATCH
                candidates = [(r["seq"], spec_from_json(r["spec"])) for r in batch]
                if others is None and not view.has_cuda and any(spec.prefer_cuda for _, spec in candidates):
                    others = self._host_views("WHERE h.online = 1 AND h.draining = 0 AND h.id != ?", (view.id,))
                found = scheduler.first_eligible(candidates, view, others or [], commit=manifest.fleet.commit)
                if found is not None:
                    return found
        finally:
            cur.close()
        return None

    def _current_lease(self, job_id: str, lease_id: str, host: str) -> sqlite3.Row:
        row: sqlite3.Row | None = self._conn.execute(
            "SELECT j.status, l.lease_id, l.host, l.attempt, l.expires_ts FROM jobs j "
            "LEFT JOIN leases l ON l.job_id = j.id WHERE j.id = ?",
            (job_id,),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no job {job_id}")
        if row["lease_id"] is None:
            raise LeaseLostError(f"job {job_id} holds no lease (it is {row['status']})")
        if row["lease_id"] != lease_id or row["host"] != host:
            raise LeaseLostError(f"lease {lease_id} of {host} is not the current lease of job {job_id}")
        return row

    def check_lease(self, job_id: str, lease_id: str, host: str) -> None:
        """LeaseLostError unless `lease_id` held by `host` is the job's current lease; NotFoundError for no job."""
        with self._lock:
            self._current_lease(job_id, lease_id, host)

    def renew(self, job_id: str, lease_id: str, host: str, now: float, progress: dict[str, Any] | None = None) -> float:
        """Extend a lease to now + lease_s and keep the latest progress; the first renewal means running."""
        c = self._conn
        with self.transaction():
            lease = self._current_lease(job_id, lease_id, host)
            expires_ts = now + self._lease_s
            c.execute("UPDATE leases SET expires_ts = ? WHERE job_id = ?", (expires_ts, job_id))
            if progress is not None:
                c.execute("UPDATE jobs SET progress = ? WHERE id = ?", (json.dumps(progress), job_id))
            if lease["status"] == JobStatus.CLAIMED.value:
                transition(c, job_id, JobStatus.RUNNING, expect=[JobStatus.CLAIMED], reason=f"running on {host}", now=now, host=host)
        return expires_ts

    def complete(self, job_id: str, lease_id: str, host: str, artifact: dict[str, Any], now: float) -> dict[str, Any]:
        """Record a verified artifact as the job's one completion; the lease ends with it."""
        c = self._conn
        with self.transaction():
            lease = self._current_lease(job_id, lease_id, host)
            sha256, size, key = str(artifact["sha256"]), int(artifact["size"]), str(artifact["key"])
            c.execute(
                "UPDATE attempts SET ended_ts = ?, outcome = 'completed', exit_code = 0, output_tail = ? "
                "WHERE job_id = ? AND number = ?",
                (now, str(artifact.get("output_tail") or "")[-20_000:], job_id, lease["attempt"]),
            )
            c.execute("DELETE FROM leases WHERE job_id = ?", (job_id,))
            transition(c, job_id, JobStatus.COMPLETED, expect=LEASED, reason=f"completed on {host}", now=now, host=host)
            c.execute("UPDATE jobs SET artifact = ?, error = NULL WHERE id = ?", (sha256, job_id))
            self.record_artifact_verified(sha256, size, key, now)
            meta = c.execute("SELECT name, model, mode FROM jobs WHERE id = ?", (job_id,)).fetchone()
            c.execute(
                "INSERT OR REPLACE INTO job_artifacts (job_id, sha256, name, model, mode, host, metrics, size, created_ts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, sha256, meta["name"], meta["model"], meta["mode"], host,
                 json.dumps(artifact.get("metrics") or {}), size, now),
            )
            refresh_blocked(c, dependents(c, job_id))
            return self.job(job_id)

    def fail(
        self, job_id: str, lease_id: str, host: str, cause: Cause, *, exit_code: int | None, output_tail: str, error: str, now: float
    ) -> JobStatus:
        """End the current attempt with `cause`; the job goes back to pending or ends failed or cancelled."""
        with self.transaction():
            lease = self._current_lease(job_id, lease_id, host)
            text = error or (f"exit code {exit_code}" if exit_code is not None else cause.value)
            return self._end_attempt(
                job_id, lease, Cause(cause), now, exit_code=exit_code, output_tail=output_tail, error=text,
                reason=f"attempt {lease['attempt']} on {host} ended: {Cause(cause).value}",
            )

    def _end_attempt(
        self, job_id: str, lease: sqlite3.Row, cause: Cause, now: float, *, reason: str,
        exit_code: int | None = None, output_tail: str = "", error: str = "",
    ) -> JobStatus:
        c = self._conn
        row = c.execute("SELECT attempts, max_attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
        attempts = row["attempts"] + (1 if counts_against_budget(cause) else 0)
        to = after_attempt_ended(cause, attempts, row["max_attempts"])
        c.execute(
            "UPDATE attempts SET ended_ts = ?, outcome = ?, cause = ?, exit_code = ?, output_tail = ?, error = ? "
            "WHERE job_id = ? AND number = ?",
            (now, cause.value, cause.value, exit_code, output_tail, error, job_id, lease["attempt"]),
        )
        c.execute("DELETE FROM leases WHERE job_id = ?", (job_id,))
        # a graceful handback or a cancel is not a fault, so it leaves the last error as it was
        if cause in FAULT_CAUSES:
            c.execute("UPDATE jobs SET attempts = ?, error = ? WHERE id = ?", (attempts, error, job_id))
        else:
            c.execute("UPDATE jobs SET attempts = ? WHERE id = ?", (attempts, job_id))
        transition(c, job_id, to, expect=LEASED, reason=reason, now=now, host=lease["host"])
        return to

    def expire_leases(self, now: float) -> list[str]:
        """End every lease whose expiry has passed as `lost`; returns the job ids."""
        with self.transaction():
            rows = self._conn.execute(
                "SELECT job_id, lease_id, host, attempt FROM leases WHERE expires_ts <= ? ORDER BY expires_ts", (now,)
            ).fetchall()
            for lease in rows:
                to = self._end_attempt(
                    lease["job_id"], lease, Cause.LOST, now,
                    error=f"lease expired on {lease['host']} (attempt {lease['attempt']})",
                    reason=f"lease on {lease['host']} expired",
                )
                logger.warning("job %s: lease %s on %s expired, now %s", lease["job_id"][:12], lease["lease_id"][:8], lease["host"], to.value)
        return [r["job_id"] for r in rows]

    def resume_leases(self, now: float) -> list[str]:
        """Give every live lease a full lease_s from now; for a coordinator start, since while it was
        down no agent could renew. A host that is really gone is still noticed through its status."""
        with self.transaction():
            rows = self._conn.execute("SELECT job_id FROM leases WHERE expires_ts < ?", (now + self._lease_s,)).fetchall()
            self._conn.execute("UPDATE leases SET expires_ts = MAX(expires_ts, ?)", (now + self._lease_s,))
        return [r[0] for r in rows]

    def cancel(self, job_id: str, now: float) -> dict[str, str] | None:
        """Cancel a job that has not ended; returns the host and lease it took away, if it held one."""
        c = self._conn
        with self.transaction():
            row = c.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no job {job_id}")
            if JobStatus(row["status"]) in TERMINAL:
                raise IllegalTransitionError(f"job {job_id} is already {row['status']}")
            lease = c.execute("SELECT job_id, lease_id, host, attempt FROM leases WHERE job_id = ?", (job_id,)).fetchone()
            if lease is None:
                transition(c, job_id, JobStatus.CANCELLED, expect=[JobStatus.PENDING], reason="cancelled by operator", now=now)
                return None
            self._end_attempt(job_id, lease, Cause.CANCELLED, now, reason="cancelled by operator")
            return {"host": lease["host"], "lease_id": lease["lease_id"]}

    def requeue(self, job_id: str, now: float) -> dict[str, Any]:
        """Put a failed or cancelled job back to pending with a fresh attempt budget."""
        c = self._conn
        with self.transaction():
            transition(
                c, job_id, JobStatus.PENDING, expect=[JobStatus.FAILED, JobStatus.CANCELLED], reason="requeued by operator", now=now
            )
            c.execute("UPDATE jobs SET attempts = 0, error = NULL, progress = NULL WHERE id = ?", (job_id,))
            refresh_blocked(c, [job_id])
            return self.job(job_id)

    # queries

    def has_pending_dependents(self, job_id: str) -> bool:
        """Whether some pending job waits for this one (its completion may have made work claimable)."""
        # Two indexed look-ups: a join lets SQLite walk every pending job instead of this job's dependents.
        waiting = [r[0] for r in self._conn.execute("SELECT job_id FROM deps WHERE after_id = ?", (job_id,))]
        if not waiting:
            return False
        marks = ",".join("?" * len(waiting))
        row = self._conn.execute(
            f"SELECT 1 FROM jobs WHERE id IN ({marks}) AND status = 'pending' LIMIT 1", waiting
        ).fetchone()
        return row is not None

    def resolve_job(self, ref: str) -> str:
        """A job id from a full id, a unique id prefix or a name; prefers the manifest's job on a shared name."""
        ref = ref.strip()
        if not ref:
            raise NotFoundError("no job named ''")
        with self._lock:
            c = self._conn
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
        err = AmbiguousError(f"'{ref}' matches several jobs: {listed}{more}")
        err.candidates = [{"id": r["id"], "name": r["name"]} for r in named]  # type: ignore[attr-defined]
        raise err

    def job(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            row = self._conn.execute(f"{JOB_SELECT} WHERE j.id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no job {job_id}")
        return job_row(row)

    def job_spec(self, job_id: str) -> dict[str, Any]:
        """The stored spec of a job (the JobSpec's dict), which outlives the job's removal from the manifest."""
        with self._lock:
            row = self._conn.execute("SELECT spec FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no job {job_id}")
        return dict(json.loads(row[0]))

    def jobs(self, status: str | None = None) -> list[dict[str, Any]]:
        if status is not None and status not in {s.value for s in JobStatus}:
            raise BadRequestError(f"unknown status '{status}' (one of {', '.join(s.value for s in JobStatus)})")
        with self._lock:
            if status is None:
                rows = self._conn.execute(f"{JOB_SELECT} ORDER BY j.seq").fetchall()
            else:
                rows = self._conn.execute(f"{JOB_SELECT} WHERE j.status = ? ORDER BY j.seq", (status,)).fetchall()
        return [job_row(r) for r in rows]

    def job_page(
        self, where: listing.JobFilter, *, limit: int, after: int | None = None, newest_first: bool = False,
        offset: int | None = None,
    ) -> tuple[list[dict[str, Any]], int | None, int]:
        """One keyset page of the listing (`listing.job_page`), its next keyset, and the filter's total."""
        with self._lock:
            page, next_after = listing.job_page(
                self._conn, where, limit=limit, after=after, newest_first=newest_first, offset=offset
            )
            return page, next_after, listing.count_jobs(self._conn, where)

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT number, host, lease_id, started_ts, ended_ts, outcome, cause, exit_code, output_tail, error "
                "FROM attempts WHERE job_id = ? ORDER BY number",
                (job_id,),
            ).fetchall()
        return [dict(r) for r in rows]

    def lease(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT lease_id, host, expires_ts, attempt, gpus FROM leases WHERE job_id = ?", (job_id,)
            ).fetchone()
        if row is None:
            return None
        return {**dict(row), "gpus": json.loads(row["gpus"])}

    def why_waiting(self, job_id: str, now: float) -> list[dict[str, Any]]:
        """Why a pending job is not running: job-level reasons (host None), then one line per online host."""
        with self._lock:
            row = self._conn.execute("SELECT status, spec, in_manifest FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no job {job_id}")
            if row["status"] != JobStatus.PENDING.value:
                return []
            spec = spec_from_json(row["spec"])
            out: list[dict[str, Any]] = []
            if not row["in_manifest"]:
                out.append({"host": None, "reason": "not in the manifest any more"})
            for after in spec.after:
                dep = self._conn.execute("SELECT name, status FROM jobs WHERE id = ?", (after,)).fetchone()
                if dep is None:
                    out.append({"host": None, "reason": f"dependency '{after[:12]}' is unknown"})
                elif dep["status"] != JobStatus.COMPLETED.value:
                    out.append({"host": None, "reason": f"dependency '{dep['name']}' not completed ({dep['status']})"})
            if self._manifest is None:
                out.append({"host": None, "reason": "no manifest loaded"})
                return out
            views = self._host_views()
        online = [v for v in views if v.online]
        if not online:
            out.append({"host": None, "reason": "no host online"})
        commit = self._manifest.fleet.commit
        for view in online:
            reasons = scheduler.host_reasons(view) + scheduler.job_reasons(spec, view, commit=commit)
            wait = None if reasons else scheduler.cuda_wait_reason(spec, view, views, commit=commit)
            if wait:
                reasons.append(wait)
            out.append({"host": view.id, "reason": "; ".join(reasons) or "eligible; its next claim takes the best-ranked job"})
        return out

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        found = {r[0]: int(r[1]) for r in rows}
        return {s.value: found.get(s.value, 0) for s in JobStatus}

    # artifacts

    def record_artifact_verified(self, sha256: str, size: int, key: str, now: float) -> None:
        """Remember that the store holds this object with this size and hash (checked by the caller)."""
        with self.transaction():
            self._conn.execute(
                "INSERT INTO artifacts (sha256, size, key, verified_ts) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (sha256) DO UPDATE SET size = excluded.size, key = excluded.key, verified_ts = excluded.verified_ts",
                (sha256, size, key, now),
            )

    def is_artifact_verified(self, sha256: str) -> bool:
        with self._lock:
            return self._conn.execute("SELECT 1 FROM artifacts WHERE sha256 = ?", (sha256,)).fetchone() is not None

    def artifact(self, sha256: str) -> dict[str, Any] | None:
        """{"sha256","size","key","verified_ts"} of a verified object, or None."""
        with self._lock:
            row = self._conn.execute("SELECT sha256, size, key, verified_ts FROM artifacts WHERE sha256 = ?", (sha256,)).fetchone()
        return dict(row) if row else None

    def artifacts(self, job_id: str | None = None) -> list[dict[str, Any]]:
        """Per-job artifact metadata, oldest first; one job's when `job_id` is given."""
        sql = (
            "SELECT ja.sha256, ja.size, a.key, ja.job_id, ja.name, ja.model, ja.mode, ja.host, ja.metrics, ja.created_ts "
            "FROM job_artifacts ja JOIN artifacts a ON a.sha256 = ja.sha256"
        )
        with self._lock:
            if job_id is None:
                rows = self._conn.execute(f"{sql} ORDER BY ja.created_ts, ja.rowid").fetchall()
            else:
                rows = self._conn.execute(f"{sql} WHERE ja.job_id = ?", (job_id,)).fetchall()
        return [{**dict(r), "metrics": json.loads(r["metrics"])} for r in rows]


def _trainer_dict(trainer: Any, model: str) -> dict[str, Any]:
    if trainer is None:
        return {"name": model, "builtin": None, "command": [], "hyper": {}, "outputs": []}
    return {
        "name": trainer.name,
        "builtin": trainer.builtin,
        "command": list(trainer.command),
        "outputs": list(trainer.outputs),
        "hyper": {
            name: {"type": h.type, "default": h.default, "min": h.min, "max": h.max, "choices": list(h.choices)}
            for name, h in trainer.hyper.items()
        },
    }

"""Claims: which job a host gets, granted atomically with its lease, and why a pending job waits.

Eligibility and ranking are asked of `scheduler`, and which job a claim takes of
`claim_walk.ClaimWalk`, which `why_waiting` asks too, so the reason `show` prints and
the claim never disagree. The manifest in force is the service's, passed in.
"""

from __future__ import annotations

import json
import logging
import secrets

from mqfleet.coordinator import scheduler
from mqfleet.coordinator.sql.connection import one_row
from mqfleet.coordinator.sql.sqlite import StateFile, transition
from mqfleet.coordinator.tables import faults
from mqfleet.coordinator.tables.catalog import Catalog
from mqfleet.coordinator.tables.claim_walk import ClaimWalk
from mqfleet.coordinator.tables.hosts import QUARANTINE_COLUMN, Hosts, host_view
from mqfleet.coordinator.tables.rows import spec_from_json
from mqfleet.errors import NotFoundError
from mqfleet.lifecycle import JobStatus
from mqfleet.manifest.builtins import trainer_argv
from mqfleet.manifest.types import JobSpec, Manifest, TrainerSpec
from mqfleet.wire.replies import WaitReason
from mqfleet.wire.requests import Grant, TrainerRef

logger = logging.getLogger(__name__)

#: Sets of pending jobs a claim reads past which it logs (at most every MANY_SETS_LOG_EVERY_S): the claim is still
#: right, but each set costs it a few index seeks and a rule check (claim_walk.py).
MANY_SETS = 1000
MANY_SETS_LOG_EVERY_S = 600.0


class Claims:
    """Grants jobs to hosts; the one place that creates a lease."""

    def __init__(self, state: StateFile, catalog: Catalog, hosts: Hosts) -> None:
        self.state = state
        self.catalog = catalog
        self.hosts = hosts
        self._many_sets_logged_ts = float("-inf")

    def claim(self, host: str, now: float, manifest: Manifest | None) -> Grant | None:
        """Pick the best job this host may run and lease it to the host for the manifest's
        `lease_s`, atomically; None when there is none (or no manifest is loaded). The grant's
        checkpoint fields are left at their defaults (`verbs.checkpoints.with_checkpoint` fills them)."""
        if manifest is None:
            return None
        lease_s = manifest.fleet.lease_s
        with self.state.transaction() as c:
            hrow = c.execute(f"SELECT h.id, h.advert, h.online, h.draining, {QUARANTINE_COLUMN} FROM hosts h "
                             "WHERE h.id = ?", (host,)).fetchone()
            if hrow is None:
                return None
            # a count, and the GPU lists of the leases that hold GPUs: a host with many CPU slots does not
            # parse one list per lease it holds at every claim (the profile of a 100-slot host showed it)
            used = int(one_row(c.execute("SELECT COUNT(*) FROM leases WHERE host = ?", (host,)))[0])
            held = [json.loads(r[0]) for r in c.execute("SELECT gpus FROM leases WHERE host = ? AND gpus != '[]'",
                                                        (host,))]
            view = host_view(hrow, used, manifest.hosts, now=now)
            if scheduler.host_reasons(view):
                return None
            spec = self._pick(view, manifest, now)
            if spec is None:
                return None
            gpus = scheduler.pick_gpu(spec, view, (i for g in held for i in g))
            lease_id = secrets.token_hex(16)
            c.execute("UPDATE jobs SET attempt_seq = attempt_seq + 1, progress = NULL WHERE id = ?", (spec.id,))
            attempt = int(one_row(c.execute("SELECT attempt_seq FROM jobs WHERE id = ?", (spec.id,)))[0])
            transition(c, spec.id, JobStatus.CLAIMED, expect=[JobStatus.PENDING], reason=f"claimed by {host}", now=now, host=host)
            expires_ts = now + lease_s
            c.execute(
                "INSERT INTO leases (job_id, lease_id, host, attempt, gpus, granted_ts, expires_ts) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (spec.id, lease_id, host, attempt, json.dumps(gpus), now, expires_ts),
            )
            c.execute(
                "INSERT INTO attempts (job_id, number, host, lease_id, started_ts) VALUES (?, ?, ?, ?, ?)",
                (spec.id, attempt, host, lease_id, now),
            )
            row = self.catalog.job(spec.id)
        return Grant(job=row, spec=spec.to_dict(), trainer=trainer_ref(manifest.trainers.get(spec.model), spec.model),
                     lease_id=lease_id, attempt=attempt, expires_ts=expires_ts, lease_s=lease_s, gpus=gpus)

    def _pick(self, view: scheduler.HostView, manifest: Manifest, now: float) -> JobSpec | None:
        """The best-ranked job this host may take now (`claim_walk.ClaimWalk`: per requirement set, never a
        capped walk over jobs, so no job the host may run hides behind jobs no host can run)."""
        models = scheduler.models_allowed(view, manifest.trainers)
        if models is not None and not models:
            return None  # its policy denies every model: nothing to read
        walk = self._walk(view, manifest, now)
        spec = walk.pick()
        if walk.sets_read > MANY_SETS and now - self._many_sets_logged_ts >= MANY_SETS_LOG_EVERY_S:
            self._many_sets_logged_ts = now
            logger.warning("a claim of %s read %d sets of pending jobs (jobs that differ in what they ask of a host or "
                           "in the hosts they failed on); a claim pays for each (1,000 sets: about 13 ms): fewer "
                           "distinct requirements make claims cheaper (docs/INTERNALS.md, \"How a claim picks a job\")",
                           view.id, walk.sets_read)
        return spec

    def _walk(self, view: scheduler.HostView, manifest: Manifest, now: float,
              views: list[scheduler.HostView] | None = None) -> ClaimWalk:
        # The other hosts matter only to the prefer_cuda and retry rules, and reading them costs a row and an
        # advert parse per host; so the walk asks for them only when such a job comes up.
        def others() -> list[scheduler.HostView]:
            if views is not None:
                return views
            return self.hosts.views(manifest.hosts, "WHERE h.online = 1 AND h.draining = 0 AND h.id != ?", (view.id,),
                                   now=now)

        return ClaimWalk(self.state.conn, view, others, commit=manifest.fleet.commit, now=now)

    def why_waiting(self, job_id: str, manifest: Manifest | None, now: float) -> list[WaitReason]:
        """Why a pending job is not running: job-level reasons (host None), then one line per online host."""
        with self.state.lock:
            c = self.state.conn
            row = c.execute("SELECT seq, status, spec, in_manifest FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no job {job_id}")
            if row["status"] != JobStatus.PENDING.value:
                return []
            spec = spec_from_json(row["spec"])
            out: list[WaitReason] = []
            if not row["in_manifest"]:
                out.append(WaitReason(host=None, reason="not in the manifest any more"))
            for after in spec.after:
                dep = c.execute("SELECT name, status FROM jobs WHERE id = ?", (after,)).fetchone()
                if dep is None:
                    out.append(WaitReason(host=None, reason=f"dependency '{after[:12]}' is unknown"))
                elif dep["status"] in (JobStatus.FAILED.value, JobStatus.CANCELLED.value):
                    out.append(WaitReason(host=None, reason=f"{faults.NEVER_SATISFIED}: {dep['name']} ({dep['status']})"))
                elif dep["status"] != JobStatus.COMPLETED.value:
                    out.append(WaitReason(host=None, reason=f"dependency '{dep['name']}' not completed ({dep['status']})"))
            retry = faults.retry_wait(c, job_id)
            if retry is not None and retry.not_before_ts > now:
                out.append(WaitReason(host=None, reason=f"retry back-off: claimable in {retry.not_before_ts - now:.0f} s "
                                                         f"(after a failed attempt on {retry.last_failed_on})"))
            failed = retry.failed_hosts if retry else frozenset()
            # a reason of the job's own keeps it from every host: no host's next claim can take it
            claimable = not out
            if manifest is None:
                out.append(WaitReason(host=None, reason="no manifest loaded"))
                return out
            views = self.hosts.views(manifest.hosts, now=now)
        online = [v for v in views if v.online]
        if not online:
            out.append(WaitReason(host=None, reason="no host online"))
        commit = manifest.fleet.commit
        need = spec.requirements
        for view in online:
            reasons = scheduler.host_reasons(view) + scheduler.requirement_reasons(need, view, commit=commit)
            wait = None if reasons else (scheduler.cuda_wait_reason(need, view, views, commit=commit)
                                         or scheduler.retry_host_reason(need, view, failed, views, commit=commit))
            if wait:
                reasons.append(wait)
            if not reasons:
                reasons.append(self._next_claim(view, manifest, now, views, spec, row["seq"]) if claimable
                               else "eligible by policy and capability once the job's own wait above ends")
            out.append(WaitReason(host=view.id, reason="; ".join(reasons)))
        return out

    def _next_claim(self, view: scheduler.HostView, manifest: Manifest, now: float, views: list[scheduler.HostView],
                    spec: JobSpec, seq: int) -> str:
        """What the next claim of a host that may take the job takes: this job, or better-ranked ones first."""
        with self.state.lock:
            walk = self._walk(view, manifest, now, views)
            taken = walk.pick()  # what the claim itself would take
            if taken is not None and taken.id == spec.id:
                return "eligible; its next claim takes this job"
            ahead = walk.better_ranked(walk.choices(), spec, seq)
        if ahead == 1:
            return "eligible; 1 better-ranked job this host can run comes first"
        if ahead:
            return f"eligible; {ahead} better-ranked jobs this host can run come first"
        return "eligible by policy and capability"  # not met: the walk found neither it nor a better job


def trainer_ref(trainer: TrainerSpec | None, model: str) -> TrainerRef:
    """The grant's `trainer`: how the agent starts the job's trainer (`argv`, resolved here so
    the agent never needs the trainer registry), what it takes and what it must write."""
    if trainer is None:
        return TrainerRef(name=model)
    return TrainerRef(
        name=trainer.name,
        builtin=trainer.builtin,
        command=list(trainer.command),
        argv=list(trainer_argv(trainer)),
        outputs=list(trainer.outputs),
        hyper={
            name: {"type": h.type, "default": h.default, "min": h.min, "max": h.max, "choices": list(h.choices)}
            for name, h in trainer.hyper.items()
        },
    )

"""Claims: which job a host gets, granted atomically with its lease, and why a pending job waits.

Eligibility and ranking are asked of `scheduler`, so a claim and `why_waiting` give
the same answer. The manifest in force is the service's, passed in.
"""

from __future__ import annotations

import heapq
import itertools
import json
import secrets
from collections.abc import Iterator
from typing import Any

from mqfleet.coordinator import scheduler
from mqfleet.coordinator.sql.connection import one_row
from mqfleet.coordinator.sql.sqlite import StateFile, transition
from mqfleet.coordinator.tables import faults
from mqfleet.coordinator.tables.blocking import HOST_LIMITED, OPEN
from mqfleet.coordinator.tables.catalog import Catalog
from mqfleet.coordinator.tables.hosts import QUARANTINE_COLUMN, Hosts, host_view
from mqfleet.coordinator.tables.rows import spec_from_json
from mqfleet.errors import NotFoundError
from mqfleet.lifecycle import JobStatus
from mqfleet.manifest.builtins import trainer_argv
from mqfleet.manifest.types import JobSpec, Manifest, TrainerSpec
from mqfleet.wire.replies import WaitReason
from mqfleet.wire.requests import Grant, TrainerRef

#: Candidates read per step of a claim's walk down the ranking index.
CLAIM_BATCH = 32
#: Candidates read by the first step of that walk.
CLAIM_FIRST_BATCH = 4
#: Candidates a claim examines at most: past them it answers "no job" rather than hold the lock
#: (renewals wait behind it). Rules SQL can check are in the WHERE clause, so these are jobs the
#: host may run by everything but the rules only Python checks (min_torch, same_commit, prefer_cuda).
CLAIM_MAX_CANDIDATES = 512


class Claims:
    """Grants jobs to hosts; the one place that creates a lease."""

    def __init__(self, state: StateFile, catalog: Catalog, hosts: Hosts) -> None:
        self.state = state
        self.catalog = catalog
        self.hosts = hosts

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
            view = host_view(hrow, used, manifest.hosts)
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
        """Walk pending jobs in rank order, a batch at a time, until one fits this host.

        Rules SQL can check are in the WHERE clause, so the walk rarely reads a row it
        must skip: numbers (RAM, VRAM, CUDA), the retry back-off, the host's policy
        (as the models it may run) and allowed_hosts. Jobs open to every host
        (`blocked = 0`) and jobs limited to their allowed_hosts (`blocked = 2`, listed
        in `job_hosts`) come from two walks merged in `scheduler.rank_key` order, so a
        host never reads the jobs of others however many wait (docs/BENCHMARKS.md).
        """
        # a job in its retry back-off is skipped here; `r.failed_hosts` names the hosts its retry avoids
        where = ("jobs.status = 'pending' AND min_ram_gib <= ? AND min_vram_gib <= ? "
                 "AND (r.not_before_ts IS NULL OR r.not_before_ts <= ?)")
        params: list[Any] = [view.ram_gib, view.vram_gib, now]
        # The host's policy (allow_jobs/deny_jobs globs over the model) is known per model: the few
        # models it may run go into the WHERE clause, so denied jobs are never read.
        models = scheduler.models_allowed(view, manifest.trainers)
        if models is not None:
            if not models:
                return None
            where += f" AND model IN ({','.join('?' * len(models))})"
            params += models
        if view.has_cuda:
            order = "priority DESC, prefer_cuda DESC, seq"
        else:
            where += " AND require_cuda = 0"
            order = "priority DESC, seq"
        columns = "seq, spec, priority, prefer_cuda, r.failed_hosts"
        retries = "LEFT JOIN retries r ON r.job_id = jobs.id"
        # Pages by LIMIT/OFFSET rather than one open cursor: PostgreSQL's client-side cursor would
        # fetch every pending spec up front. Inside the claim's transaction the ranking cannot change.
        open_jobs = self._pages(f"SELECT {columns} FROM jobs {retries} WHERE jobs.blocked = {OPEN} AND {where} "
                                f"ORDER BY {order} LIMIT ? OFFSET ?", params)
        streams = [open_jobs]
        # Most hosts are named in no allowed_hosts: one index probe says so, and the jobs limited to
        # other hosts are never walked at all.
        if self.state.conn.execute("SELECT 1 FROM job_hosts WHERE host = ? LIMIT 1", (view.id,)).fetchone():
            streams.append(self._pages(
                f"SELECT {columns} FROM job_hosts a JOIN jobs ON jobs.id = a.job_id {retries} WHERE a.host = ? "
                f"AND jobs.blocked = {HOST_LIMITED} AND {where} ORDER BY {order} LIMIT ? OFFSET ?", [view.id, *params]))
        ranked = heapq.merge(*streams, key=lambda r: (-r["priority"], -r["prefer_cuda"] if view.has_cuda
                                                                 else 0, r["seq"]))
        # The other hosts matter only to the prefer_cuda rule, and reading them costs a row and an
        # advert parse per host; so they are read once, and only when a prefer_cuda job comes up.
        others: list[scheduler.HostView] | None = None
        # The first job in rank order usually fits, so the first batch is small.
        size, examined = CLAIM_FIRST_BATCH, 0
        while examined < CLAIM_MAX_CANDIDATES and (batch := list(itertools.islice(ranked, size))):
            examined += len(batch)
            candidates = [(r["seq"], spec_from_json(r["spec"])) for r in batch]
            failed = {spec.id: frozenset(json.loads(r["failed_hosts"]))
                      for (_, spec), r in zip(candidates, batch, strict=True) if r["failed_hosts"]}
            # ... and to a retry that failed on this host, which waits for another eligible host
            needs_others = any(view.id in hosts for hosts in failed.values()) or (
                not view.has_cuda and any(spec.prefer_cuda for _, spec in candidates))
            if others is None and needs_others:
                others = self.hosts.views(manifest.hosts, "WHERE h.online = 1 AND h.draining = 0 AND h.id != ?", (view.id,))
            found = scheduler.first_eligible(candidates, view, others or [], commit=manifest.fleet.commit,
                                             failed=failed)
            if found is not None:
                return found
            size = CLAIM_BATCH
        return None

    def _pages(self, sql: str, params: list[Any]) -> Iterator[Any]:
        """The rows of a ranked query, read a page at a time as the caller asks for them."""
        size, offset = CLAIM_FIRST_BATCH, 0
        while rows := self.state.conn.execute(sql, (*params, size, offset)).fetchall():
            yield from rows
            if len(rows) < size:
                return
            offset += len(rows)
            size = CLAIM_BATCH

    def why_waiting(self, job_id: str, manifest: Manifest | None, now: float) -> list[WaitReason]:
        """Why a pending job is not running: job-level reasons (host None), then one line per online host."""
        with self.state.lock:
            c = self.state.conn
            row = c.execute("SELECT status, spec, in_manifest FROM jobs WHERE id = ?", (job_id,)).fetchone()
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
            if retry is not None and retry[0] > now:
                out.append(WaitReason(host=None, reason=f"retry back-off: claimable in {retry[0] - now:.0f} s "
                                                         f"(after a failed attempt on {retry[1][-1] if retry[1] else '?'})"))
            failed = frozenset(retry[1]) if retry else frozenset()
            if manifest is None:
                out.append(WaitReason(host=None, reason="no manifest loaded"))
                return out
            views = self.hosts.views(manifest.hosts)
        online = [v for v in views if v.online]
        if not online:
            out.append(WaitReason(host=None, reason="no host online"))
        commit = manifest.fleet.commit
        for view in online:
            reasons = scheduler.host_reasons(view) + scheduler.job_reasons(spec, view, commit=commit)
            wait = None if reasons else (scheduler.cuda_wait_reason(spec, view, views, commit=commit)
                                         or scheduler.retry_host_reason(spec, view, failed, views, commit=commit))
            if wait:
                reasons.append(wait)
            out.append(WaitReason(host=view.id,
                                  reason="; ".join(reasons) or "eligible; its next claim takes the best-ranked job"))
        return out


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

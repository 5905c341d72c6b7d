"""Which pending job a host's claim takes: the best-ranked, over the requirement sets the host can run,
of each set's best job (docs/INTERNALS.md, "How a claim picks a job").

Every job row carries `req_key`, the digest of its `spec.Requirements`: the spec fields that the host
rules of `scheduler` read, and only those. For one host at one moment the jobs of one key are all
runnable or all not, so a claim judges keys, not jobs:

1. one statement reads the best-ranked pending job of every key, past its retry back-off: a loose
   scan of the `jobs_claim_key` index (a seek per key, and one more for the key's best job), so the
   10,000 jobs of a key cost what one does;
2. each key is judged once, by its best job's requirements (`scheduler.requirement_reasons`, then the
   prefer_cuda rule, which looks at the other hosts);
3. when the best job of a runnable key failed on this host, SQL finds the key's best job that this
   host may take (one that did not fail here, or failed on every host its retry would prefer:
   `retry_hosts`), so that per-job rule is skipped in SQL too;
4. the best-ranked of what is left (`scheduler.rank_key`) is the job.

Nothing is capped and no page is left unread: however many jobs outrank it, a job the host may run is
found. A claim's cost grows with the number of keys (a handful: a sweep shares one), never with the
jobs no host can run; the jobs a claim steps over one by one, in SQL, are those in their retry back-off
and those that failed on this host. The answer is `scheduler.first_eligible` over every pending job
(tests/unit/test_db_properties.py holds the two equal).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mqfleet.coordinator import scheduler
from mqfleet.coordinator.blocking import HOST_LIMITED, OPEN
from mqfleet.coordinator.rows import spec_from_json
from mqfleet.spec import JobSpec

_BACKOFF = "NOT EXISTS (SELECT 1 FROM retries r WHERE r.job_id = t.id AND r.not_before_ts > ?)"
_ORDER = "ORDER BY t.priority DESC, t.seq"
_COLUMNS = ("j.seq, j.spec, j.priority, j.blocked, j.req_key, "
            "EXISTS (SELECT 1 FROM retry_hosts f WHERE f.job_id = j.id AND f.host = ?) AS failed_here")


def _keys(name: str, blocked: int) -> str:
    """A recursive CTE of the distinct `req_key`s of pending jobs with this `blocked` value, one index seek each."""
    pending = f"SELECT req_key FROM jobs WHERE status = 'pending' AND blocked = {blocked}"
    return (f"{name}(k) AS (SELECT ({pending} ORDER BY req_key LIMIT 1) UNION ALL "
            f"SELECT ({pending} AND req_key > {name}.k ORDER BY req_key LIMIT 1) FROM {name} WHERE {name}.k IS NOT NULL)")


def _best_of_keys(name: str, blocked: int) -> str:
    """Each key's best-ranked pending job past its back-off, as rows of `_COLUMNS`."""
    best = (f"SELECT t.seq FROM jobs t WHERE t.status = 'pending' AND t.blocked = {blocked} AND t.req_key = {name}.k "
            f"AND {_BACKOFF} {_ORDER} LIMIT 1")
    return f"SELECT {_COLUMNS} FROM {name} JOIN jobs j ON j.seq = ({best}) WHERE {name}.k IS NOT NULL"


#: The best job of every key of the jobs open to any host. Parameters: this host, now.
BEST_OPEN = f"WITH RECURSIVE {_keys('open_keys', OPEN)} {_best_of_keys('open_keys', OPEN)}"
#: ... and of every key of the jobs limited by allowed_hosts, where this host is allowed (a key holds one
#: allowed_hosts list, so its best job's `job_hosts` row answers for the key). Parameters: host, now, host, now, host.
BEST_OPEN_AND_LIMITED = (
    f"WITH RECURSIVE {_keys('open_keys', OPEN)}, {_keys('limited_keys', HOST_LIMITED)} "
    f"{_best_of_keys('open_keys', OPEN)} UNION ALL {_best_of_keys('limited_keys', HOST_LIMITED)} "
    "AND EXISTS (SELECT 1 FROM job_hosts a WHERE a.job_id = j.id AND a.host = ?)"
)


@dataclass(frozen=True)
class Choice:
    """The best job of one requirement set that the host may take now, and how SQL finds that set's jobs."""

    seq: int
    spec: JobSpec
    blocked: int
    req_key: str

    def rank(self, host_cuda: bool) -> tuple[int, int, int]:
        return scheduler.rank_key(self.spec.priority, self.spec.prefer_cuda, self.seq, host_cuda=host_cuda)


class ClaimWalk:
    """One host's view of the pending jobs, read through `conn` inside its caller's transaction or lock.

    `others` gives the other hosts (read only when a rule needs them: the prefer_cuda rule on a
    host without CUDA, or a retry of a job that failed here).
    """

    def __init__(self, conn: sqlite3.Connection, host: scheduler.HostView,
                 others: Callable[[], list[scheduler.HostView]], *, commit: str, now: float) -> None:
        self.conn = conn
        self.host = host
        self._load_others = others
        self._others: list[scheduler.HostView] | None = None
        self.commit = commit
        self.now = now

    def pick(self) -> JobSpec | None:
        """The job this host's claim takes now, or None."""
        choices = self.choices()
        best = min(choices, key=lambda c: c.rank(self.host.has_cuda), default=None)
        return best.spec if best is not None else None

    def choices(self) -> list[Choice]:
        """Per requirement set the host may run, the best job of it that the host may take now."""
        host = self.host.id
        # Most hosts are named in no allowed_hosts: one index probe says so, and no limited key is read.
        if self.conn.execute("SELECT 1 FROM job_hosts WHERE host = ? LIMIT 1", (host,)).fetchone():
            rows = self.conn.execute(BEST_OPEN_AND_LIMITED, (host, self.now, host, self.now, host)).fetchall()
        else:
            rows = self.conn.execute(BEST_OPEN, (host, self.now)).fetchall()
        choices: list[Choice] = []
        for row in rows:
            spec = spec_from_json(row["spec"])
            need = spec.requirements
            if scheduler.requirement_reasons(need, self.host, commit=self.commit):
                continue
            if need.prefer_cuda and not self.host.has_cuda and scheduler.cuda_wait_reason(
                    need, self.host, self.others(), commit=self.commit):
                continue
            choice = Choice(seq=row["seq"], spec=spec, blocked=row["blocked"], req_key=row["req_key"])
            if row["failed_here"] and (alternatives := self._alternatives(choice)):
                found = self._best_retry(choice, alternatives)
                if found is None:
                    continue
                choice = found
            choices.append(choice)
        return choices

    def better_ranked(self, choices: list[Choice], spec: JobSpec, seq: int) -> int:
        """How many jobs of these choices' sets the host may take now rank before the job (`spec`, `seq`)."""
        theirs = scheduler.rank_key(spec.priority, spec.prefer_cuda, seq, host_cuda=self.host.has_cuda)
        total = 0
        for choice in choices:
            mine = choice.rank(self.host.has_cuda)[1]  # the set's prefer_cuda place: one value per key
            if mine < theirs[1]:
                before, params = "t.priority >= ?", [spec.priority]
            elif mine > theirs[1]:
                before, params = "t.priority > ?", [spec.priority]
            else:
                before, params = "(t.priority > ? OR (t.priority = ? AND t.seq < ?))", [spec.priority, spec.priority, seq]
            where, args = self._set_filter(choice, self._alternatives(choice))
            total += int(self.conn.execute(f"SELECT COUNT(*) FROM jobs t WHERE {where} AND {before}",
                                           (*args, *params)).fetchone()[0])
        return total

    def others(self) -> list[scheduler.HostView]:
        if self._others is None:
            self._others = [v for v in self._load_others() if v.id != self.host.id]
        return self._others

    def _alternatives(self, choice: Choice) -> list[str]:
        """The hosts that a retry of this set's jobs prefers to this host (`scheduler.retry_alternatives`)."""
        return scheduler.retry_alternatives(choice.spec.requirements, self.host, self.others(), commit=self.commit)

    def _best_retry(self, choice: Choice, alternatives: list[str]) -> Choice | None:
        """The set's best job that this host may take, when one that failed here comes first."""
        where, args = self._set_filter(choice, alternatives)
        row = self.conn.execute(f"SELECT t.seq, t.spec FROM jobs t WHERE {where} {_ORDER} LIMIT 1", args).fetchone()
        if row is None:
            return None
        return Choice(seq=row["seq"], spec=spec_from_json(row["spec"]), blocked=choice.blocked, req_key=choice.req_key)

    def _set_filter(self, choice: Choice, alternatives: list[str]) -> tuple[str, list[Any]]:
        """The WHERE clause over `jobs t` of the jobs of the choice's set that the host may take now, given the
        hosts a retry prefers to this one."""
        where = f"t.status = 'pending' AND t.blocked = ? AND t.req_key = ? AND {_BACKOFF}"
        args: list[Any] = [choice.blocked, choice.req_key, self.now]
        if alternatives:
            # a job that failed here waits while a host its retry prefers has not failed it
            marks = ",".join("?" * len(alternatives))
            where += (" AND (NOT EXISTS (SELECT 1 FROM retry_hosts f WHERE f.job_id = t.id AND f.host = ?) OR "
                      f"(SELECT COUNT(*) FROM retry_hosts f WHERE f.job_id = t.id AND f.host IN ({marks})) = ?)")
            args += [self.host.id, *alternatives, len(alternatives)]
        return where, args

"""Which pending job a host's claim takes: the best-ranked, over the sets of jobs the host may take, of
each set's best job (docs/INTERNALS.md, "How a claim picks a job").

Every rule that decides where a job may run reads two things of the job: its requirements (the spec
fields of `spec.Requirements`, whose digest is `jobs.req_key`) and the hosts its attempts failed on
(`jobs.failed_hosts`, which its retry avoids). Jobs that agree on both are, for one host at one moment,
all takeable or all not: they form a set, and a claim judges sets, not jobs, each once:

1. the first page (FIRST_PAGE open jobs in rank order) is judged job by job, in order: most claims end
   here, at the first job the host may take, for about what the capped walk before cost;
2. otherwise one statement reads the best-ranked pending job of every set, past its retry back-off: a
   loose scan of the `jobs_claim_key` index (a seek per set, then one for the set's best job), so the
   10,000 jobs of a sweep cost what one does; each set is judged by its best job with the rules of
   `scheduler` (`requirement_reasons`, then the prefer_cuda and retry rules, which look at the other
   hosts), and the best-ranked of the jobs left (`scheduler.rank_key`) is the job.

Nothing is capped and no page is left unread: however many jobs outrank it, a job the host may take is
found. A claim's cost grows with the number of sets (a handful: a sweep is one), never with the number of
jobs no host can take; the only jobs it steps over one by one, in SQL, are those in their retry back-off.
The answer is `scheduler.first_eligible` over every pending job (tests/unit/test_db_properties.py holds
the two equal).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from mqfleet.coordinator import scheduler
from mqfleet.coordinator.sql.connection import SqlConnection, SqlRow, one_row
from mqfleet.coordinator.tables.blocking import HOST_LIMITED, OPEN
from mqfleet.coordinator.tables.rows import spec_from_json
from mqfleet.manifest.types import JobSpec

#: Open jobs a claim judges in rank order before it reads every set.
FIRST_PAGE = 4

#: A job `jobs t` past its retry back-off. Parameter: now.
_PAST_BACKOFF = "NOT EXISTS (SELECT 1 FROM retries r WHERE r.job_id = t.id AND r.not_before_ts > ?)"
#: The jobs of one set that a claim may take now. Parameters: blocked, req_key, failed_hosts, now.
_TAKEABLE = f"t.status = 'pending' AND t.blocked = ? AND t.req_key = ? AND t.failed_hosts = ? AND {_PAST_BACKOFF}"
#: The orders of `scheduler.rank_key` for a host without and with CUDA (indexes `jobs_claim`, `jobs_claim_cuda`).
#: Within one set `prefer_cuda` is one value, so the first is the set's order for every host (`jobs_claim_key`).
_RANK = "ORDER BY t.priority DESC, t.seq"
_CUDA_RANK = "ORDER BY t.priority DESC, t.prefer_cuda DESC, t.seq"


def _sets(name: str, blocked: int) -> str:
    """Recursive CTEs of the distinct (req_key, failed_hosts) of pending jobs with this `blocked` value: the
    keys (`{name}_keys`), then within each key its failed_hosts values; one index seek per key and per set."""
    pending = f"FROM jobs WHERE status = 'pending' AND blocked = {blocked}"
    keys = f"{name}_keys"
    return (f"{keys}(k) AS (SELECT (SELECT req_key {pending} ORDER BY req_key LIMIT 1) UNION ALL "
            f"SELECT (SELECT req_key {pending} AND req_key > {keys}.k ORDER BY req_key LIMIT 1) FROM {keys} "
            f"WHERE {keys}.k IS NOT NULL), "
            f"{name}(k, f) AS (SELECT {keys}.k, (SELECT failed_hosts {pending} AND req_key = {keys}.k "
            f"ORDER BY failed_hosts LIMIT 1) FROM {keys} WHERE {keys}.k IS NOT NULL UNION ALL "
            f"SELECT {name}.k, (SELECT failed_hosts {pending} AND req_key = {name}.k AND failed_hosts > {name}.f "
            f"ORDER BY failed_hosts LIMIT 1) FROM {name} WHERE {name}.f IS NOT NULL)")


def _best_of_sets(name: str, blocked: int) -> str:
    """A CTE `{name}_best` of each set and the seq of its best-ranked pending job past its back-off. Parameter: now."""
    best = (f"SELECT t.seq FROM jobs t WHERE t.status = 'pending' AND t.blocked = {blocked} AND t.req_key = {name}.k "
            f"AND t.failed_hosts = {name}.f AND {_PAST_BACKOFF} {_RANK} LIMIT 1")
    return f"{name}_best(seq, k, f) AS (SELECT ({best}), {name}.k, {name}.f FROM {name} WHERE {name}.f IS NOT NULL)"


def _rows(name: str, blocked: int) -> str:
    """The best job of each set: its spec read by seq in a subquery (PostgreSQL would plan a join on seq as a
    scan of every job, not knowing how few sets there are)."""
    return (f"SELECT b.seq, (SELECT j.spec FROM jobs j WHERE j.seq = b.seq) AS spec, {blocked} AS blocked, "
            f"b.k AS req_key, b.f AS failed_hosts FROM {name}_best b WHERE b.seq IS NOT NULL")


# Each statement is a SELECT around its WITH, so PostgreSQL's connection runs it as a read outside a
# transaction (`why_waiting`), as it does any SELECT.
#: The best job of every set of the jobs open to any host. Parameter: now.
BEST_OPEN = (f"SELECT * FROM (WITH RECURSIVE {_sets('open_sets', OPEN)}, {_best_of_sets('open_sets', OPEN)} "
             f"{_rows('open_sets', OPEN)}) AS best")
#: ... and of every set of the jobs limited by allowed_hosts, where this host is allowed (a set holds one
#: allowed_hosts list, so its best job's `job_hosts` row answers for the set). Parameters: now, now, host.
BEST_OPEN_AND_LIMITED = (
    f"SELECT * FROM (WITH RECURSIVE {_sets('open_sets', OPEN)}, {_sets('limited_sets', HOST_LIMITED)}, "
    f"{_best_of_sets('open_sets', OPEN)}, {_best_of_sets('limited_sets', HOST_LIMITED)} "
    f"{_rows('open_sets', OPEN)} UNION ALL {_rows('limited_sets', HOST_LIMITED)} "
    "AND EXISTS (SELECT 1 FROM jobs j JOIN job_hosts a ON a.job_id = j.id WHERE j.seq = b.seq AND a.host = ?)) AS best"
)


@dataclass(frozen=True)
class Choice:
    """The best job of one set that the host may take now, and the set."""

    seq: int
    spec: JobSpec
    blocked: int
    req_key: str
    failed_hosts: str

    def rank(self, host_cuda: bool) -> tuple[int, int, int]:
        return scheduler.rank_key(self.spec.priority, self.spec.prefer_cuda, self.seq, host_cuda=host_cuda)


def _choice(row: SqlRow) -> Choice:
    return Choice(seq=row["seq"], spec=spec_from_json(row["spec"]), blocked=row["blocked"], req_key=row["req_key"],
                  failed_hosts=row["failed_hosts"])


class ClaimWalk:
    """One host's view of the pending jobs, read through `conn` inside its caller's transaction or lock.

    `others` gives the other hosts (read only when a rule needs them: the prefer_cuda rule on a
    host without CUDA, or the retry of a job that failed here).
    """

    def __init__(self, conn: SqlConnection, host: scheduler.HostView,
                 others: Callable[[], list[scheduler.HostView]], *, commit: str, now: float) -> None:
        self.conn = conn
        self.host = host
        self._load_others = others
        self._others: list[scheduler.HostView] | None = None
        self._judged: dict[tuple[int, str, str], bool] = {}
        #: sets the last `choices` read (0 when the first page answered)
        self.sets_read = 0
        self.commit = commit
        self.now = now

    def pick(self) -> JobSpec | None:
        """The job this host's claim takes now, or None."""
        limited = self._is_named_in_allowed_hosts()
        if not limited:
            # Most claims take one of the few best-ranked open jobs: the first page answers them before any
            # set is read (measured: 15-21 us per pick against 65-85 us for reading the 5 sets of the bench's
            # mix; the capped walk before took 20-34 us). A host named in allowed_hosts reads the sets at once.
            order = _CUDA_RANK if self.host.has_cuda else _RANK
            rows = self.conn.execute(f"SELECT t.seq, t.spec, t.blocked, t.req_key, t.failed_hosts FROM jobs t "
                                     f"WHERE t.status = 'pending' AND t.blocked = {OPEN} AND {_PAST_BACKOFF} {order} "
                                     f"LIMIT {FIRST_PAGE}", (self.now,)).fetchall()
            for choice in map(_choice, rows):
                if self._takes(choice):
                    return choice.spec
            if len(rows) < FIRST_PAGE:
                return None  # that was every open job
        best = min(self.choices(limited), key=lambda c: c.rank(self.host.has_cuda), default=None)
        return best.spec if best is not None else None

    def choices(self, limited: bool | None = None) -> list[Choice]:
        """Per set of jobs the host may take now, the set's best job."""
        if limited is None:
            limited = self._is_named_in_allowed_hosts()
        if limited:
            rows = self.conn.execute(BEST_OPEN_AND_LIMITED, (self.now, self.now, self.host.id)).fetchall()
        else:
            rows = self.conn.execute(BEST_OPEN, (self.now,)).fetchall()
        self.sets_read = len(rows)
        return [c for c in map(_choice, rows) if self._takes(c)]

    def better_ranked(self, choices: list[Choice], spec: JobSpec, seq: int) -> int:
        """How many jobs of these choices' sets the host may take now rank before the job (`spec`, `seq`)."""
        cuda = self.host.has_cuda
        theirs = scheduler.rank_key(spec.priority, spec.prefer_cuda, seq, host_cuda=cuda)[1]
        total = 0
        for choice in choices:
            mine = choice.rank(cuda)[1]  # where prefer_cuda puts the set: one value per set
            if mine < theirs:
                before, params = "t.priority >= ?", [spec.priority]
            elif mine > theirs:
                before, params = "t.priority > ?", [spec.priority]
            else:
                before, params = "(t.priority > ? OR (t.priority = ? AND t.seq < ?))", [spec.priority, spec.priority, seq]
            total += int(one_row(self.conn.execute(
                f"SELECT COUNT(*) FROM jobs t WHERE {_TAKEABLE} AND {before}",
                (choice.blocked, choice.req_key, choice.failed_hosts, self.now, *params)))[0])
        return total

    def _is_named_in_allowed_hosts(self) -> bool:
        # Most hosts are named in no allowed_hosts: one index probe says so, and no limited job is read.
        return self.conn.execute("SELECT 1 FROM job_hosts WHERE host = ? LIMIT 1", (self.host.id,)).fetchone() is not None

    def _takes(self, choice: Choice) -> bool:
        """Whether the host may take the jobs of this set now, judged once per claim by any of its jobs."""
        key = (choice.blocked, choice.req_key, choice.failed_hosts)
        if key not in self._judged:
            self._judged[key] = self._judge(choice)
        return self._judged[key]

    def _judge(self, choice: Choice) -> bool:
        need = choice.spec.requirements
        if scheduler.requirement_reasons(need, self.host, commit=self.commit):
            return False
        if need.prefer_cuda and not self.host.has_cuda and scheduler.cuda_wait_reason(
                need, self.host, self._other_hosts(), commit=self.commit):
            return False
        failed = frozenset(json.loads(choice.failed_hosts))
        # an `oom` (its mark among the failed hosts) holds back hosts that did not fail it too: read the others
        return not (self.host.id in failed or scheduler.oom_floor(failed)) or not scheduler.retry_host_reason(
            need, self.host, failed, self._other_hosts(), commit=self.commit)

    def _other_hosts(self) -> list[scheduler.HostView]:
        if self._others is None:
            self._others = [v for v in self._load_others() if v.id != self.host.id]
        return self._others

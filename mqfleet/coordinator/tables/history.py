"""What each attempt left behind: its trainer output lines, its progress reports and its resource usage,
kept in the coordinator's SQLite file so they outlive a restart; and the retention that prunes them.

Its own tables (`attempt_lines`, `attempt_progress`, `attempt_records`, declared in coordinator/sql/schema.py) sit
beside the job state, on the same connection (and so under the same lock and transactions). Every
method that writes runs inside the caller's transaction or opens its own; time always comes in as
`now`. Bounds are per attempt, so one chatty trainer cannot crowd out the others (docs/OPERATIONS.md,
section 7, "Logs" and "Retention").
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, NamedTuple

from mqfleet import defaults
from mqfleet.coordinator.sql.connection import one_row
from mqfleet.wire.replies import HostUsage, ProgressPoint
from mqfleet.wire.reports import ProgressReport, Usage
from mqfleet.wire.topics import JsonObject

if TYPE_CHECKING:
    from mqfleet.coordinator.sql.sqlite import StateFile

logger = logging.getLogger(__name__)


#: Output lines held for the next flush at most; past this they are written at once.
QUEUED_LINES_MAX = 5000
#: Attempts whose host is remembered in memory (see known_attempt); the oldest go first past it.
ATTEMPT_HOSTS_KEPT = 10_000
#: A progress report as stored: json.dumps(report, default=str) without building an encoder per report.
_report_json = json.JSONEncoder(default=str).encode


def dropped_marker(count: int, max_lines: int) -> str:
    """The line that stands for the oldest lines dropped from a long log."""
    return f"[mqfleet: {count} earlier line(s) dropped; [fleet] log_max_lines keeps the last {max_lines}]"


class AttemptCounts(NamedTuple):
    """An attempt record's counters: lines stored and dropped, reports seen, and the kept reports' stride."""

    lines_total: int
    lines_dropped: int
    reports_seen: int
    progress_stride: int


class AttemptHistory:
    """Per-attempt output lines, progress and usage, stored beside the job state."""

    def __init__(self, state: StateFile) -> None:
        self.state = state
        #: (job_id, attempt, lines) received but not yet written; see queue_lines()
        self._queued: list[tuple[str, int, list[str]]] = []
        self._queued_lines = 0
        #: Guards the queue alone, so taking a batch never waits for a transaction (order: state lock first).
        self._queue_lock = threading.Lock()
        #: (job_id, attempt) -> the host that ran it: attempts rows never change once written, so a batch
        #: from that host is filed without a query (and without the state lock) on the dispatcher thread.
        self._attempt_hosts: OrderedDict[tuple[str, int], str] = OrderedDict()
        self._attempt_hosts_lock = threading.Lock()

    # --- records ---------------------------------------------------------------------------

    def _touch(self, job_id: str, attempt: int, *, lines: int = 0, usage: Usage | None = None) -> AttemptCounts:
        """The attempt's record (created if new), its line count raised by `lines` and its usage set when
        given; one statement."""
        row = one_row(self.state.conn.execute(
            "INSERT INTO attempt_records (job_id, attempt, lines_total, usage) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (job_id, attempt) DO UPDATE SET lines_total = attempt_records.lines_total + excluded.lines_total, "
            "usage = COALESCE(excluded.usage, attempt_records.usage) "
            "RETURNING lines_total, lines_dropped, reports_seen, progress_stride",
            (job_id, attempt, lines, None if usage is None else json.dumps(usage.to_wire())),
        ))
        return AttemptCounts(int(row[0]), int(row[1]), int(row[2]), int(row[3]))

    # --- output lines ----------------------------------------------------------------------

    def note_attempt(self, job_id: str, attempt: int, host: str) -> None:
        """Remember that `host` runs `attempt` of `job_id` (a claim granted it), for known_attempt()."""
        with self._attempt_hosts_lock:
            self._attempt_hosts[(job_id, attempt)] = host
            self._attempt_hosts.move_to_end((job_id, attempt))
            while len(self._attempt_hosts) > ATTEMPT_HOSTS_KEPT:
                self._attempt_hosts.popitem(last=False)

    def known_attempt(self, job_id: str, host: str, attempt: int | None) -> int | None:
        """`attempt` when memory says `host` ran it, else None (then ask attempt_of_host); no query, no state lock."""
        if attempt is None:
            return None
        with self._attempt_hosts_lock:
            return attempt if self._attempt_hosts.get((job_id, attempt)) == host else None

    def attempt_of_host(self, job_id: str, host: str, attempt: int | None) -> int | None:
        """The attempt that log lines from `host` belong to: the one they name if that host ran it,
        else the host's latest attempt of the job; None when the host ran none (the lines are refused)."""
        c = self.state.conn
        with self.state.lock:
            if attempt is not None:
                row = c.execute(
                    "SELECT number FROM attempts WHERE job_id = ? AND number = ? AND host = ?", (job_id, attempt, host)
                ).fetchone()
            else:
                row = c.execute(
                    "SELECT number FROM attempts WHERE job_id = ? AND host = ? ORDER BY number DESC LIMIT 1", (job_id, host)
                ).fetchone()
        if row is None:
            return None
        self.note_attempt(job_id, int(row[0]), host)
        return int(row[0])

    def queue_lines(self, job_id: str, attempt: int, lines: list[str], max_lines: int) -> None:
        """Take a batch of output lines, written by the next flush_lines(): the service flushes at every
        sweep, in the transaction of a completion or failure, before `logs` reads, and at stop, so one
        commit carries many batches. A kill -9 loses at most one sweep interval of a running
        attempt's lines; an attempt that ended has all its lines on disk."""
        if not lines:
            return
        with self._queue_lock:
            self._queued.append((job_id, attempt, lines))
            self._queued_lines += len(lines)
            full = self._queued_lines >= QUEUED_LINES_MAX
        if full:
            self.flush_lines(max_lines)

    def flush_lines(self, max_lines: int) -> int:
        """Write every queued batch in one transaction; how many batches."""
        with self.state.lock:
            queued = self.take_queued()
            try:
                self.write_batches(queued, max_lines)
            except BaseException:
                self.requeue(queued)
                raise
        return len(queued)

    def take_queued(self) -> list[tuple[str, int, list[str]]]:
        """The queued batches, handed to the caller, who writes them (write_batches) or gives them back."""
        with self._queue_lock:
            queued, self._queued, self._queued_lines = self._queued, [], 0
            return queued

    def requeue(self, batches: list[tuple[str, int, list[str]]]) -> None:
        """Give back batches whose transaction rolled back: they go first, so order is kept."""
        with self._queue_lock:
            self._queued[:0] = batches
            self._queued_lines += sum(len(lines) for _, _, lines in batches)

    def write_batches(self, batches: list[tuple[str, int, list[str]]], max_lines: int) -> None:
        """Write batches in one transaction (the caller's, when one is open)."""
        if batches:
            with self.state.transaction():
                for job_id, attempt, lines in batches:
                    self.append_lines(job_id, attempt, lines, max_lines)

    def append_lines(self, job_id: str, attempt: int, lines: list[str], max_lines: int) -> int:
        """Store lines at the end of an attempt's log, dropping its oldest past `max_lines`; how many dropped now."""
        if not lines:
            return 0
        c = self.state.conn
        with self.state.transaction():
            rec = self._touch(job_id, attempt, lines=len(lines))
            total, dropped_before = rec.lines_total, rec.lines_dropped
            c.execute(
                "INSERT INTO attempt_lines (job_id, attempt, seq, count, lines) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (job_id, attempt, seq) DO UPDATE SET count = excluded.count, lines = excluded.lines",
                (job_id, attempt, total - len(lines) + 1, len(lines), json.dumps(lines)),
            )
            dropped = max(dropped_before, total - max_lines)
            if dropped > dropped_before:
                # whole batches that ended before the bound go; a batch that straddles it is cut on reading
                c.execute(
                    "DELETE FROM attempt_lines WHERE job_id = ? AND attempt = ? AND seq <= ? AND seq + count - 1 <= ?",
                    (job_id, attempt, dropped, dropped),
                )
                c.execute(
                    "UPDATE attempt_records SET lines_dropped = ? WHERE job_id = ? AND attempt = ?", (dropped, job_id, attempt)
                )
        return dropped - dropped_before

    def lines(self, job_id: str, attempt: int, *, offset: int = 0, limit: int | None = None) -> list[str]:
        """An attempt's stored lines, oldest first, after a marker line when its oldest were dropped."""
        c = self.state.conn
        with self.state.lock:
            rec = c.execute(
                "SELECT lines_total, lines_dropped FROM attempt_records WHERE job_id = ? AND attempt = ?", (job_id, attempt)
            ).fetchone()
            if rec is None:
                return []
            rows = c.execute(
                "SELECT seq, lines FROM attempt_lines WHERE job_id = ? AND attempt = ? ORDER BY seq", (job_id, attempt)
            ).fetchall()
        dropped = int(rec["lines_dropped"])
        out: list[str] = []
        for row in rows:
            batch = json.loads(row["lines"])
            skip = max(0, dropped - int(row["seq"]) + 1)
            out.extend(str(line) for line in batch[skip:])
        if rec["lines_dropped"] and out:
            out.insert(0, dropped_marker(rec["lines_dropped"], rec["lines_total"] - rec["lines_dropped"]))
        end = None if limit is None else offset + limit
        return out[offset:end]

    def attempts_with_lines(self, job_id: str) -> list[int]:
        with self.state.lock:
            rows = self.state.conn.execute(
                "SELECT attempt FROM attempt_records WHERE job_id = ? AND lines_total > 0 ORDER BY attempt", (job_id,)
            ).fetchall()
        return [int(r[0]) for r in rows]

    # --- progress --------------------------------------------------------------------------

    def append_progress(self, job_id: str, attempt: int, reports: list[ProgressReport], *,
                        usage: Usage | None = None) -> None:
        """Keep numbered reports (seq, ts, report) not seen before; past the bound, thin the history evenly.
        An ending attempt's `usage` is stored by the same statement that reads its record.

        Thinning keeps every stride-th report: when the stored count passes the bound, every other
        stored one goes and the stride doubles, so old and new parts of the curve stay equally dense.
        The newest report is always kept too, so the curve ends where the training did.
        """
        if not reports and usage is None:
            return
        c = self.state.conn
        cap = defaults.PROGRESS_POINTS_MAX
        with self.state.transaction():
            rec = self._touch(job_id, attempt, usage=usage)
            seen, stride = rec.reports_seen, rec.progress_stride
            fresh = [(seq, ts, r) for seq, ts, r in sorted(reports, key=lambda x: x[0]) if seq > seen]
            if not fresh:
                return
            newest = fresh[-1][0]
            c.executemany(
                "INSERT INTO attempt_progress (job_id, attempt, seq, ts, report) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (job_id, attempt, seq) DO UPDATE SET ts = excluded.ts, report = excluded.report",
                [(job_id, attempt, seq, ts, _report_json(r)) for seq, ts, r in fresh
                 if (seq - 1) % stride == 0 or seq == newest],
            )
            if seen and (seen - 1) % stride != 0:
                # the previous newest was kept only as the newest: now it is just off the stride
                c.execute("DELETE FROM attempt_progress WHERE job_id = ? AND attempt = ? AND seq = ?", (job_id, attempt, seen))
            # at most one kept per stride, plus the newest: count only when that could pass the bound
            if (newest - 1) // stride + 2 > cap:
                count = self._thin(job_id, attempt, stride, newest)
                while count > cap:
                    stride *= 2
                    count = self._thin(job_id, attempt, stride, newest)
            c.execute(
                "UPDATE attempt_records SET reports_seen = ?, progress_stride = ? WHERE job_id = ? AND attempt = ?",
                (newest, stride, job_id, attempt),
            )

    def _thin(self, job_id: str, attempt: int, stride: int, newest: int) -> int:
        """Keep every stride-th report and the newest; the count kept."""
        c = self.state.conn
        c.execute(
            "DELETE FROM attempt_progress WHERE job_id = ? AND attempt = ? AND (seq - 1) % ? != 0 AND seq < ?",
            (job_id, attempt, stride, newest),
        )
        return int(one_row(c.execute(
            "SELECT COUNT(*) FROM attempt_progress WHERE job_id = ? AND attempt = ?", (job_id, attempt)
        ))[0])

    def progress(self, job_id: str) -> list[ProgressPoint]:
        """Every kept report of every attempt, oldest first."""
        with self.state.lock:
            rows = self.state.conn.execute(
                "SELECT attempt, seq, ts, report FROM attempt_progress WHERE job_id = ? ORDER BY attempt, seq", (job_id,)
            ).fetchall()
        return [ProgressPoint(attempt=int(r["attempt"]), seq=int(r["seq"]), ts=float(r["ts"]), report=json.loads(r["report"]))
                for r in rows]

    def last_report(self, job_id: str) -> JsonObject | None:
        """The newest kept report of the job's latest attempt that has any."""
        with self.state.lock:
            row = self.state.conn.execute(
                "SELECT report FROM attempt_progress WHERE job_id = ? ORDER BY attempt DESC, seq DESC LIMIT 1", (job_id,)
            ).fetchone()
        return dict(json.loads(row[0])) if row else None

    # --- usage -----------------------------------------------------------------------------

    def record_usage(self, job_id: str, attempt: int, usage: Usage) -> None:
        """Store what an attempt used (the agent measures it); inside the caller's transaction."""
        with self.state.transaction():
            self._touch(job_id, attempt, usage=usage)

    def usage_of(self, job_id: str) -> dict[int, Usage]:
        """attempt number -> its usage, for the attempts that have one."""
        with self.state.lock:
            rows = self.state.conn.execute(
                "SELECT attempt, usage FROM attempt_records WHERE job_id = ? AND usage IS NOT NULL", (job_id,)
            ).fetchall()
        # stored by record_usage from a checked Usage: built again, not checked again
        return {int(r["attempt"]): Usage(**json.loads(r["usage"])) for r in rows}

    def usage_by_host(self) -> dict[str, HostUsage]:
        """Per host, the usage of every attempt it ran, summed (peaks are the largest, not a sum)."""
        with self.state.lock:
            rows = self.state.conn.execute(
                "SELECT a.host, r.usage FROM attempt_records r JOIN attempts a "
                "ON a.job_id = r.job_id AND a.number = r.attempt WHERE r.usage IS NOT NULL"
            ).fetchall()
        out: dict[str, HostUsage] = {}
        for row in rows:
            u = Usage(**json.loads(row["usage"]))
            total = out.get(row["host"]) or HostUsage()
            gpu = total.gpu_mem_max_bytes
            if u.gpu_mem_max_bytes is not None:
                gpu = max(gpu or 0, u.gpu_mem_max_bytes)
            out[row["host"]] = HostUsage(
                attempts=total.attempts + 1, wall_s=round(total.wall_s + u.wall_s, 3), cpu_s=round(total.cpu_s + u.cpu_s, 3),
                max_rss_bytes=max(total.max_rss_bytes, u.max_rss_bytes), gpu_mem_max_bytes=gpu,
            )
        return out

    # --- retention -------------------------------------------------------------------------

    def prune(self, older_than: float, *, batch_rows: int = defaults.PRUNE_BATCH_ROWS, max_batches: int = 50) -> int:
        """Delete, a small batch per transaction, the lines and progress of attempts of jobs that ended
        before `older_than`, and events older than it; the rows deleted.

        Each batch is its own short transaction, so claims and renewals wait at most one batch.
        A job that is still live (pending, claimed, running) keeps everything.
        """
        c = self.state.conn
        ended = (
            "SELECT id FROM jobs WHERE status IN ('completed', 'failed', 'cancelled') AND updated_ts < ?"
        )
        deleted = 0
        for table in ("attempt_lines", "attempt_progress"):
            for _ in range(max_batches):
                with self.state.transaction():
                    n = c.execute(
                        f"DELETE FROM {table} WHERE (job_id, attempt, seq) IN "
                        f"(SELECT job_id, attempt, seq FROM {table} WHERE job_id IN ({ended}) LIMIT ?)",
                        (older_than, batch_rows),
                    ).rowcount
                deleted += n
                if n < batch_rows:
                    break
        for _ in range(max_batches):
            with self.state.transaction():
                n = c.execute(
                    "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE ts < ? AND seq <= ? ORDER BY seq LIMIT ?)",
                    (older_than, self.state.taken_seq, batch_rows),
                ).rowcount
            deleted += n
            if n < batch_rows:
                break
        if deleted:
            logger.info("retention: pruned %d row(s) of events, logs and progress older than %.0f", deleted, older_than)
        return deleted

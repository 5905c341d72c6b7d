"""Checkpoints that follow a job: the latest verified checkpoint of each job, its verbs, and its store objects.

An agent syncs a running trainer's checkpoint folder as a bundle under a key of its own per job and
content (`checkpoints/{job_id}/{sha256}.tar.zst`); this module hands out the presigned PUT, checks the
uploaded object's sha256, records it as the job's latest checkpoint and puts it in the next attempt's
grant as a presigned GET (docs/INTERNALS.md, "Checkpoints"). The verbs and the sweep that use it
live in `verbs/checkpoints.py`. A replaced or discarded checkpoint's
object is queued as garbage and deleted by the sweep, outside every transaction. Owns the three
`checkpoint*` tables (coordinator/sql/schema.py); it never touches a job's status.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from mqfleet.coordinator.sql.connection import SqlConnection, one_row
from mqfleet.coordinator.sql.sqlite import StateFile
from mqfleet.errors import LeaseLostError
from mqfleet.lifecycle import JobStatus
from mqfleet.wire.replies import CheckpointDetail, CheckpointLatest, CheckpointStartRecord
from mqfleet.wire.topics import JsonObject

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
#: How often the sweep deletes the store objects of replaced and discarded checkpoints.
GARBAGE_INTERVAL_S = 5.0
#: Objects deleted per sweep, so one sweep never holds up lease expiry for long.
GARBAGE_BATCH = 50



@dataclass(frozen=True)
class CheckpointRecord:
    """A job's latest verified checkpoint: as `show` tells it, and its store key (the grant presigns it)."""

    saved: CheckpointLatest
    key: str


class CheckpointBook:
    """The checkpoint tables in the coordinator's state file; every method is one transaction (or joins one)."""

    def __init__(self, state: StateFile) -> None:
        self.state = state
        self.last_garbage_ts = 0.0

    def latest(self, job_id: str) -> CheckpointRecord | None:
        """The job's latest verified checkpoint, with its store key."""
        row = self.state.read_one(
            "SELECT attempt, host, sha256, size, key, saved_ts, progress FROM checkpoints WHERE job_id = ?", (job_id,)
        )
        if row is None:
            return None
        saved = CheckpointLatest(attempt=row["attempt"], sha256=row["sha256"], size=row["size"], saved_ts=row["saved_ts"],
                                 host=row["host"], progress=json.loads(row["progress"]) if row["progress"] else None)
        return CheckpointRecord(saved=saved, key=row["key"])

    def detail(self, job_id: str) -> CheckpointDetail:
        """What `show` tells about a job's checkpoints: the latest (or None) and how its last attempt started."""
        latest = self.latest(job_id)
        starts = self.starts(job_id)
        return CheckpointDetail(latest=latest.saved if latest is not None else None,
                                last_start=starts[-1] if starts else None)

    def starts(self, job_id: str) -> list[CheckpointStartRecord]:
        """How the job's attempts that were given a checkpoint started, oldest first."""
        rows = self.state.read("SELECT attempt, resumed, from_attempt, from_progress, note, ts FROM checkpoint_starts "
                               "WHERE job_id = ? ORDER BY attempt", (job_id,))
        return [
            CheckpointStartRecord(attempt=r["attempt"], resumed=bool(r["resumed"]), ts=r["ts"],
                                  from_attempt=r["from_attempt"], note=r["note"],
                                  from_progress=json.loads(r["from_progress"]) if r["from_progress"] else None)
            for r in rows
        ]

    def check_writer(self, job_id: str, lease_id: str, host: str) -> int:
        """The attempt number a checkpoint from this lease belongs to; LeaseLostError when it may not write one.

        The current lease may always write. So may the attempt whose lease ended last (a final sync after a
        failed renewal races the expiry), and only until the next attempt starts: then its state is still the
        furthest the job got. An older attempt never writes again, whatever happened since.
        """
        with self.state.lock:
            c = self.state.conn
            lease = c.execute("SELECT lease_id, host, attempt FROM leases WHERE job_id = ?", (job_id,)).fetchone()
            if lease is not None and lease["lease_id"] == lease_id and lease["host"] == host:
                return int(lease["attempt"])
            attempt = c.execute(
                "SELECT number FROM attempts WHERE job_id = ? AND lease_id = ? AND host = ?", (job_id, lease_id, host)
            ).fetchone()
            last = one_row(c.execute("SELECT MAX(number) FROM attempts WHERE job_id = ?", (job_id,)))
            job = c.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if attempt is None or job is None or lease is not None:
            raise LeaseLostError(f"lease {lease_id} of {host} is not the current lease of job {job_id}")
        if job["status"] in (JobStatus.COMPLETED.value, JobStatus.CANCELLED.value):
            raise LeaseLostError(f"job {job_id} is {job['status']}; it keeps no checkpoint")
        if attempt["number"] != last[0]:
            raise LeaseLostError(f"job {job_id}: attempt {attempt['number']} ended before attempt {last[0]} "
                                 "started; only the latest attempt may write its checkpoint")
        return int(attempt["number"])

    def record(
        self, job_id: str, *, attempt: int, host: str, sha256: str, size: int, key: str,
        progress: JsonObject | None, now: float,
    ) -> None:
        """Make a verified object the job's latest checkpoint; the one it replaces becomes garbage."""
        with self.state.transaction() as c:
            old = c.execute("SELECT key FROM checkpoints WHERE job_id = ?", (job_id,)).fetchone()
            if old is not None and old["key"] != key:
                _queue_garbage(c, old["key"], now)
            c.execute("DELETE FROM checkpoint_garbage WHERE key = ?", (key,))
            c.execute(
                "INSERT INTO checkpoints (job_id, attempt, host, sha256, size, key, saved_ts, progress) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id) DO UPDATE SET attempt = excluded.attempt, "
                "host = excluded.host, sha256 = excluded.sha256, size = excluded.size, key = excluded.key, "
                "saved_ts = excluded.saved_ts, progress = excluded.progress",
                (job_id, attempt, host, sha256, size, key, now, json.dumps(progress) if progress is not None else None),
            )
        logger.info("job %s: checkpoint of attempt %d saved (%d bytes, sha256 %s)", job_id[:12], attempt, size, sha256[:12])

    def discard(self, job_id: str, now: float, why: str) -> bool:
        """Forget a job's checkpoint (its object becomes garbage); False when it had none."""
        with self.state.transaction() as c:
            old = c.execute("SELECT key FROM checkpoints WHERE job_id = ?", (job_id,)).fetchone()
            if old is None:
                return False
            _queue_garbage(c, old["key"], now)
            c.execute("DELETE FROM checkpoints WHERE job_id = ?", (job_id,))
        logger.info("job %s: checkpoint discarded (%s)", job_id[:12], why)
        return True

    def note_start(
        self, job_id: str, *, attempt: int, resumed: bool, from_attempt: int | None, note: str, now: float,
        from_progress: JsonObject | None = None,
    ) -> None:
        """Remember how an attempt started (resumed from which attempt and progress, or fresh and why)."""
        with self.state.transaction() as c:
            c.execute(
                "INSERT INTO checkpoint_starts (job_id, attempt, resumed, from_attempt, from_progress, note, ts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, attempt) DO UPDATE SET resumed = excluded.resumed, "
                "from_attempt = excluded.from_attempt, from_progress = excluded.from_progress, note = excluded.note, "
                "ts = excluded.ts",
                (job_id, attempt, int(resumed), from_attempt,
                 json.dumps(from_progress) if from_progress is not None else None, note[:1000], now),
            )

    def garbage(self, limit: int = GARBAGE_BATCH) -> list[str]:
        rows = self.state.read("SELECT key FROM checkpoint_garbage ORDER BY since_ts LIMIT ?", (limit,))
        return [r[0] for r in rows]

    def forget_garbage(self, keys: list[str]) -> None:
        with self.state.transaction() as c:
            c.executemany("DELETE FROM checkpoint_garbage WHERE key = ?", [(k,) for k in keys])


def _queue_garbage(c: SqlConnection, key: str, now: float) -> None:
    c.execute("INSERT INTO checkpoint_garbage (key, since_ts) VALUES (?, ?) ON CONFLICT DO NOTHING", (key, now))

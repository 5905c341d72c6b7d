"""The artifacts tables: objects verified in the store (by sha256), and which job produced which."""

from __future__ import annotations

import json

from mqfleet.coordinator.sql.sqlite import StateFile
from mqfleet.wire.published import StoredObject
from mqfleet.wire.replies import ArtifactRecord
from mqfleet.wire.topics import JsonObject


class Artifacts:
    """Verified artifacts and their per-job metadata, in one state file."""

    def __init__(self, state: StateFile) -> None:
        self.state = state

    def record_verified(self, sha256: str, size: int, key: str, now: float) -> None:
        """Remember that the store holds this object with this size and hash (checked by the caller)."""
        with self.state.transaction() as c:
            c.execute(
                "INSERT INTO artifacts (sha256, size, key, verified_ts) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (sha256) DO UPDATE SET size = excluded.size, key = excluded.key, verified_ts = excluded.verified_ts",
                (sha256, size, key, now),
            )

    def record_job_artifact(
        self, job_id: str, sha256: str, size: int, *, host: str, metrics: JsonObject, now: float
    ) -> None:
        """Record that `job_id` produced the verified object `sha256`; its name, model and mode are copied
        from the job, so the record outlives the job's removal from the manifest."""
        with self.state.transaction() as c:
            c.execute(
                "INSERT INTO job_artifacts (job_id, sha256, name, model, mode, host, metrics, size, created_ts) "
                "SELECT id, ?, name, model, mode, ?, ?, ?, ? FROM jobs WHERE id = ? "
                "ON CONFLICT (job_id) DO UPDATE SET sha256 = excluded.sha256, name = excluded.name, "
                "model = excluded.model, mode = excluded.mode, host = excluded.host, metrics = excluded.metrics, "
                "size = excluded.size, created_ts = excluded.created_ts",
                (sha256, host, json.dumps(metrics), size, now, job_id),
            )

    def is_verified(self, sha256: str) -> bool:
        return self.state.read_one("SELECT 1 FROM artifacts WHERE sha256 = ?", (sha256,)) is not None

    def artifact(self, sha256: str) -> StoredObject | None:
        """A verified object, or None."""
        row = self.state.read_one("SELECT sha256, size, key, verified_ts FROM artifacts WHERE sha256 = ?", (sha256,))
        if row is None:
            return None
        return StoredObject(sha256=row["sha256"], size=int(row["size"]), key=row["key"], verified_ts=row["verified_ts"])

    def artifacts(self, job_id: str | None = None) -> list[ArtifactRecord]:
        """Per-job artifact metadata, oldest first; one job's when `job_id` is given."""
        sql = (
            "SELECT ja.sha256, ja.size, a.key, ja.job_id, ja.name, ja.model, ja.mode, ja.host, ja.metrics, ja.created_ts "
            "FROM job_artifacts ja JOIN artifacts a ON a.sha256 = ja.sha256"
        )
        if job_id is None:
            # ties (one instant) in the jobs' order: the same on both engines, where a physical row order is not
            rows = self.state.read(f"{sql} LEFT JOIN jobs j ON j.id = ja.job_id ORDER BY ja.created_ts, j.seq, ja.job_id")
        else:
            rows = self.state.read(f"{sql} WHERE ja.job_id = ?", (job_id,))
        return [
            ArtifactRecord(sha256=r["sha256"], size=r["size"], key=r["key"], job_id=r["job_id"], name=r["name"],
                           model=r["model"], mode=r["mode"], host=r["host"], metrics=json.loads(r["metrics"]),
                           created_ts=r["created_ts"])
            for r in rows
        ]

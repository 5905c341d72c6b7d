"""Which pending jobs a claim may consider: the `jobs.blocked` flag, kept by the writers that change
what it depends on (a manifest load, a completion, a requeue, a restore), and the dependency edges.
Claims read it through the `jobs_claim` and `jobs_claim_key` indexes (coordinator/tables/claim_walk.py)."""

from __future__ import annotations

from collections.abc import Iterable

from mqfleet.coordinator.sql.connection import SqlConnection

#: `jobs.blocked`: claimable by any host that fits ...
OPEN = 0
#: ... by no host (it left the manifest, or a dependency has not completed) ...
BLOCKED = 1
#: ... or only by the hosts of its allowed_hosts (rows of `job_hosts`), which claims walk apart, so a
#: host never reads the jobs limited to others (the `jobs_claim_key` index starts with status, blocked).
HOST_LIMITED = 2


def refresh_blocked(conn: SqlConnection, job_ids: Iterable[str] | None = None) -> None:
    """Recompute `blocked` (OPEN, BLOCKED or HOST_LIMITED) for some jobs, or all."""
    expr = (
        f"CASE WHEN in_manifest = 0 OR EXISTS (SELECT 1 FROM deps d LEFT JOIN jobs a ON a.id = d.after_id "
        f"WHERE d.job_id = jobs.id AND (a.status IS NULL OR a.status != 'completed')) THEN {BLOCKED} "
        f"WHEN EXISTS (SELECT 1 FROM job_hosts h WHERE h.job_id = jobs.id) THEN {HOST_LIMITED} ELSE {OPEN} END"
    )
    if job_ids is None:
        # rewrite only rows whose flag changes, so a reload of an unchanged manifest writes nothing
        conn.execute(f"UPDATE jobs SET blocked = ({expr}) WHERE blocked != ({expr})")
        return
    ids = list(job_ids)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        conn.execute(f"UPDATE jobs SET blocked = ({expr}) WHERE id IN ({','.join('?' * len(chunk))})", chunk)


def dependents(conn: SqlConnection, job_id: str) -> list[str]:
    return [r[0] for r in conn.execute("SELECT job_id FROM deps WHERE after_id = ?", (job_id,))]

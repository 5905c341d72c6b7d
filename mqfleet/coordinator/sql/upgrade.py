"""What opening a state store of an older schema does to it, inside the schema's transaction
(`schema.check_schema_version`), and the `jobs.req_key` values kept equal to the specs they digest.

Both engines run the same statements (PostgreSQL through `pgconnection`'s translation). Every step
is idempotent: a crash between two opens leaves a store the next open finishes upgrading.
"""

from __future__ import annotations

import json
import logging

from mqfleet.coordinator.sql.connection import SqlConnection
from mqfleet.manifest.types import REQUIREMENT_FIELDS, requirements_key_of

logger = logging.getLogger(__name__)

#: Jobs read per statement while re-keying.
_REKEY_BATCH = 1000


def upgrade(conn: SqlConnection, found: int, where: str) -> None:
    """Bring a store of schema version `found` to the current one (`schema.SCHEMA_VERSION`)."""
    if found < 2:
        _to_version_2(conn)
    logger.info("state at %s: schema upgraded from version %d", where, found)


def _to_version_2(conn: SqlConnection) -> None:
    """Version 2 (issue 25): `jobs.req_key`, and the hosts a retry avoids as `jobs.failed_hosts` instead of
    `retries.failed_hosts`, both in the claim's index `jobs_claim_key`."""
    jobs = conn.columns("jobs")
    if "req_key" not in jobs:
        conn.execute("ALTER TABLE jobs ADD COLUMN req_key TEXT NOT NULL DEFAULT ''")
    if "failed_hosts" not in jobs:
        conn.execute("ALTER TABLE jobs ADD COLUMN failed_hosts TEXT NOT NULL DEFAULT '[]'")
    conn.execute("DELETE FROM requirement_keys")  # every job is keyed again by refresh_requirement_keys
    if "failed_hosts" in conn.columns("retries"):
        # sorted: jobs that failed on the same hosts are one set of the claim's, whatever the order of failures
        conn.executemany("UPDATE jobs SET failed_hosts = ? WHERE id = ?",
                         [(json.dumps(sorted(json.loads(r[1] or "[]"))), r[0])
                          for r in conn.execute("SELECT job_id, failed_hosts FROM retries").fetchall()])
        conn.execute("ALTER TABLE retries DROP COLUMN failed_hosts")


def refresh_requirement_keys(conn: SqlConnection) -> int:
    """Make every job's `req_key` again when the stored keys were made from other Requirements fields
    than this mqfleet's (or by a version without keys); the number of jobs whose key changed.

    A key groups jobs that every host rule judges alike; keys made from other fields could group
    jobs that a rule added since tells apart, and a claim would judge them as one."""
    fields = ",".join(REQUIREMENT_FIELDS)
    row = conn.execute("SELECT fields FROM requirement_keys WHERE id = 1").fetchone()
    if row is not None and row[0] == fields:
        return 0
    changed, after = 0, -1
    while rows := conn.execute("SELECT seq, spec, req_key FROM jobs WHERE seq > ? ORDER BY seq LIMIT ?",
                               (after, _REKEY_BATCH)).fetchall():
        updates = [(key, r[0]) for r in rows if (key := requirements_key_of(json.loads(r[1]))) != r[2]]
        conn.executemany("UPDATE jobs SET req_key = ? WHERE seq = ?", updates)
        changed += len(updates)
        after = rows[-1][0]
    conn.execute("DELETE FROM requirement_keys")
    conn.execute("INSERT INTO requirement_keys (id, fields) VALUES (1, ?)", (fields,))
    if changed:
        logger.info("requirement keys of %d jobs made again (fields: %s)", changed, fields)
    return changed


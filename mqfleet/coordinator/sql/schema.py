"""The tables of the coordinator's state store and its schema version, the same on both engines
(`sqliteconnection.SqliteConnection.open` runs them on an SQLite file, `postgres.PgStateFile` on
PostgreSQL through `pgdialect.translate_ddl`).

The code that reads and writes each table lives in the module of its noun
(docs/INTERNALS.md); the job row's columns are in `coordinator/tables/rows.py`.
"""

from __future__ import annotations

from mqfleet.coordinator.sql import upgrade
from mqfleet.coordinator.sql.connection import SqlConnection
from mqfleet.errors import SchemaVersionError

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order: the age tie-break
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    model TEXT NOT NULL,
    mode TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    host TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,     -- attempts that count against the budget
    attempt_seq INTEGER NOT NULL DEFAULT 0,  -- every attempt ever granted: the grant's number
    max_attempts INTEGER NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    prefer_cuda INTEGER NOT NULL DEFAULT 0,
    require_cuda INTEGER NOT NULL DEFAULT 0,
    min_vram_gib REAL NOT NULL DEFAULT 0,
    min_ram_gib REAL NOT NULL DEFAULT 0,
    req_key TEXT NOT NULL DEFAULT '',        -- Requirements.key: a claim judges each set once (coordinator/tables/claim_walk.py)
    failed_hosts TEXT NOT NULL DEFAULT '[]', -- hosts whose attempts failed, sorted: its retry avoids them (tables/faults.py)
    blocked INTEGER NOT NULL DEFAULT 0,      -- 1: a job-level reason keeps it from every host; 2: allowed_hosts only (coordinator/tables/catalog.py)
    in_manifest INTEGER NOT NULL DEFAULT 1,
    artifact TEXT,
    error TEXT,
    progress TEXT,
    created_ts REAL NOT NULL,
    updated_ts REAL NOT NULL
);
-- a claim first looks at the best-ranked open job (coordinator/tables/claim_walk.py): for hosts without and with CUDA
CREATE INDEX IF NOT EXISTS jobs_claim ON jobs (status, blocked, priority DESC, seq);
CREATE INDEX IF NOT EXISTS jobs_claim_cuda ON jobs (status, blocked, priority DESC, prefer_cuda DESC, seq);
CREATE INDEX IF NOT EXISTS jobs_name ON jobs (name);

CREATE TABLE IF NOT EXISTS deps (
    job_id TEXT NOT NULL,
    after_id TEXT NOT NULL,
    PRIMARY KEY (job_id, after_id)
);
CREATE INDEX IF NOT EXISTS deps_after ON deps (after_id);

CREATE TABLE IF NOT EXISTS leases (
    job_id TEXT PRIMARY KEY,  -- at most one live lease per job
    lease_id TEXT NOT NULL UNIQUE,
    host TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    gpus TEXT NOT NULL,
    granted_ts REAL NOT NULL,
    expires_ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_expiry ON leases (expires_ts);
CREATE INDEX IF NOT EXISTS leases_host ON leases (host);

CREATE TABLE IF NOT EXISTS attempts (
    job_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    host TEXT NOT NULL,
    lease_id TEXT NOT NULL,
    started_ts REAL NOT NULL,
    ended_ts REAL,
    outcome TEXT,  -- completed, or the cause of the end; NULL while live
    cause TEXT,  -- the outcome again when not completed, as older versions wrote it; no longer written nor read
    exit_code INTEGER,
    output_tail TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, number)
);

CREATE TABLE IF NOT EXISTS hosts (
    id TEXT PRIMARY KEY,
    advert TEXT NOT NULL DEFAULT '{}',
    online INTEGER NOT NULL DEFAULT 0,
    draining INTEGER NOT NULL DEFAULT 0,
    last_seen_ts REAL
);

CREATE TABLE IF NOT EXISTS artifacts (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    key TEXT NOT NULL,
    verified_ts REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS job_artifacts (
    job_id TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    name TEXT NOT NULL,
    model TEXT NOT NULL,
    mode TEXT NOT NULL,
    host TEXT NOT NULL,
    metrics TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_ts REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    job_id TEXT NOT NULL,
    from_status TEXT,
    to_status TEXT NOT NULL,
    reason TEXT NOT NULL,
    host TEXT
);

-- jobs whose last attempt failed (docs/RELIABILITY.md, "Jobs that misbehave"); gone on completion or requeue
CREATE TABLE IF NOT EXISTS retries (
    job_id TEXT PRIMARY KEY,
    not_before_ts REAL NOT NULL              -- retry back-off: not claimable before this
);
CREATE INDEX IF NOT EXISTS retries_not_before ON retries (not_before_ts);
-- the Requirements fields the stored jobs.req_key values were made from (spec.REQUIREMENT_FIELDS)
CREATE TABLE IF NOT EXISTS requirement_keys (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    fields TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS host_faults (
    host TEXT PRIMARY KEY,
    streak TEXT NOT NULL DEFAULT '[]',  -- the host's latest consecutive failed attempts (job, cause, ts)
    quarantined_ts REAL,                -- set while quarantined: the host claims nothing until undrained
    reason TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS host_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    host TEXT NOT NULL,
    kind TEXT NOT NULL,  -- quarantined, released
    reason TEXT NOT NULL,
    jobs TEXT NOT NULL
);

-- allowed_hosts of the jobs that have one, so a claim skips in SQL what the claimer may not run
CREATE TABLE IF NOT EXISTS job_hosts (
    job_id TEXT NOT NULL,
    host TEXT NOT NULL,
    PRIMARY KEY (job_id, host)
);
CREATE INDEX IF NOT EXISTS job_hosts_host ON job_hosts (host, job_id);

-- which jobs each [[sweeps]] entry of the manifest in force made (compare --sweep); rewritten by every apply
CREATE TABLE IF NOT EXISTS sweep_jobs (
    sweep TEXT NOT NULL,
    job_id TEXT NOT NULL,
    PRIMARY KEY (sweep, job_id)
);

-- the digest of the retained jobs/{id}/state last published (coordinator/republish.py)
CREATE TABLE IF NOT EXISTS published_states (
    job_id TEXT PRIMARY KEY,
    digest TEXT NOT NULL
);

-- the manifest in force without its jobs, for a restart on an unchanged file (coordinator/tables/manifest_memo.py)
CREATE TABLE IF NOT EXISTS manifest_in_force (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    digest TEXT NOT NULL,
    header BLOB NOT NULL,
    jobs INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY,
    reply TEXT NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS replies_ts ON replies (ts);

-- what each attempt left behind (coordinator/tables/history.py): output lines, progress, usage
CREATE TABLE IF NOT EXISTS attempt_lines (
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    seq INTEGER NOT NULL,    -- number of the batch's first line; 1 for the attempt's first line ever received
    count INTEGER NOT NULL,  -- lines in the batch
    lines TEXT NOT NULL,     -- a JSON array of strings: one row per batch, so a batch costs one insert
    PRIMARY KEY (job_id, attempt, seq)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS attempt_progress (
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    seq INTEGER NOT NULL,  -- the agent's number for the report, 1 for the first
    ts REAL NOT NULL,
    report TEXT NOT NULL,
    PRIMARY KEY (job_id, attempt, seq)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS attempt_records (
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    lines_total INTEGER NOT NULL DEFAULT 0,    -- lines ever received
    lines_dropped INTEGER NOT NULL DEFAULT 0,  -- the oldest ones, dropped past log_max_lines
    reports_seen INTEGER NOT NULL DEFAULT 0,   -- highest report number received
    progress_stride INTEGER NOT NULL DEFAULT 1,  -- only every stride-th report is kept
    usage TEXT,
    PRIMARY KEY (job_id, attempt)

);

-- every applied manifest, newest last: the newest is the one in force (coordinator/tables/manifests.py)
CREATE TABLE IF NOT EXISTS manifests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    text TEXT NOT NULL,
    source TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    applied_ts REAL NOT NULL,
    origin TEXT NOT NULL  -- file: the coordinator's own --manifest; sent: reload --file
);
CREATE TABLE IF NOT EXISTS checkpoints (
    job_id TEXT PRIMARY KEY,       -- the job's latest verified checkpoint
    attempt INTEGER NOT NULL,      -- the attempt that saved it
    host TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    key TEXT NOT NULL,
    saved_ts REAL NOT NULL,
    progress TEXT                  -- the trainer's latest progress when it was saved (JSON), for `show`
);
CREATE TABLE IF NOT EXISTS checkpoint_starts (
    job_id TEXT NOT NULL,          -- how each attempt given a checkpoint started: resumed, or fresh and why
    attempt INTEGER NOT NULL,
    resumed INTEGER NOT NULL,
    from_attempt INTEGER,
    from_progress TEXT,            -- the progress the checkpoint it resumed from was saved at (JSON)
    note TEXT NOT NULL,
    ts REAL NOT NULL,
    PRIMARY KEY (job_id, attempt)
);
CREATE TABLE IF NOT EXISTS checkpoint_garbage (
    key TEXT PRIMARY KEY,          -- store objects to delete
    since_ts REAL NOT NULL
);
"""

#: The schema's version: raise it with every change an older mqfleet would misread, and migrate in
#: `upgrade.upgrade`. A state database of a newer version is refused, never written.
#: 2: `jobs.req_key` and `jobs.failed_hosts` (moved from `retries`) with the `jobs_claim_key` index, and
#: `requirement_keys` (issue 25).
SCHEMA_VERSION = 2

VERSION_SCHEMA = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);"

#: Indexes over columns an upgrade adds to an older store: made by `check_schema_version` once they exist.
#: A claim seeks each set of jobs that every rule judges alike, then the set's best-ranked job (coordinator/tables/claim_walk.py).
LATE_INDEXES = (
    "CREATE INDEX IF NOT EXISTS jobs_claim_key ON jobs (status, blocked, req_key, failed_hosts, priority DESC, seq)",
)


def check_schema_version(conn: SqlConnection, where: str) -> int:
    """Inside the schema's transaction: stamp a new database with SCHEMA_VERSION, upgrade an older one, or
    refuse a newer one; then make the `req_key` of every job again if its fields changed. The version found."""
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    found = int(row[0]) if row and row[0] is not None else None
    if found is not None and found > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"the state at {where} has schema version {found}, written by a newer mqfleet; this one knows "
            f"version {SCHEMA_VERSION}: run the newer mqfleet (or migrate into a fresh database)"
        )
    if found is not None and found < SCHEMA_VERSION:
        upgrade.upgrade(conn, found, where)
    if found != SCHEMA_VERSION:
        conn.execute("DELETE FROM schema_version")
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
    for index in LATE_INDEXES:
        conn.execute(index)
    upgrade.refresh_requirement_keys(conn)
    return SCHEMA_VERSION if found is None else found


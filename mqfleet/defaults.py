"""Every default and environment variable name in one place."""

from __future__ import annotations

#: Topic prefix under which everything mqfleet publishes lives.
TOPIC_PREFIX = "mqfleet"
#: Broker URL used when neither --broker nor MQFLEET_BROKER is given.
BROKER_URL = "mqtt://127.0.0.1:1883"

#: A job is failed after this many counted attempts (a hand-back, `preempted` or `shutdown`, never counts).
MAX_ATTEMPTS = 3
#: A lease not renewed for this long expires and its attempt ends as `lost`.
LEASE_S = 90.0
#: The retry back-off doubles per counted attempt up to this (or `retry_backoff_s`, if larger).
RETRY_BACKOFF_MAX_S = 600.0
#: After a host's will says offline, its leases expire this soon unless it returns.
GRACE_S = 10.0
#: How often an agent renews each lease; a third of the lease keeps two spare renewals.
RENEW_FRACTION = 1 / 3
#: How often an agent republishes its retained status as a heartbeat.
HEARTBEAT_S = 10.0
#: MQTT keepalive; the broker notices a silent client after 1.5x this.
KEEPALIVE_S = 5
#: How long an agent's persistent session outlives a disconnect, so queued cancels still arrive.
SESSION_EXPIRY_S = 3600
#: Seconds a CLI or agent waits for a coordinator reply.
REQUEST_TIMEOUT_S = 10.0
#: Seconds a trainer has between SIGTERM and the kill of its process tree.
KILL_GRACE_S = 5.0
#: Seconds an agent stopped by SIGTERM lets running trainers finish before handing them back.
SHUTDOWN_GRACE_S = 30.0
#: How often the coordinator sweeps expired leases.
SWEEP_INTERVAL_S = 1.0
#: How long the coordinator remembers request ids to answer redeliveries.
REQUEST_MEMORY_S = 3600.0
#: Lines of trainer output kept as an attempt's tail.
OUTPUT_TAIL_LINES = 50
#: Remembered replies kept per sender (`role/client`), oldest forgotten first; a busy agent sends a few
#: thousand remembered requests an hour, and only a redelivery within seconds needs one.
REPLIES_PER_CLIENT = 5000
#: Largest request payload the coordinator accepts.
MAX_REQUEST_BYTES = 256 * 1024
#: Largest reply a client accepts (a `jobs` listing of a big fleet is megabytes).
MAX_REPLY_BYTES = 256 * 1024 * 1024
#: A presigned upload URL outlives the lease it serves by this much, and never lasts longer than the max:
#: S3 checks expiry when the PUT starts, so this only has to cover the time to the start of the upload.
UPLOAD_URL_SLACK_S = 120.0
UPLOAD_URL_MAX_S = 3600.0
#: How long a presigned download URL (`fetch`) stays valid; the CLI starts the download at once.
DOWNLOAD_URL_EXPIRES_S = 600
#: How often an agent syncs a changed checkpoint folder to the store ([fleet] checkpoint_interval_s).
CHECKPOINT_INTERVAL_S = 300.0
#: The shortest sync interval an agent keeps, whatever a manifest asks (the coordinator paces URLs by it too).
CHECKPOINT_INTERVAL_MIN_S = 0.1
#: A checkpoint folder larger than this many MiB is not synced ([fleet] checkpoint_max_mib).
CHECKPOINT_MAX_MIB = 2048.0
#: Longest an agent spends on the final checkpoint sync of an attempt that ends without completing.
CHECKPOINT_FINAL_SYNC_S = 120.0
#: Largest manifest sent over `reload --file`.
MAX_MANIFEST_BYTES = 2 * 1024 * 1024
#: Characters of one attempt's output stored in full; past it each further line is cut to
#: LOG_LINE_CHARS_PAST_BUDGET, which bounds an attempt's stored log by size as well as by line count.
LOG_BYTES_PER_ATTEMPT = 16 * 1024 * 1024
LOG_LINE_CHARS_PAST_BUDGET = 500
#: Trainer output lines the coordinator keeps per attempt ([fleet] log_max_lines); older ones are dropped.
LOG_MAX_LINES = 20_000
#: Days the coordinator keeps events, logs and progress of ended jobs ([fleet] keep_days).
KEEP_DAYS = 30.0
#: Progress reports kept per attempt; past this the history is thinned evenly (every other one dropped).
PROGRESS_POINTS_MAX = 500
#: Rows one retention batch deletes; each batch is its own short transaction.
PRUNE_BATCH_ROWS = 2000
#: Host the coordinator's Prometheus endpoint binds to unless --metrics-host says otherwise.
METRICS_HOST = "127.0.0.1"
#: Host the web dashboard (`--web-port`) binds to unless --web-host says otherwise.
WEB_HOST = "127.0.0.1"
#: Live event streams the dashboard keeps open at most (--web-max-streams); past it a stream is refused with 503.
WEB_MAX_STREAMS = 1000
#: Live event streams one client address may hold open; past it a stream is refused with 429.
WEB_MAX_STREAMS_PER_CLIENT = 32

ENV_BROKER = "MQFLEET_BROKER"
ENV_OPERATOR_TOKEN = "MQFLEET_OPERATOR_TOKEN"
ENV_TOPIC_PREFIX = "MQFLEET_PREFIX"
ENV_CA = "MQFLEET_CA"
ENV_CERT = "MQFLEET_CERT"
ENV_KEY = "MQFLEET_KEY"
ENV_STORE = "MQFLEET_STORE"
ENV_S3_ENDPOINT = "MQFLEET_S3_ENDPOINT"
ENV_S3_ACCESS_KEY = "AWS_ACCESS_KEY_ID"
ENV_S3_SECRET_KEY = "AWS_SECRET_ACCESS_KEY"
ENV_S3_SECURE = "MQFLEET_S3_SECURE"
#: `LOW-HIGH`: the local services (mqfleet/local/) take their ports from this range only (parallel test workers).
ENV_LOCAL_PORTS = "MQFLEET_LOCAL_PORTS"

#: The agent's settings when its flags are not given (`--host-id`, `--slots`, `--work-dir`, `--repo`, `--trainer-user`).
ENV_HOST_ID = "MQFLEET_HOST_ID"
ENV_SLOTS = "MQFLEET_SLOTS"
ENV_WORK_DIR = "MQFLEET_WORK_DIR"
ENV_REPO = "MQFLEET_REPO"
ENV_TRAINER_USER = "MQFLEET_TRAINER_USER"
#: The agent's `--config`: the machine owner's agent.toml (docs/OPERATIONS.md, "Owner policies").
ENV_AGENT_CONFIG = "MQFLEET_AGENT_CONFIG"
#: The agent's `--log-file`.
ENV_LOG_FILE = "MQFLEET_LOG_FILE"
#: A log level (DEBUG, INFO, WARNING, ...) that overrides what -v/-q chose.
ENV_LOG_LEVEL = "MQFLEET_LOG_LEVEL"
#: The PostgreSQL password, for a `--db` URL that carries none (PGPASSWORD works too).
ENV_DB_PASSWORD = "MQFLEET_DB_PASSWORD"
#: A file whose first line is the PostgreSQL password (`--db-password-file`).
ENV_DB_PASSWORD_FILE = "MQFLEET_DB_PASSWORD_FILE"
#: The soak's `hang` fault: the folder where it names the jobs whose trainer must stop printing.
ENV_SOAK_HANG_DIR = "MQFLEET_SOAK_HANG_DIR"

#: A trainer's stdout line of this, blanks, then a JSON object reports progress and metrics (docs/INTERNALS.md,
#: "Trainers"); the agent reads it, the trainers write it.
PROGRESS_PREFIX = "@mqfleet"

#: Environment the agent gives each trainer.
ENV_SPEC = "MQFLEET_SPEC"
ENV_OUT_DIR = "MQFLEET_OUT_DIR"
#: The trainer's checkpoint folder: empty on a first attempt, the job's latest checkpoint on a later one.
ENV_CHECKPOINT_DIR = "MQFLEET_CHECKPOINT_DIR"

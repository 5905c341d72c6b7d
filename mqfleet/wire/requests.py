"""Typed messages of the agent verbs: frozen dataclasses, each with `to_wire()` and `from_wire()`.

The JSON is the one documented in docs/INTERNALS.md ("Wire payloads"); a unit test
(`tests/unit/test_wire_doc.py`) holds the doc's field lists to these classes. `from_wire`
(mqfleet/wire/codec.py) is strict on the types of the fields it knows, and raises BadRequestError
naming the field; it ignores fields it does not know, so a newer sender (more fields) still
talks to an older reader. New fields are added with a default, never renamed or removed.
Free-form JSON (hyperparameters, progress, metrics, a job's spec) is a `JsonObject`.
"""

from __future__ import annotations

import dataclasses

from mqfleet.lifecycle import Cause
from mqfleet.wire.codec import LONG_TEXT, OMIT_NULL, WireMessage
from mqfleet.wire.topics import JsonObject, JsonValue

# --- claim ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainerRef(WireMessage):
    """The grant's `trainer`: how the agent starts it (`argv`, resolved by the coordinator)."""

    name: str
    builtin: str | None = None
    command: list[str] = dataclasses.field(default_factory=list)
    argv: list[str] = dataclasses.field(default_factory=list)
    hyper: JsonObject = dataclasses.field(default_factory=dict)
    outputs: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class JobRow(WireMessage):
    """A job as `jobs`, `job`, the retained `jobs/{id}/state` and the grant show it."""

    id: str
    name: str
    status: str
    model: str = ""
    mode: str = ""
    host: str | None = None
    #: attempts charged to the budget (`max_attempts`): the same as `attempts_charged`, kept for older readers
    attempts: int = 0
    max_attempts: int = 0
    priority: int = 0
    artifact: str | None = None
    error: str | None = None
    in_manifest: bool = True
    progress: JsonObject | None = None
    created_ts: float | None = None
    updated_ts: float | None = None
    lease_expires_ts: float | None = None
    #: the spec's limits (null: none), when a pending job's retry back-off ends, and a dependency that failed
    timeout_s: float | None = None
    stall_s: float | None = None
    retry_after_ts: float | None = None
    unsatisfied: str | None = dataclasses.field(default=None, metadata=LONG_TEXT)
    #: every attempt ever granted (the entries of `show`'s `attempts_detail`), and those charged to the budget
    #: since the last requeue: neither the attempt that completes nor a hand-back at shutdown is charged
    attempts_started: int = 0
    attempts_charged: int = 0


@dataclasses.dataclass(frozen=True)
class GrantedCheckpoint(WireMessage):
    """The grant's `checkpoint`: the job's latest saved checkpoint, restored before the trainer starts."""

    url: str  # a presigned GET
    sha256: str
    size: int
    attempt: int | None = None
    saved_ts: float | None = None
    progress: JsonObject | None = None


@dataclasses.dataclass(frozen=True)
class Grant(WireMessage):
    """A claim's `job`: the lease on one job and everything the agent needs to run it."""

    job: JobRow
    #: the job's spec as the manifest made it; the agent writes it whole to the trainer's spec.json
    spec: JsonObject
    trainer: TrainerRef
    lease_id: str
    attempt: int
    expires_ts: float
    lease_s: float
    gpus: list[int] = dataclasses.field(default_factory=list)
    resumable: bool = False
    checkpoint_interval_s: float | None = None
    checkpoint_max_mib: float | None = None
    checkpoint: GrantedCheckpoint | None = None


@dataclasses.dataclass(frozen=True)
class ClaimReply(WireMessage):
    """The reply to `claim`: a grant, or null when there is no work for this host."""

    job: Grant | None = None


# --- the lease's verbs ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RenewRequest(WireMessage):
    job_id: str
    lease_id: str
    progress: JsonObject | None = None
    progress_reports: JsonValue = None  # `[seq, ts, report]` triples; coordinator/verbs/reports.py skips bad ones, never fails


@dataclasses.dataclass(frozen=True)
class RenewReply(WireMessage):
    expires_ts: float


@dataclasses.dataclass(frozen=True)
class UploadUrlRequest(WireMessage):
    job_id: str
    lease_id: str
    sha256: str
    size: int


@dataclasses.dataclass(frozen=True)
class UploadUrlReply(WireMessage):
    """Either the object is stored already (`exists`), or a presigned upload to this lease's staging key: a PUT,
    or (S3) a POST of the form `fields` whose signed policy lets the store take exactly `size` bytes."""

    exists: bool
    key: str = ""
    url: str | None = None
    method: str | None = None
    upload_key: str | None = None
    expires_s: int | None = None
    fields: dict[str, str] | None = dataclasses.field(default=None, metadata=OMIT_NULL)


@dataclasses.dataclass(frozen=True)
class CompleteRequest(WireMessage):
    job_id: str
    lease_id: str
    sha256: str
    size: int
    metrics: JsonObject = dataclasses.field(default_factory=dict)
    output_tail: str = dataclasses.field(default="", metadata=LONG_TEXT)
    #: `{wall_s, cpu_s, max_rss_bytes, gpu_mem_max_bytes}` (agent/usage.py), sent once measured; checked by
    #: coordinator/tables/history.py check_usage, as history, not the request's business
    usage: JsonValue = dataclasses.field(default=None, metadata=OMIT_NULL)
    progress_reports: JsonValue = None  # `[seq, ts, report]` triples; coordinator/verbs/reports.py skips bad ones, never fails


@dataclasses.dataclass(frozen=True)
class FailRequest(WireMessage):
    job_id: str
    lease_id: str
    cause: str = Cause.APP.value
    exit_code: int | None = None
    output_tail: str = dataclasses.field(default="", metadata=LONG_TEXT)
    error: str = dataclasses.field(default="", metadata=LONG_TEXT)
    #: `{wall_s, cpu_s, max_rss_bytes, gpu_mem_max_bytes}` (agent/usage.py), sent once measured; checked by
    #: coordinator/tables/history.py check_usage, as history, not the request's business
    usage: JsonValue = dataclasses.field(default=None, metadata=OMIT_NULL)
    progress_reports: JsonValue = None  # `[seq, ts, report]` triples; coordinator/verbs/reports.py skips bad ones, never fails


@dataclasses.dataclass(frozen=True)
class StatusReply(WireMessage):
    """The reply to `complete` and `fail`: the status the job moved to."""

    status: str


# --- checkpoint verbs (agent) ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CheckpointUploadRequest(WireMessage):
    """`checkpoint_url`: a presigned upload for this lease's checkpoint bundle of `size` bytes."""

    job_id: str
    lease_id: str
    sha256: str
    size: int


@dataclasses.dataclass(frozen=True)
class CheckpointSavedRequest(WireMessage):
    job_id: str
    lease_id: str
    sha256: str
    size: int
    progress: JsonObject | None = None


@dataclasses.dataclass(frozen=True)
class CheckpointStartRequest(WireMessage):
    """How an attempt started: resumed from its grant's checkpoint, or fresh and why."""

    job_id: str
    lease_id: str
    resumed: bool
    note: str = ""
    from_attempt: int | None = dataclasses.field(default=None, metadata=OMIT_NULL)
    rejected_sha256: str | None = dataclasses.field(default=None, metadata=OMIT_NULL)


# --- what agents publish outside requests (docs/INTERNALS.md, "Topics"; the coordinator's: wire/published.py) ---


@dataclasses.dataclass(frozen=True)
class HostStatus(WireMessage):
    """An agent's retained `hosts/{host}/status`; its will is the bare `{"state": "offline"}`."""

    state: str  # online or offline
    ts: float | None = dataclasses.field(default=None, metadata=OMIT_NULL)
    jobs: list[str] | None = dataclasses.field(default=None, metadata=OMIT_NULL)
    slots: int | None = dataclasses.field(default=None, metadata=OMIT_NULL)


@dataclasses.dataclass(frozen=True)
class LogBatch(WireMessage):
    """Trainer output lines on `hosts/{host}/log/{job_id}`; `attempt` files late lines under the right one."""

    job_id: str
    lines: list[str]
    ts: float
    attempt: int | None = dataclasses.field(default=None, metadata=OMIT_NULL)


# --- query verbs -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class JobsRequest(WireMessage):
    """One page of the jobs listing (docs/CLI.md, `jobs`)."""

    status: str | None = None
    name: str | None = None
    order: str = "oldest"
    limit: int | None = None
    after: int | None = None
    offset: int = 0
    #: false once the client knows the total: counting walks every matching row
    count: bool = True


@dataclasses.dataclass(frozen=True)
class LogsRequest(WireMessage):
    job: str
    attempt: int | None = None
    offset: int = 0
    limit: int | None = None


@dataclasses.dataclass(frozen=True)
class CompareRequest(WireMessage):
    """Either `jobs` (references) or `sweep` (a sweep's name)."""

    jobs: list[str] | None = None
    sweep: str | None = None


# --- operator verbs (the `auth` signature is checked, and ignored here, by the service) ---------------


@dataclasses.dataclass(frozen=True)
class JobRefRequest(WireMessage):
    """`cancel` (and the query verbs that name one job): a job by id, unique id prefix or name."""

    job: str


@dataclasses.dataclass(frozen=True)
class RequeueRequest(WireMessage):
    job: str
    #: also delete the job's checkpoint, so the next attempt starts from scratch
    fresh: bool = False


@dataclasses.dataclass(frozen=True)
class ReloadRequest(WireMessage):
    """Reload the manifest file, or apply the TOML text sent (`source` names it in messages)."""

    manifest: str | None = dataclasses.field(default=None, metadata={"long_text": True})
    source: str = "<sent by operator>"


@dataclasses.dataclass(frozen=True)
class HostRequest(WireMessage):
    """`drain` and `undrain`."""

    host: str


@dataclasses.dataclass(frozen=True)
class GcRequest(WireMessage):
    dry_run: bool = False


# --- health ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CheckResult(WireMessage):
    """One health check (coordinator/health.py): whether it passed, what it found, and when it ran."""

    ok: bool
    detail: str
    checked_ts: float


@dataclasses.dataclass(frozen=True)
class CoordinatorPeer(WireMessage):
    """One coordinator sharing the state (coordinator/tables/peers.py); `role` is `gone` for a stale heartbeat."""

    id: str
    host: str
    version: str
    role: str
    started_ts: float
    heartbeat_ts: float
    alive: bool


@dataclasses.dataclass(frozen=True)
class Health(WireMessage):
    """The `health` reply and the retained `coordinator/status`: what the checks found (their content is
    coordinator/health.py's), the manifest in force, counts, and the coordinators sharing the state."""

    state: str
    ts: float
    version: str = ""
    started_ts: float | None = None
    uptime_s: float | None = None
    manifest: str | None = None
    manifest_jobs: int = 0
    manifest_sha256: str | None = None
    manifest_applied_ts: float | None = None
    manifest_origin: str | None = None
    last_refused_manifest: str | None = dataclasses.field(default=None, metadata=LONG_TEXT)
    jobs_by_status: dict[str, int] = dataclasses.field(default_factory=dict)
    hosts_online: int = 0
    hosts_total: int = 0
    hosts_draining: int = 0
    hosts_quarantined: int = 0
    #: true only when the check of the database passed (coordinator/health.py)
    db_ok: bool = False
    store_ok: bool = False
    checks: dict[str, CheckResult] = dataclasses.field(default_factory=dict)
    failed_checks: list[str] = dataclasses.field(default_factory=list)
    requests_dropped: int = 0
    republishing: bool = False
    log_batches_refused: int = 0
    store: str = ""
    #: times another client connected with this coordinator's client id and the broker disconnected it
    session_takeovers: int = 0
    #: retained messages deleted from request and log topics (docs/SECURITY.md, "Replies")
    retained_cleared: int = 0
    coordinator: str = ""
    role: str = ""
    state_store: str = ""
    coordinators: list[CoordinatorPeer] = dataclasses.field(default_factory=list)


#: The request and reply classes of each agent verb, by verb name (docs/INTERNALS.md, "Wire payloads").
AGENT_MESSAGES: dict[str, tuple[type[WireMessage] | None, type[WireMessage]]] = {
    "claim": (None, ClaimReply),
    "renew": (RenewRequest, RenewReply),
    "upload_url": (UploadUrlRequest, UploadUrlReply),
    "complete": (CompleteRequest, StatusReply),
    "fail": (FailRequest, StatusReply),
}

#: The request classes of the checkpoint verbs and the query verbs that take fields.
OTHER_REQUESTS: dict[str, type[WireMessage]] = {
    "checkpoint_url": CheckpointUploadRequest,
    "checkpoint_saved": CheckpointSavedRequest,
    "checkpoint_start": CheckpointStartRequest,
    "jobs": JobsRequest,
    "job": JobRefRequest,
    "logs": LogsRequest,
    "compare": CompareRequest,
    "download_url": JobRefRequest,
}

#: The request class of each operator verb (docs/INTERNALS.md, "Wire payloads").
OPERATOR_REQUESTS: dict[str, type[WireMessage]] = {
    "cancel": JobRefRequest,
    "requeue": RequeueRequest,
    "reload": ReloadRequest,
    "drain": HostRequest,
    "undrain": HostRequest,
    "gc": GcRequest,
}

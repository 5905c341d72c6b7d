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
from enum import StrEnum
from typing import Annotated

from mqfleet.lifecycle import AGENT_CAUSES, Cause, JobStatus
from mqfleet.wire.codec import LENIENT, LONG_TEXT, OMIT_DEFAULT, Bounds, WireMessage
from mqfleet.wire.reports import ProgressReports, SmallObject, Usage
from mqfleet.wire.topics import JsonObject


class Presence(StrEnum):
    """An agent's or a coordinator's retained `state`: its will says offline."""

    ONLINE = "online"
    OFFLINE = "offline"


class UploadMethod(StrEnum):
    """How an upload URL is used: a presigned PUT (a file store), or a POST form with a signed policy (S3)."""

    PUT = "PUT"
    POST = "POST"


class JobOrder(StrEnum):
    """The order of a `jobs` listing: by when the jobs were added."""

    OLDEST = "oldest"
    NEWEST = "newest"


@dataclasses.dataclass(frozen=True)
class NoFields(WireMessage):
    """The request of a verb that takes no fields besides the envelope's (`claim`, `workers`, `health`,
    `artifacts`, `manifest`)."""


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
    status: JobStatus
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
    progress: SmallObject | None = None
    progress_reports: ProgressReports | None = None


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
    method: UploadMethod | None = None
    upload_key: str | None = None
    expires_s: int | None = None
    fields: dict[str, str] | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)


@dataclasses.dataclass(frozen=True)
class CompleteRequest(WireMessage):
    job_id: str
    lease_id: str
    sha256: str
    size: int
    metrics: SmallObject = dataclasses.field(default_factory=dict)
    output_tail: str = dataclasses.field(default="", metadata=LONG_TEXT)
    #: sent once measured (agent/usage.py); history, so a malformed one is left out (wire/reports.py)
    usage: Annotated[Usage, LENIENT] | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)
    progress_reports: ProgressReports | None = None


@dataclasses.dataclass(frozen=True)
class FailRequest(WireMessage):
    job_id: str
    lease_id: str
    #: lost and cancelled are the coordinator's to decide
    cause: Annotated[Cause, Bounds(one_of=AGENT_CAUSES)] = Cause.APP
    exit_code: int | None = None
    output_tail: str = dataclasses.field(default="", metadata=LONG_TEXT)
    error: str = dataclasses.field(default="", metadata=LONG_TEXT)
    usage: Annotated[Usage, LENIENT] | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)
    progress_reports: ProgressReports | None = None


@dataclasses.dataclass(frozen=True)
class StatusReply(WireMessage):
    """The reply to `complete` and `fail`: the status the job moved to."""

    status: JobStatus


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
    progress: SmallObject | None = None


@dataclasses.dataclass(frozen=True)
class CheckpointStartRequest(WireMessage):
    """How an attempt started: resumed from its grant's checkpoint, or fresh and why."""

    job_id: str
    lease_id: str
    resumed: bool
    note: str = ""
    from_attempt: int | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)
    rejected_sha256: str | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)


# --- query verbs -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class JobsRequest(WireMessage):
    """One page of the jobs listing (docs/CLI.md, `jobs`): by keyset (`after`) or by position (`offset`, 0 if
    neither is given)."""

    status: JobStatus | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)
    name: str | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)
    order: JobOrder = JobOrder.OLDEST
    limit: int | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)
    after: int | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)
    offset: int | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)
    #: false once the client knows the total: counting walks every matching row
    count: bool = True


@dataclasses.dataclass(frozen=True)
class LogsRequest(WireMessage):
    job: str
    attempt: int | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)
    offset: int = dataclasses.field(default=0, metadata=OMIT_DEFAULT)
    limit: int | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)


#: Jobs one `compare` may name.
COMPARE_MAX_JOBS = 2000


@dataclasses.dataclass(frozen=True)
class CompareRequest(WireMessage):
    """Either `jobs` (references) or `sweep` (a sweep's name)."""

    jobs: Annotated[list[str], Bounds(max_items=COMPARE_MAX_JOBS)] | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)
    sweep: str | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)


# --- operator verbs (the `auth` signature is checked, and ignored here, by the service) ---------------


@dataclasses.dataclass(frozen=True)
class JobRefRequest(WireMessage):
    """`cancel` (and the query verbs that name one job): a job by id, unique id prefix or name."""

    job: str


@dataclasses.dataclass(frozen=True)
class RequeueRequest(WireMessage):
    job: str
    #: also delete the job's checkpoint, so the next attempt starts from scratch
    fresh: bool = dataclasses.field(default=False, metadata=OMIT_DEFAULT)


#: What a manifest sent without a name is called in messages.
SENT_SOURCE = "<sent by operator>"


@dataclasses.dataclass(frozen=True)
class ReloadRequest(WireMessage):
    """Reload the manifest file, or apply the TOML text sent (`source` names it in messages)."""

    manifest: str | None = dataclasses.field(default=None, metadata={**LONG_TEXT, **OMIT_DEFAULT})
    source: str = dataclasses.field(default=SENT_SOURCE, metadata=OMIT_DEFAULT)


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

    state: Presence
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


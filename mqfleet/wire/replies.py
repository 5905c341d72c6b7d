"""Typed replies of the coordinator's verbs, and the records they carry (docs/INTERNALS.md, "Wire payloads").

The coordinator's handlers return these; the dispatcher turns one into the reply's JSON
(`{"ok": true, **reply.to_wire()}`) at the last moment, and `FleetClient` reads them back with
`from_wire()` (strict on the fields it knows, a mistyped one named). The agent verbs' own
messages (claim, renew, upload_url, fail) and the job row are in mqfleet/wire/requests.py.
Free-form user data (hyperparameters, metrics, progress reports, adverts) stays `JsonObject`,
narrowed by its readers. Fields are only ever added, with a default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mqfleet.lifecycle import Cause, JobStatus
from mqfleet.wire.codec import LONG_TEXT, OMIT_DEFAULT, Wire, WireMessage
from mqfleet.wire.reports import Usage
from mqfleet.wire.requests import JobRow, UploadMethod
from mqfleet.wire.topics import JsonObject

# --- records the replies carry ---------------------------------------------------------------------


@dataclass(frozen=True)
class HostUsage(WireMessage):
    """A host's usage summed over every attempt it ran (peaks are the largest, not a sum)."""

    attempts: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    max_rss_bytes: int = 0
    gpu_mem_max_bytes: int | None = None


@dataclass(frozen=True)
class ProgressPoint(WireMessage):
    """One kept progress report of an attempt (`show`'s curves)."""

    attempt: int
    seq: int
    ts: float
    report: JsonObject


@dataclass(frozen=True)
class AttemptDetail(WireMessage):
    """One attempt of a job as `job` shows it, with its usage when the agent sent one."""

    number: int
    host: str | None = None
    lease_id: str | None = None
    started_ts: float | None = None
    ended_ts: float | None = None
    outcome: str | None = None
    cause: Cause | None = None
    exit_code: int | None = None
    output_tail: str | None = field(default=None, metadata=LONG_TEXT)
    error: str | None = field(default=None, metadata=LONG_TEXT)
    usage: Usage | None = None


@dataclass(frozen=True)
class LeaseDetail(WireMessage):
    """A job's live lease."""

    lease_id: str
    host: str
    expires_ts: float
    attempt: int
    gpus: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class WaitReason(WireMessage):
    """Why a pending job does not run: a job-level reason (`host` null) or one host's."""

    host: str | None
    reason: str = field(metadata=LONG_TEXT)


@dataclass(frozen=True)
class ArtifactRecord(WireMessage):
    """A job's stored artifact (`artifacts`, and `job`'s `artifact_detail`)."""

    sha256: str
    size: int
    key: str
    job_id: str
    name: str = ""
    model: str = ""
    mode: str = ""
    host: str | None = None
    metrics: JsonObject = field(default_factory=dict)
    created_ts: float | None = None


@dataclass(frozen=True)
class CheckpointLatest(WireMessage):
    """A job's latest verified checkpoint."""

    attempt: int
    sha256: str
    size: int
    saved_ts: float
    host: str | None = None
    progress: JsonObject | None = None


@dataclass(frozen=True)
class CheckpointStartRecord(WireMessage):
    """How an attempt that was given a checkpoint started."""

    attempt: int
    resumed: bool
    ts: float
    from_attempt: int | None = None
    from_progress: JsonObject | None = None
    note: str = ""


@dataclass(frozen=True)
class CheckpointDetail(WireMessage):
    """What `show` tells about a job's checkpoints."""

    latest: CheckpointLatest | None = None
    last_start: CheckpointStartRecord | None = None


@dataclass(frozen=True)
class JobDetail(JobRow):
    """The `job` reply's job: the row plus its spec, attempts, curves, lease, artifact and checkpoint."""

    spec: JsonObject = field(default_factory=dict)
    attempts_detail: list[AttemptDetail] = field(default_factory=list)
    progress_history: list[ProgressPoint] = field(default_factory=list)
    why_waiting: list[WaitReason] = field(default_factory=list)
    lease: LeaseDetail | None = None
    outputs: list[str] = field(default_factory=list)
    artifact_detail: ArtifactRecord | None = None
    checkpoint: CheckpointDetail | None = None


@dataclass(frozen=True)
class RequeuedJob(JobRow):
    """The `requeue` reply's job: the row and the checkpoint its next attempt resumes from."""

    checkpoint: CheckpointDetail | None = None


@dataclass(frozen=True)
class Quarantine(WireMessage):
    """Why a host takes no work until an operator undrains it."""

    since_ts: float
    reason: str = ""
    jobs: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Worker(WireMessage):
    """A host as `workers` lists it."""

    id: str
    online: bool
    draining: bool
    advert: JsonObject = field(default_factory=dict)
    last_seen_ts: float | None = None
    slots: int = 0
    slots_used: int = 0
    jobs: list[str] = field(default_factory=list)
    quarantined: bool = False
    quarantine: Quarantine | None = None
    usage: HostUsage | None = None
    #: why the host's latest advert was refused (`advert` still shows its last good one)
    advert_error: str | None = None
    #: why its owner's policy keeps it from taking work now (`outside hours until 22:00 (Europe/Berlin)`,
    #: `yielding: owner busy`, `paused by owner until 14:00`); left out when it may (docs/OPERATIONS.md, "Owner policies")
    owner_wait: str | None = field(default=None, metadata=OMIT_DEFAULT)


@dataclass(frozen=True)
class CompareRow(WireMessage):
    """One job of `compare`: its hyperparameters and final (or latest) metrics."""

    id: str
    name: str
    status: JobStatus
    model: str = ""
    mode: str = ""
    host: str | None = None
    attempts: int = 0
    hyper: JsonObject = field(default_factory=dict)
    metrics: JsonObject = field(default_factory=dict)
    usage: Usage | None = None


@dataclass(frozen=True)
class GcObject(WireMessage):
    key: str
    size: int


@dataclass(frozen=True)
class GcFailure(WireMessage):
    key: str
    error: str = field(metadata=LONG_TEXT)


# --- replies -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompleteReply(WireMessage):
    """`complete`: the status the job moved to, and its row."""

    status: JobStatus
    job: JobRow | None = None


@dataclass(frozen=True)
class CheckpointUrlReply(WireMessage):
    """A presigned PUT, or (S3) a POST of the form `fields`, whose policy lets the store take exactly `size` bytes."""

    url: str
    key: str
    expires_s: int
    method: UploadMethod = UploadMethod.PUT
    fields: dict[str, str] | None = field(default=None, metadata=OMIT_DEFAULT)


@dataclass(frozen=True)
class CheckpointSavedReply(WireMessage):
    saved_ts: float
    attempt: int


@dataclass(frozen=True)
class CheckpointStartReply(WireMessage):
    attempt: int


@dataclass(frozen=True)
class JobReply(WireMessage):
    """`cancel`: the job's row after the change."""

    job: JobRow


@dataclass(frozen=True)
class RequeueReply(WireMessage):
    job: RequeuedJob


@dataclass(frozen=True)
class ReloadReply(WireMessage):
    """`reload`: the ids of the jobs added and orphaned, and how many were kept."""

    source: str
    added: list[str]
    kept: int
    orphaned: list[str]
    jobs: int


@dataclass(frozen=True)
class ManifestReply(WireMessage):
    """`manifest`: the manifest in force, its text exactly as applied."""

    text: str = field(metadata=LONG_TEXT)
    source: str
    sha256: str
    applied_ts: float
    origin: str


@dataclass(frozen=True)
class DrainReply(WireMessage):
    host: str
    draining: bool


@dataclass(frozen=True)
class UndrainReply(DrainReply):
    quarantine_released: bool = False


@dataclass(frozen=True)
class GcReply(WireMessage):
    """`gc`: what was (or, with `dry_run`, would be) deleted; `objects` lists at most a few hundred."""

    dry_run: bool
    count: int
    bytes: int
    kept: int
    ignored: int
    objects: list[GcObject] = field(default_factory=list)
    failed: list[GcFailure] = field(default_factory=list)


@dataclass(frozen=True)
class JobsReply(WireMessage):
    """One page of `jobs`. Its rows are the database's JSON objects passed through untouched: a listing
    of 100,000 jobs must stay under 3 s (docs/BENCHMARKS.md), and a typed row costs about 20 us to build
    and again to read back, twice the whole page's encoding; `show` gives the typed row (JobDetail)."""

    jobs: list[JsonObject]
    next_after: int | None = None
    next_offset: int | None = None
    #: null when the request asked for no count (`count: false`)
    total: int | None = None


@dataclass(frozen=True)
class JobDetailReply(WireMessage):
    job: JobDetail


@dataclass(frozen=True)
class WorkersReply(WireMessage):
    workers: list[Worker]


@dataclass(frozen=True)
class ArtifactsReply(WireMessage):
    artifacts: list[ArtifactRecord]


@dataclass(frozen=True)
class LogsReply(WireMessage):
    """One page of an attempt's stored output; `next_offset` null on the last page."""

    job_id: str
    attempts: list[int]
    lines: list[str]
    attempt: int | None = None
    total: int = 0
    next_offset: int | None = None


@dataclass(frozen=True)
class CompareReply(WireMessage):
    sweep: str | None
    jobs: list[CompareRow]
    metric_names: list[str]


@dataclass(frozen=True)
class DownloadUrlReply(WireMessage):
    job_id: str
    sha256: str
    url: str
    expires_s: int
    size: int | None = None


def reply_json(reply: WireMessage) -> Wire:
    """The `ok` reply's JSON object: what the dispatcher publishes and remembers."""
    return {"ok": True, **reply.to_wire()}


"""Typed replies of the coordinator's verbs, and the records they carry (docs/INTERNALS.md, "Wire payloads").

The coordinator's handlers return these; the dispatcher turns one into the reply's JSON
(`{"ok": true, **reply.to_wire()}`) at the last moment, and `FleetClient` reads them back with
`from_wire()` (strict on the fields it knows, a mistyped one named). The agent verbs' own
messages (claim, renew, upload_url, fail) and the job row are in mqfleet/wire/requests.py.
Free-form user data (hyperparameters, metrics, progress reports, adverts) stays `JsonObject`,
narrowed by its readers. Fields are only ever added, with a default. The replies of `workers` and `job` and
the records they carry live in wire/hosts.py and wire/job_detail.py (a command loads only its verbs' types);
this module names them too (`X as X` below).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mqfleet.lifecycle import JobStatus
from mqfleet.wire.codec import LONG_TEXT, OMIT_DEFAULT, Wire, WireMessage
from mqfleet.wire.hosts import HostUsage as HostUsage
from mqfleet.wire.hosts import Quarantine as Quarantine
from mqfleet.wire.hosts import Worker as Worker
from mqfleet.wire.hosts import WorkersReply as WorkersReply
from mqfleet.wire.job_detail import ArtifactRecord as ArtifactRecord
from mqfleet.wire.job_detail import AttemptDetail as AttemptDetail
from mqfleet.wire.job_detail import CheckpointDetail as CheckpointDetail
from mqfleet.wire.job_detail import CheckpointLatest as CheckpointLatest
from mqfleet.wire.job_detail import CheckpointStartRecord as CheckpointStartRecord
from mqfleet.wire.job_detail import JobDetail as JobDetail
from mqfleet.wire.job_detail import JobDetailReply as JobDetailReply
from mqfleet.wire.job_detail import LeaseDetail as LeaseDetail
from mqfleet.wire.job_detail import ProgressPoint as ProgressPoint
from mqfleet.wire.job_detail import WaitReason as WaitReason
from mqfleet.wire.job_listing import JobRow as JobRow
from mqfleet.wire.job_listing import JobsReply as JobsReply
from mqfleet.wire.reports import Usage
from mqfleet.wire.requests import UploadMethod
from mqfleet.wire.topics import JsonObject

# --- records the replies carry ---------------------------------------------------------------------


@dataclass(frozen=True)
class RequeuedJob(JobRow):
    """The `requeue` reply's job: the row and the checkpoint its next attempt resumes from."""

    checkpoint: CheckpointDetail | None = None


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


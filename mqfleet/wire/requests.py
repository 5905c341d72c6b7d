"""Typed requests (and the agent verbs' replies): frozen dataclasses, each with `to_wire()` and `from_wire()`.

The JSON is the one documented in docs/INTERNALS.md ("Wire payloads"); a unit test
(`tests/unit/test_wire_doc.py`) holds the doc's field lists to these classes. `from_wire`
(mqfleet/wire/codec.py) is strict on the types of the fields it knows, and raises BadRequestError
naming the field; it ignores fields it does not know, so a newer sender (more fields) still
talks to an older reader. New fields are added with a default, never renamed or removed.
Free-form JSON (hyperparameters, progress, metrics, a job's spec) is a `JsonObject`.

The query verbs' messages live in modules of their own, so a command loads only its verbs' types
(docs/BENCHMARKS.md, "CLI start-up"): wire/health.py, wire/job_listing.py (with `JobRow`) and
wire/job_detail.py; this module names them too (`X as X` below), so a module may import every request from here.
"""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from typing import Annotated

from mqfleet.lifecycle import AGENT_CAUSES, Cause, JobStatus
from mqfleet.wire.codec import LENIENT, LONG_TEXT, OMIT_DEFAULT, Bounds, WireMessage
from mqfleet.wire.codec import NoFields as NoFields
from mqfleet.wire.health import CheckResult as CheckResult
from mqfleet.wire.health import CoordinatorPeer as CoordinatorPeer
from mqfleet.wire.health import Health as Health
from mqfleet.wire.health import Presence as Presence
from mqfleet.wire.job_listing import JobOrder as JobOrder
from mqfleet.wire.job_listing import JobRefRequest as JobRefRequest
from mqfleet.wire.job_listing import JobRow as JobRow
from mqfleet.wire.job_listing import JobsRequest as JobsRequest
from mqfleet.wire.reports import ProgressReports, SmallObject, Usage
from mqfleet.wire.topics import JsonObject


class UploadMethod(StrEnum):
    """How an upload URL is used: a presigned PUT (a file store), or a POST form with a signed policy (S3)."""

    PUT = "PUT"
    POST = "POST"


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



"""The `job` verb (`mqfleet show`): one job with its attempts, progress curve, lease, artifact and checkpoint
(a module of its own, as wire/health.py says why).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mqfleet.lifecycle import Cause
from mqfleet.wire.codec import LONG_TEXT, WireMessage
from mqfleet.wire.job_listing import JobRow
from mqfleet.wire.reports import Usage
from mqfleet.wire.topics import JsonObject


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
class JobDetailReply(WireMessage):
    job: JobDetail


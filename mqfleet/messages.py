"""Typed messages of the agent verbs: frozen dataclasses, each with `to_wire()` and `from_wire()`.

The JSON is the one documented in docs/INTERNALS.md ("Wire payloads"); a unit test
(`tests/unit/test_wire_doc.py`) holds the doc's field lists to these classes. `from_wire`
is strict on the types of the fields it knows, and raises BadRequestError naming the
field; it ignores fields it does not know, so a newer sender (more fields) still talks
to an older reader. New fields are added with a default, never renamed or removed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar, Union

from mqfleet.errors import BadRequestError
from mqfleet.state import Cause

M = TypeVar("M", bound="WireMessage")
#: Longest string field, but for those marked `long_text` (output tails, error texts).
MAX_FIELD_CHARS = 4096
#: Field metadata of a string that may be long: a trainer's output tail or an error text.
LONG_TEXT = {"long_text": True}

#: A JSON object as decoded from the bus or about to be encoded; the one place it is untyped.
Wire = dict[str, Any]  # boundary: everything below checks it field by field


class WireMessage:
    """Base of the wire dataclasses: conversion by the fields' annotations."""

    def to_wire(self) -> Wire:
        """The JSON object for the bus; nested messages become objects, None stays null."""
        return {f.name: _to_wire(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_wire(cls: type[M], data: Any, where: str = "") -> M:
        """A message from decoded JSON; BadRequestError names the first field that is missing or mistyped."""
        if not isinstance(data, dict):
            raise BadRequestError(f"{_place(where, '') or cls.__name__} must be a JSON object, not {_kind(data)}")
        hints = _hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            place = _place(where, f.name)
            has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            if f.name not in data or (data[f.name] is None and has_default):
                # null where a default exists means "not given", as the hand-written checks always read it
                if not has_default:
                    raise BadRequestError(f"field '{place}' is missing")
                continue
            value = _check(hints[f.name], data[f.name], place)
            if isinstance(value, str) and len(value) > MAX_FIELD_CHARS and not f.metadata.get("long_text"):
                raise BadRequestError(f"field '{place}' is too long ({len(value)} characters)")
            values[f.name] = value
        return cls(**values)


def _place(where: str, name: str) -> str:
    return f"{where}.{name}" if where and name else where or name


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _to_wire(value: Any) -> Any:
    if isinstance(value, WireMessage):
        return value.to_wire()
    if isinstance(value, (list, tuple)):
        return [_to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    return value


def _check(tp: Any, value: Any, place: str) -> Any:
    """`value` as type `tp`, or BadRequestError naming `place`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        present = [o for o in options if o is not type(None)]
        if len(present) == 1:  # `X | None` with a value: X's own error names the field that is wrong inside it
            return _check(present[0], value, place)
        for option in options:
            if option is type(None):
                continue
            try:
                return _check(option, value, place)
            except BadRequestError:
                continue
        names = " or ".join("null" if o is type(None) else getattr(o, "__name__", str(o)) for o in options)
        raise BadRequestError(f"field '{place}' must be {names}, not {_kind(value)}")
    if origin is list:
        if not isinstance(value, list):
            raise BadRequestError(f"field '{place}' must be a list, not {_kind(value)}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_check(item, v, f"{place}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise BadRequestError(f"field '{place}' must be an object, not {_kind(value)}")
        return value
    if isinstance(tp, type) and issubclass(tp, WireMessage):
        return tp.from_wire(value, place)
    if tp is bool:
        if not isinstance(value, bool):
            raise BadRequestError(f"field '{place}' must be true or false, not {_kind(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequestError(f"field '{place}' must be an integer, not {_kind(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BadRequestError(f"field '{place}' must be a finite number, not {_kind(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise BadRequestError(f"field '{place}' must be a string, not {_kind(value)}")
        return value
    raise TypeError(f"no wire check for {tp!r} ({place})")  # a programming error, not bad input


# --- claim ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainerRef(WireMessage):
    """The grant's `trainer`: how the agent starts it (`argv`, resolved by the coordinator)."""

    name: str
    builtin: str | None = None
    command: list[str] = dataclasses.field(default_factory=list)
    argv: list[str] = dataclasses.field(default_factory=list)
    hyper: dict[str, Any] = dataclasses.field(default_factory=dict)
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
    attempts: int = 0
    max_attempts: int = 0
    priority: int = 0
    artifact: str | None = None
    error: str | None = None
    in_manifest: bool = True
    progress: dict[str, Any] | None = None
    created_ts: float | None = None
    updated_ts: float | None = None
    lease_expires_ts: float | None = None


@dataclasses.dataclass(frozen=True)
class Grant(WireMessage):
    """A claim's `job`: the lease on one job and everything the agent needs to run it."""

    job: JobRow
    spec: dict[str, Any]
    trainer: TrainerRef
    lease_id: str
    attempt: int
    expires_ts: float
    lease_s: float
    gpus: list[int] = dataclasses.field(default_factory=list)
    resumable: bool = False
    checkpoint_interval_s: float | None = None
    checkpoint_max_mib: float | None = None
    checkpoint: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class ClaimReply(WireMessage):
    """The reply to `claim`: a grant, or null when there is no work for this host."""

    job: Grant | None = None


# --- the lease's verbs ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RenewRequest(WireMessage):
    job_id: str
    lease_id: str
    progress: dict[str, Any] | None = None
    progress_reports: Any = None  # `[seq, ts, report]` triples; coordinator/reports.py skips bad ones, never fails


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
    """Either the object is stored already (`exists`), or a presigned PUT to this lease's staging key."""

    exists: bool
    key: str = ""
    url: str | None = None
    method: str | None = None
    upload_key: str | None = None
    expires_s: int | None = None


@dataclasses.dataclass(frozen=True)
class CompleteRequest(WireMessage):
    job_id: str
    lease_id: str
    sha256: str
    size: int
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    output_tail: str = dataclasses.field(default="", metadata=LONG_TEXT)
    usage: Any = None  # checked by coordinator/history.py check_usage, as history, not the request's business
    progress_reports: Any = None  # `[seq, ts, report]` triples; coordinator/reports.py skips bad ones, never fails


@dataclasses.dataclass(frozen=True)
class FailRequest(WireMessage):
    job_id: str
    lease_id: str
    cause: str = Cause.APP.value
    exit_code: int | None = None
    output_tail: str = dataclasses.field(default="", metadata=LONG_TEXT)
    error: str = dataclasses.field(default="", metadata=LONG_TEXT)
    usage: Any = None  # checked by coordinator/history.py check_usage, as history, not the request's business
    progress_reports: Any = None  # `[seq, ts, report]` triples; coordinator/reports.py skips bad ones, never fails


@dataclasses.dataclass(frozen=True)
class StatusReply(WireMessage):
    """The reply to `complete` and `fail`: the status the job moved to."""

    status: str


# --- checkpoint verbs (agent) ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CheckpointUploadRequest(WireMessage):
    """`checkpoint_url`: a presigned PUT for this lease's checkpoint bundle."""

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
    progress: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class CheckpointStartRequest(WireMessage):
    """How an attempt started: resumed from its grant's checkpoint, or fresh and why."""

    job_id: str
    lease_id: str
    resumed: bool
    note: str = ""
    from_attempt: int | None = None
    rejected_sha256: str | None = None


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
class Health(WireMessage):
    """The `health` reply and the retained `coordinator/status`: what the checks found (their content is
    coordinator/checks.py's), the manifest in force, counts, and the coordinators sharing the state."""

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
    last_refused_manifest: str | None = None
    jobs_by_status: dict[str, Any] = dataclasses.field(default_factory=dict)
    hosts_online: int = 0
    hosts_total: int = 0
    hosts_draining: int = 0
    hosts_quarantined: int = 0
    #: true only when the check of the database passed (coordinator/checks.py)
    db_ok: bool = False
    store_ok: bool = False
    checks: dict[str, Any] = dataclasses.field(default_factory=dict)
    failed_checks: list[str] = dataclasses.field(default_factory=list)
    requests_dropped: int = 0
    republishing: bool = False
    log_batches_refused: int = 0
    store: str = ""
    coordinator: str = ""
    role: str = ""
    state_store: str = ""
    coordinators: list[dict[str, Any]] = dataclasses.field(default_factory=list)


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

"""The one table of the RPC verbs (docs/INTERNALS.md, "Wire payloads"): for each verb, who may send it,
the type its request is checked into and the type of its reply, and whether the coordinator remembers
that reply for a redelivery.

Both ends read it: the coordinator's dispatcher refuses a verb sent on another role's topic and checks a
request's fields into `request` once, before its handler (coordinator/verbs/handlers.py holds what only
the coordinator needs: the handler itself); `RpcClient.call` (mqfleet/mqtt/rpc.py) takes the topic's role
from it and reads the reply back as `reply`. `tests/unit/test_wire_doc.py` holds INTERNALS' verb table to
this one, row for row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from mqfleet.wire.codec import Bounds, WireMessage
from mqfleet.wire.replies import (
    ArtifactsReply,
    CheckpointSavedReply,
    CheckpointStartReply,
    CheckpointUrlReply,
    CompareReply,
    CompleteReply,
    DownloadUrlReply,
    DrainReply,
    GcReply,
    JobDetailReply,
    JobReply,
    JobsReply,
    LogsReply,
    ManifestReply,
    ReloadReply,
    RequeueReply,
    UndrainReply,
    WorkersReply,
)
from mqfleet.wire.requests import (
    CheckpointSavedRequest,
    CheckpointStartRequest,
    CheckpointUploadRequest,
    ClaimReply,
    CompareRequest,
    CompleteRequest,
    FailRequest,
    GcRequest,
    Health,
    HostRequest,
    JobRefRequest,
    JobsRequest,
    LogsRequest,
    NoFields,
    ReloadRequest,
    RenewReply,
    RenewRequest,
    RequeueRequest,
    StatusReply,
    UploadUrlReply,
    UploadUrlRequest,
)
from mqfleet.wire.topics import MAX_REQUEST_ID_CHARS, Role, Verb

Req = TypeVar("Req", bound=WireMessage)
Rep = TypeVar("Rep", bound=WireMessage)


@dataclass(frozen=True)
class Envelope(WireMessage):
    """What every request carries besides its verb's fields (an operator's also its `auth`: wire/signing.py)."""

    #: unique per request, the same in a redelivery; every remembered reply is keyed by it, so its length
    #: is the sender's to abuse
    request_id: Annotated[str, Bounds(max_chars=MAX_REQUEST_ID_CHARS)] = ""


@dataclass(frozen=True)
class VerbSpec(Generic[Req, Rep]):
    """What one verb is on the wire."""

    verb: Verb
    #: The topic family, the `{role}` level of `rpc/{role}/{client}/{verb}`, and so who may send it: an agent
    #: (the broker pins `{client}` to its host), an operator (a request signed with the operator token), or
    #: anyone (read-only queries).
    role: Role
    #: What the request's fields are checked into (a request also carries the envelope's `request_id`,
    #: and an operator's its `auth`).
    request: type[Req]
    #: What an `ok` reply holds besides `ok`.
    reply: type[Rep]
    #: Whether the coordinator remembers the reply under the request id, so a redelivery is answered with it
    #: instead of running again: every verb that changes state. Queries are simply answered again.
    remembered: bool


CLAIM = VerbSpec(Verb.CLAIM, Role.AGENT, NoFields, ClaimReply, remembered=True)
RENEW = VerbSpec(Verb.RENEW, Role.AGENT, RenewRequest, RenewReply, remembered=True)
UPLOAD_URL = VerbSpec(Verb.UPLOAD_URL, Role.AGENT, UploadUrlRequest, UploadUrlReply, remembered=True)
COMPLETE = VerbSpec(Verb.COMPLETE, Role.AGENT, CompleteRequest, CompleteReply, remembered=True)
FAIL = VerbSpec(Verb.FAIL, Role.AGENT, FailRequest, StatusReply, remembered=True)
CHECKPOINT_URL = VerbSpec(Verb.CHECKPOINT_URL, Role.AGENT, CheckpointUploadRequest, CheckpointUrlReply, remembered=True)
CHECKPOINT_SAVED = VerbSpec(Verb.CHECKPOINT_SAVED, Role.AGENT, CheckpointSavedRequest, CheckpointSavedReply,
                            remembered=True)
CHECKPOINT_START = VerbSpec(Verb.CHECKPOINT_START, Role.AGENT, CheckpointStartRequest, CheckpointStartReply,
                            remembered=True)
CANCEL = VerbSpec(Verb.CANCEL, Role.OPERATOR, JobRefRequest, JobReply, remembered=True)
REQUEUE = VerbSpec(Verb.REQUEUE, Role.OPERATOR, RequeueRequest, RequeueReply, remembered=True)
RELOAD = VerbSpec(Verb.RELOAD, Role.OPERATOR, ReloadRequest, ReloadReply, remembered=True)
DRAIN = VerbSpec(Verb.DRAIN, Role.OPERATOR, HostRequest, DrainReply, remembered=True)
UNDRAIN = VerbSpec(Verb.UNDRAIN, Role.OPERATOR, HostRequest, UndrainReply, remembered=True)
GC = VerbSpec(Verb.GC, Role.OPERATOR, GcRequest, GcReply, remembered=True)
JOBS = VerbSpec(Verb.JOBS, Role.QUERY, JobsRequest, JobsReply, remembered=False)
JOB = VerbSpec(Verb.JOB, Role.QUERY, JobRefRequest, JobDetailReply, remembered=False)
WORKERS = VerbSpec(Verb.WORKERS, Role.QUERY, NoFields, WorkersReply, remembered=False)
HEALTH = VerbSpec(Verb.HEALTH, Role.QUERY, NoFields, Health, remembered=False)
ARTIFACTS = VerbSpec(Verb.ARTIFACTS, Role.QUERY, NoFields, ArtifactsReply, remembered=False)
LOGS = VerbSpec(Verb.LOGS, Role.QUERY, LogsRequest, LogsReply, remembered=False)
DOWNLOAD_URL = VerbSpec(Verb.DOWNLOAD_URL, Role.QUERY, JobRefRequest, DownloadUrlReply, remembered=False)
COMPARE = VerbSpec(Verb.COMPARE, Role.QUERY, CompareRequest, CompareReply, remembered=False)
MANIFEST = VerbSpec(Verb.MANIFEST, Role.QUERY, NoFields, ManifestReply, remembered=False)

#: Every verb's spec, by verb (a unit test holds it to the `Verb` enum, one entry each).
VERBS: dict[Verb, VerbSpec[Any, Any]] = {spec.verb: spec for spec in (
    CLAIM, RENEW, UPLOAD_URL, COMPLETE, FAIL, CHECKPOINT_URL, CHECKPOINT_SAVED, CHECKPOINT_START,
    CANCEL, REQUEUE, RELOAD, DRAIN, UNDRAIN, GC,
    JOBS, JOB, WORKERS, HEALTH, ARTIFACTS, LOGS, DOWNLOAD_URL, COMPARE, MANIFEST,
)}

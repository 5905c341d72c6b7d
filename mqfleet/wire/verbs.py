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

import importlib
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeVar, cast

from mqfleet.wire.codec import Bounds, WireMessage
from mqfleet.wire.topics import MAX_REQUEST_ID_CHARS, Role, Verb

if TYPE_CHECKING:
    # The types of each verb's annotation below, for mypy; at run time each spec names its types as text and
    # imports them on first use (VerbSpec.request, .reply).
    from mqfleet.wire.codec import NoFields
    from mqfleet.wire.health import Health
    from mqfleet.wire.hosts import WorkersReply
    from mqfleet.wire.job_detail import JobDetailReply
    from mqfleet.wire.job_listing import JobRefRequest, JobsReply, JobsRequest
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
        JobReply,
        LogsReply,
        ManifestReply,
        ReloadReply,
        RequeueReply,
        UndrainReply,
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
        HostRequest,
        LogsRequest,
        ReloadRequest,
        RenewReply,
        RenewRequest,
        RequeueRequest,
        StatusReply,
        UploadUrlReply,
        UploadUrlRequest,
    )

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
    #: and an operator's its `auth`), and what an `ok` reply holds besides `ok`: each named `module.Class`
    #: under mqfleet/wire/ and imported when first used, so a command loads the message modules of its own
    #: verbs only (docs/BENCHMARKS.md, "CLI start-up"). The constant's annotation names the same two types for
    #: mypy; tests/unit/test_verb_types.py holds the two together.
    request_name: str
    reply_name: str
    #: Whether the coordinator remembers the reply under the request id, so a redelivery is answered with it
    #: instead of running again: every verb that changes state. Queries are simply answered again.
    remembered: bool

    @property
    def request(self) -> type[Req]:
        return cast("type[Req]", message_type(self.request_name))

    @property
    def reply(self) -> type[Rep]:
        return cast("type[Rep]", message_type(self.reply_name))


@cache
def message_type(name: str) -> type[WireMessage]:
    """The message class a spec names (`health.Health`: mqfleet/wire/health.py's `Health`)."""
    module, _, cls = name.rpartition(".")
    found = getattr(importlib.import_module(f"mqfleet.wire.{module}"), cls)
    if not (isinstance(found, type) and issubclass(found, WireMessage)):
        raise TypeError(f"{name} is not a wire message")  # a programming error in the table below
    return found


CLAIM: VerbSpec[NoFields, ClaimReply] = VerbSpec(
    Verb.CLAIM, Role.AGENT, "codec.NoFields", "requests.ClaimReply", remembered=True)
RENEW: VerbSpec[RenewRequest, RenewReply] = VerbSpec(
    Verb.RENEW, Role.AGENT, "requests.RenewRequest", "requests.RenewReply", remembered=True)
UPLOAD_URL: VerbSpec[UploadUrlRequest, UploadUrlReply] = VerbSpec(
    Verb.UPLOAD_URL, Role.AGENT, "requests.UploadUrlRequest", "requests.UploadUrlReply", remembered=True)
COMPLETE: VerbSpec[CompleteRequest, CompleteReply] = VerbSpec(
    Verb.COMPLETE, Role.AGENT, "requests.CompleteRequest", "replies.CompleteReply", remembered=True)
FAIL: VerbSpec[FailRequest, StatusReply] = VerbSpec(
    Verb.FAIL, Role.AGENT, "requests.FailRequest", "requests.StatusReply", remembered=True)
CHECKPOINT_URL: VerbSpec[CheckpointUploadRequest, CheckpointUrlReply] = VerbSpec(
    Verb.CHECKPOINT_URL, Role.AGENT, "requests.CheckpointUploadRequest", "replies.CheckpointUrlReply", remembered=True)
CHECKPOINT_SAVED: VerbSpec[CheckpointSavedRequest, CheckpointSavedReply] = VerbSpec(
    Verb.CHECKPOINT_SAVED, Role.AGENT, "requests.CheckpointSavedRequest", "replies.CheckpointSavedReply", remembered=True)
CHECKPOINT_START: VerbSpec[CheckpointStartRequest, CheckpointStartReply] = VerbSpec(
    Verb.CHECKPOINT_START, Role.AGENT, "requests.CheckpointStartRequest", "replies.CheckpointStartReply", remembered=True)
CANCEL: VerbSpec[JobRefRequest, JobReply] = VerbSpec(
    Verb.CANCEL, Role.OPERATOR, "job_listing.JobRefRequest", "replies.JobReply", remembered=True)
REQUEUE: VerbSpec[RequeueRequest, RequeueReply] = VerbSpec(
    Verb.REQUEUE, Role.OPERATOR, "requests.RequeueRequest", "replies.RequeueReply", remembered=True)
RELOAD: VerbSpec[ReloadRequest, ReloadReply] = VerbSpec(
    Verb.RELOAD, Role.OPERATOR, "requests.ReloadRequest", "replies.ReloadReply", remembered=True)
DRAIN: VerbSpec[HostRequest, DrainReply] = VerbSpec(
    Verb.DRAIN, Role.OPERATOR, "requests.HostRequest", "replies.DrainReply", remembered=True)
UNDRAIN: VerbSpec[HostRequest, UndrainReply] = VerbSpec(
    Verb.UNDRAIN, Role.OPERATOR, "requests.HostRequest", "replies.UndrainReply", remembered=True)
GC: VerbSpec[GcRequest, GcReply] = VerbSpec(
    Verb.GC, Role.OPERATOR, "requests.GcRequest", "replies.GcReply", remembered=True)
JOBS: VerbSpec[JobsRequest, JobsReply] = VerbSpec(
    Verb.JOBS, Role.QUERY, "job_listing.JobsRequest", "job_listing.JobsReply", remembered=False)
JOB: VerbSpec[JobRefRequest, JobDetailReply] = VerbSpec(
    Verb.JOB, Role.QUERY, "job_listing.JobRefRequest", "job_detail.JobDetailReply", remembered=False)
WORKERS: VerbSpec[NoFields, WorkersReply] = VerbSpec(
    Verb.WORKERS, Role.QUERY, "codec.NoFields", "hosts.WorkersReply", remembered=False)
HEALTH: VerbSpec[NoFields, Health] = VerbSpec(
    Verb.HEALTH, Role.QUERY, "codec.NoFields", "health.Health", remembered=False)
ARTIFACTS: VerbSpec[NoFields, ArtifactsReply] = VerbSpec(
    Verb.ARTIFACTS, Role.QUERY, "codec.NoFields", "replies.ArtifactsReply", remembered=False)
LOGS: VerbSpec[LogsRequest, LogsReply] = VerbSpec(
    Verb.LOGS, Role.QUERY, "requests.LogsRequest", "replies.LogsReply", remembered=False)
DOWNLOAD_URL: VerbSpec[JobRefRequest, DownloadUrlReply] = VerbSpec(
    Verb.DOWNLOAD_URL, Role.QUERY, "job_listing.JobRefRequest", "replies.DownloadUrlReply", remembered=False)
COMPARE: VerbSpec[CompareRequest, CompareReply] = VerbSpec(
    Verb.COMPARE, Role.QUERY, "requests.CompareRequest", "replies.CompareReply", remembered=False)
MANIFEST: VerbSpec[NoFields, ManifestReply] = VerbSpec(
    Verb.MANIFEST, Role.QUERY, "codec.NoFields", "replies.ManifestReply", remembered=False)

#: Every verb's spec, by verb (a unit test holds it to the `Verb` enum, one entry each).
VERBS: dict[Verb, VerbSpec[Any, Any]] = {spec.verb: spec for spec in (
    CLAIM, RENEW, UPLOAD_URL, COMPLETE, FAIL, CHECKPOINT_URL, CHECKPOINT_SAVED, CHECKPOINT_START,
    CANCEL, REQUEUE, RELOAD, DRAIN, UNDRAIN, GC,
    JOBS, JOB, WORKERS, HEALTH, ARTIFACTS, LOGS, DOWNLOAD_URL, COMPARE, MANIFEST,
)}

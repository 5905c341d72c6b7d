"""What a request handler sees: the `Request` with its fields checked into the verb's request type, and
the coordinator as a narrow `HandlerContext` (its state modules, its store and the manifest in force), so
handler modules (`handlers`, `reports`, `checkpoints`) import this leaf instead of the service or each other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from mqfleet.coordinator.sql.sqlite import StateFile
from mqfleet.coordinator.tables.artifacts import Artifacts
from mqfleet.coordinator.tables.catalog import Catalog
from mqfleet.coordinator.tables.checkpoints import CheckpointBook
from mqfleet.coordinator.tables.claims import Claims
from mqfleet.coordinator.tables.garbage import UploadWindow
from mqfleet.coordinator.tables.history import AttemptHistory
from mqfleet.coordinator.tables.hosts import Hosts
from mqfleet.coordinator.tables.leases import Leases
from mqfleet.coordinator.tables.manifests import StoredManifest
from mqfleet.coordinator.tables.rows import ManifestRows
from mqfleet.coordinator.tables.upload_limits import UploadLimits
from mqfleet.errors import ManifestError
from mqfleet.manifest.types import FleetSettings, Manifest
from mqfleet.store.base import ArtifactStore
from mqfleet.wire.codec import Wire, WireMessage
from mqfleet.wire.published import ControlMessage
from mqfleet.wire.replies import GcReply
from mqfleet.wire.requests import Health
from mqfleet.wire.topics import Role, Verb


class HandlerContext(Protocol):
    """What a handler may use of the coordinator: its state, its store and the manifest in force."""

    catalog: Catalog
    hosts: Hosts
    claims: Claims
    leases: Leases
    artifacts: Artifacts
    history: AttemptHistory
    uploads: UploadWindow
    upload_limits: UploadLimits
    state: StateFile
    checkpoints: CheckpointBook
    store: ArtifactStore

    @property
    def lock(self) -> threading.RLock: ...
    @property
    def manifest(self) -> Manifest | None: ...
    @property
    def manifest_path(self) -> Path: ...
    @property
    def operator_token(self) -> str: ...
    @property
    def lease_s(self) -> float: ...
    @property
    def grace_s(self) -> float: ...
    @property
    def fleet(self) -> FleetSettings: ...
    def is_known_host(self, host: str) -> bool: ...
    @property
    def stored_manifest(self) -> StoredManifest | None: ...
    def apply_manifest(self, manifest: Manifest | ManifestRows, now: float, *, origin: str = ...,
                       record: bool = ...) -> dict[str, list[str]]: ...
    def refuse_manifest(self, problem: ManifestError) -> None: ...
    def mark_changed(self, job_id: str) -> None: ...
    def mark_progress(self, job_id: str) -> None: ...
    def send_control(self, host: str, message: ControlMessage) -> None: ...
    def health(self, now: float) -> Health: ...
    def job_logs(self, job_id: str, attempt: int | None = None) -> tuple[int | None, list[str], list[int]]: ...
    def advert_problem(self, host: str) -> str | None: ...


Body = TypeVar("Body", bound=WireMessage)
Rep = TypeVar("Rep", bound=WireMessage)


@dataclass(frozen=True)
class Request(Generic[Body]):
    """A request as its handler gets it: who sent it (from the topic, never the payload), when, and its fields."""

    verb: Verb
    role: Role
    client: str
    #: the payload as decoded JSON (protocol.decode): what an operator's signature covers
    wire: Wire
    #: the payload checked, once, by the dispatcher into the verb's request type (mqfleet/wire/verbs.py)
    body: Body
    now: float
    prepared: Prepared = None


#: What a verb's prepare step made off the lock for its handler: an artifact's or checkpoint's key,
#: a parsed manifest's rows, or a garbage collection's result; each handler narrows it to its own.
Prepared = str | ManifestRows | GcReply | None
#: A verb's handler returns its typed reply; the dispatcher makes the JSON (`replies.reply_json`).
Handler = Callable[[HandlerContext, Request[Body]], Rep]
Prepare = Callable[[HandlerContext, Request[Body]], Prepared]

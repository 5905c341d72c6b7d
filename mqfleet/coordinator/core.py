"""What the coordinator's parts share: the attributes `Coordinator.__init__` (coordinator/service.py) sets,
the settings of the manifest in force they all read, and the methods one part calls on another.

The coordinator is one object assembled from parts by responsibility: request dispatch
(coordinator/dispatch.py), the agent-topic listeners (listeners.py), publishing after commit
(outbox.py), the sweep (sweep.py), the lead among several coordinators (leader.py) and the
manifest in force at start (coordinator/manifest_keeper.py). Each part is a mixin over `CoordinatorCore`, so the
lock, the state modules and the connection stay one set, owned by the service.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mqfleet import defaults
from mqfleet.coordinator.feed import Feed
from mqfleet.coordinator.health import HealthChecks
from mqfleet.coordinator.owner_defaults import OwnerDefaults
from mqfleet.coordinator.republish import StateRepublisher
from mqfleet.coordinator.sql.pgurl import check_url, redact_url
from mqfleet.coordinator.sql.sqlite import StateFile
from mqfleet.coordinator.tables.artifacts import Artifacts
from mqfleet.coordinator.tables.catalog import Catalog
from mqfleet.coordinator.tables.checkpoints import CheckpointBook
from mqfleet.coordinator.tables.claims import Claims
from mqfleet.coordinator.tables.garbage import UploadWindow
from mqfleet.coordinator.tables.history import AttemptHistory
from mqfleet.coordinator.tables.hosts import Hosts
from mqfleet.coordinator.tables.leases import Leases
from mqfleet.coordinator.tables.manifests import ORIGIN_FILE, ManifestHistory, StoredManifest
from mqfleet.coordinator.tables.peers import Election, Peers
from mqfleet.coordinator.tables.rows import ManifestRows
from mqfleet.coordinator.tables.upload_limits import UploadLimits
from mqfleet.errors import ConfigurationError, ManifestError
from mqfleet.manifest.types import FleetSettings, Manifest
from mqfleet.mqtt.config import BrokerConfig
from mqfleet.mqtt.connection import Connection
from mqfleet.mqtt.inbox import Message
from mqfleet.store.base import ArtifactStore
from mqfleet.wire.published import ControlMessage
from mqfleet.wire.requests import Health
from mqfleet.wire.topics import Topics

if TYPE_CHECKING:
    from mqfleet.coordinator.metrics import CoordinatorMetrics
    from mqfleet.coordinator.verbs.context import Request


@dataclass(frozen=True)
class CoordinatorConfig:
    """Everything the coordinator needs to run; built by the CLI from flags, env and defaults."""

    manifest_path: Path
    db_path: Path
    broker: BrokerConfig
    store_url: str = ""
    #: A postgresql:// URL: the state lives there and db_path is unused; several coordinators may share it.
    db_url: str = ""
    #: A file whose first line is the PostgreSQL password (`--db-password-file`).
    db_password_file: Path | None = None
    operator_token: str = ""
    prefix: str = defaults.TOPIC_PREFIX
    client_id: str = "coordinator"
    sweep_interval_s: float = defaults.SWEEP_INTERVAL_S
    #: Serve Prometheus metrics on this port (None: no endpoint; 0: any free port).
    metrics_port: int | None = None
    metrics_host: str = defaults.METRICS_HOST

    def validate(self) -> None:
        if self.sweep_interval_s <= 0:
            raise ConfigurationError("sweep interval must be positive")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigurationError(f"--metrics-port {self.metrics_port} is not a TCP port (0-65535)")
        if not self.prefix or "#" in self.prefix or "+" in self.prefix:
            raise ConfigurationError(f"topic prefix {self.prefix!r} must be non-empty and free of wildcards")
        if self.db_url:
            check_url(self.db_url)
        if self.db_url and not self.store_url:
            raise ConfigurationError(f"--db {redact_url(self.db_url)} needs --store (or {defaults.ENV_STORE}): every "
                                     "coordinator sharing the database must use the same artifact store")

    @property
    def state_target(self) -> str:
        """What --db named: the PostgreSQL URL, or the SQLite file."""
        return self.db_url or str(self.db_path)

    @property
    def resolved_store_url(self) -> str:
        """The store URL, defaulting to a file store beside the database."""
        if self.store_url:
            return self.store_url
        return (self.db_path.resolve().parent / "artifacts").as_uri()


class CoordinatorCore:
    """The coordinator's shared state (declared here, set by `Coordinator.__init__`) and settings."""

    config: CoordinatorConfig
    clock: Callable[[], float]
    topics: Topics
    started_ts: float
    shared: bool
    state: StateFile
    peers: Peers
    election: Election
    is_leader: bool
    catalog: Catalog
    hosts: Hosts
    artifacts: Artifacts
    claims: Claims
    leases: Leases
    history: AttemptHistory
    uploads: UploadWindow
    upload_limits: UploadLimits
    checkpoints: CheckpointBook
    manifests: ManifestHistory
    stored_manifest: StoredManifest | None
    manifest: Manifest | None
    manifest_jobs: int
    store: ArtifactStore
    checks: HealthChecks
    refused_manifest: ManifestError | None
    last_sweep_ts: float
    _last_prune_ts: float
    metrics: CoordinatorMetrics | None
    advert_problems: OrderedDict[str, str]
    _log_bytes_seen: OrderedDict[tuple[str, int], int]
    _in_flight: set[str]
    _waiting_requests: list[tuple[Message, Request[Any], str]]
    grouped_requests: int
    _changed_jobs: set[str]
    _progress_ts: dict[str, float]
    _progress_due: set[str]
    _verify_pool: ThreadPoolExecutor
    _stop: threading.Event
    _sweeper: threading.Thread | None
    _last_status_ts: float
    _last_tick_ts: float
    _drop_lock: threading.Lock
    dropped_requests: int
    refused_log_batches: int
    retained_cleared: int
    feed: Feed
    conn: Connection
    owner_defaults: OwnerDefaults
    republisher: StateRepublisher

    # --- the one lock, and the settings of the manifest in force ----------------------------

    @property
    def lock(self) -> threading.RLock:
        """The state file's lock, the one lock of the coordinator's state."""
        return self.state.lock

    @property
    def operator_token(self) -> str:
        return self.config.operator_token

    @property
    def manifest_path(self) -> Path:
        """The --manifest file, absolute, so the stored manifests name one path whatever the working folder."""
        return self.config.manifest_path.absolute()

    @property
    def lease_s(self) -> float:
        return self.manifest.fleet.lease_s if self.manifest else defaults.LEASE_S

    @property
    def grace_s(self) -> float:
        return self.manifest.fleet.grace_s if self.manifest else defaults.GRACE_S

    @property
    def fleet(self) -> FleetSettings:
        """The [fleet] settings in force (retry back-off, quarantine, cancel_unsatisfiable)."""
        return self.manifest.fleet if self.manifest else FleetSettings()

    def is_known_host(self, host: str) -> bool:
        """Listed in the manifest's [[hosts]] or has published an advert (docs/SECURITY.md)."""
        return self.hosts.is_known_host(host, self.manifest.hosts if self.manifest else ())

    @property
    def log_max_lines(self) -> int:
        return self.manifest.fleet.log_max_lines if self.manifest else defaults.LOG_MAX_LINES

    def flush_lines(self) -> None:
        """Write the trainer output lines received since the last flush (coordinator/tables/history.py)."""
        self.history.flush_lines(self.log_max_lines)

    # --- what one part calls on another (each defined by the part named) ----------------------
    # Declared here so each part type-checks alone and the whole is a HandlerContext; `Coordinator`
    # lists the parts before this class, so their definitions are the ones that run
    # (tests/unit/test_coordinator_parts.py checks that none of these is left undefined).

    def _publish_changes(self) -> list[str]:  # outbox.py
        raise NotImplementedError

    def _publish_status(self, now: float) -> None:  # outbox.py
        raise NotImplementedError

    def _nudge_for(self, job_ids: list[str], reason: str, now: float) -> None:  # outbox.py
        raise NotImplementedError

    def nudge(self, reason: str, now: float, *, hosts: list[str] | None = None, jobs: list[str] | None = None) -> None:  # outbox.py
        raise NotImplementedError

    def _release_progress(self, now: float) -> None:  # outbox.py
        raise NotImplementedError

    def mark_changed(self, job_id: str) -> None:  # outbox.py
        raise NotImplementedError

    def mark_progress(self, job_id: str) -> None:  # outbox.py
        raise NotImplementedError

    def send_control(self, host: str, message: ControlMessage) -> None:  # outbox.py
        raise NotImplementedError

    def clear_retained(self, msg: Message) -> None:  # outbox.py
        raise NotImplementedError

    def apply_manifest(self, manifest: Manifest | ManifestRows, now: float, *, origin: str = ORIGIN_FILE,
                       record: bool = True) -> dict[str, list[str]]:  # coordinator/manifest_keeper.py
        raise NotImplementedError

    def refuse_manifest(self, problem: ManifestError) -> None:  # coordinator/manifest_keeper.py
        raise NotImplementedError

    def _lead(self, now: float) -> None:  # leader.py
        raise NotImplementedError

    def _follow_manifest(self) -> None:  # leader.py
        raise NotImplementedError

    def health(self, now: float) -> Health:  # service.py
        raise NotImplementedError

    def job_logs(self, job_id: str, attempt: int | None = None) -> tuple[int | None, list[str], list[int]]:  # service.py
        raise NotImplementedError

    def advert_problem(self, host: str) -> str | None:  # service.py
        raise NotImplementedError

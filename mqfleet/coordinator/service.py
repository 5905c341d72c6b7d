"""The coordinator service: wires the broker to the handlers, publishes after commit, sweeps leases.

The state file's one lock (`StateFile.lock`) serialises every use of the database:
requests arrive on the MQTT connection's dispatcher thread, artifact checks on a
small pool, and the sweep on its own timer thread. Job states and events are
published only after their transaction commits, and under the same lock, so a
subscriber never sees a state the database lacks, nor two states out of order.
The manifest in force is the service's; the database modules get its settings passed in.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import gc
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mqfleet import __version__, defaults
from mqfleet.advert import parse_advert
from mqfleet.coordinator import peers, scheduler
from mqfleet.coordinator.artifacts import Artifacts
from mqfleet.coordinator.catalog import Catalog
from mqfleet.coordinator.checkpoint_verbs import collect_garbage as collect_checkpoint_garbage
from mqfleet.coordinator.checkpoints import CheckpointBook
from mqfleet.coordinator.checks import HealthChecks, health_report
from mqfleet.coordinator.claims import Claims
from mqfleet.coordinator.context import Request
from mqfleet.coordinator.garbage import UploadWindow
from mqfleet.coordinator.handlers import VERBS, VerbSpec
from mqfleet.coordinator.history import AttemptHistory
from mqfleet.coordinator.hosts import Hosts
from mqfleet.coordinator.leases import Leases
from mqfleet.coordinator.manifest_memo import manifest_digest
from mqfleet.coordinator.manifests import (
    ORIGIN_FILE,
    ManifestHistory,
    StoredManifest,
    choose_at_start,
    manifest_at_start,
)
from mqfleet.coordinator.postgres import is_postgres_url, open_state, redact_url
from mqfleet.coordinator.republish import StateRepublisher, record_published, state_page
from mqfleet.coordinator.rows import ManifestRows, manifest_rows
from mqfleet.errors import (
    BadRequestError,
    ConfigurationError,
    ManifestError,
    MqfleetError,
    NotFoundError,
    UnavailableError,
    UnknownVerbError,
)
from mqfleet.manifest import FleetSettings, Manifest, parse_manifest, read_manifest_text
from mqfleet.mqtt import BrokerConfig, Connection, Message
from mqfleet.operator_auth import check_not_replayed, verify_request
from mqfleet.protocol import (
    MAX_LOG_LINE_CHARS,
    MAX_LOG_LINES_PER_BATCH,
    MAX_REQUEST_ID_CHARS,
    ROLE_OF_VERB,
    Role,
    Topics,
    Verb,
    decode,
    encode,
    error,
    field,
)
from mqfleet.state import JobStatus
from mqfleet.store import ArtifactStore, open_store

if TYPE_CHECKING:
    from mqfleet.coordinator.metrics import CoordinatorMetrics

logger = logging.getLogger(__name__)

#: How often the sweep prunes what is older than [fleet] keep_days.
#: (A tenth of keep_days when that is shorter, so a short retention is kept to closely.)
PRUNE_INTERVAL_S = 300.0
#: Attempts whose output size is tracked (the live ones, in practice); the oldest entry goes first past it.
LOG_BUDGETS_KEPT = 10_000
#: Hosts whose last advert was refused, remembered with the reason for `workers`.
ADVERT_PROBLEMS_KEPT = 1000
#: How often the retained coordinator status is refreshed.
STATUS_INTERVAL_S = 10.0
#: Above this many newly claimable jobs a nudge goes to every agent instead of the eligible idle ones:
#: working out eligibility costs a spec parse per job, and so many jobs wake most hosts anyway.
NUDGE_TARGET_MAX_JOBS = 64
#: Above this many events committed at once (a manifest load), the rest are published by the
#: background republisher at its bounded rate, instead of all being queued in memory at once.
BULK_CHANGES = 1000
#: A job's retained state is republished for progress at most this often (the latest report wins);
#: status changes are never held back. Every renewal of a busy fleet carries progress.
PROGRESS_REPUBLISH_S = 1.0
#: The shared-subscription group of the coordinators of one fleet (MQTT v5 `$share/<group>/<filter>`).
SHARE_GROUP = "mqfleet-coordinators"


@dataclass(frozen=True)
class CoordinatorConfig:
    """Everything the coordinator needs to run; built by the CLI from flags, env and defaults."""

    manifest_path: Path
    db_path: Path
    broker: BrokerConfig
    store_url: str = ""
    #: A postgresql:// URL: the state lives there and db_path is unused; several coordinators may share it.
    db_url: str = ""
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


class Coordinator:
    """The one process that decides who trains what."""

    def __init__(self, config: CoordinatorConfig, *, clock: Callable[[], float] = time.time) -> None:
        config.validate()
        self.config = config
        self.clock = clock
        self.topics = Topics(config.prefix)
        self.started_ts = clock()
        #: On PostgreSQL several coordinators may serve one fleet: requests come through a shared
        #: subscription and the sweep runs on the leader alone (coordinator/peers.py).
        self.shared = is_postgres_url(config.state_target)
        self.state = open_state(config.state_target, writer=f"{config.client_id}-{secrets.token_hex(3)}")
        self.peers = peers.Peers(self.state, coordinator_id=config.client_id, version=__version__, started_ts=self.started_ts)
        self.election = peers.election_for(self.state)
        #: Whether this coordinator runs the sweep and publishes the fleet's status (always, over SQLite).
        self.is_leader = False
        self.catalog = Catalog(self.state)
        self.hosts = Hosts(self.state)
        self.artifacts = Artifacts(self.state)
        self.claims = Claims(self.state, self.catalog, self.hosts)
        self.leases = Leases(self.state, self.catalog, self.artifacts)
        self.history = AttemptHistory(self.state)
        self.uploads = UploadWindow()
        self.checkpoints = CheckpointBook(self.state)
        self.manifests = ManifestHistory(self.state)
        #: The manifest in force as stored: its text exactly as applied, source, sha256, when, how.
        self.stored_manifest: StoredManifest | None = None
        #: The manifest in force: the last one loaded or reloaded without problems, kept without its
        #: jobs (they are rows, read when a request needs them), so memory does not grow with them.
        self.manifest: Manifest | None = None
        #: How many jobs the manifest in force has.
        self.manifest_jobs = 0
        self.store: ArtifactStore = open_store(config.resolved_store_url)
        self.checks = HealthChecks(self.state, self.store, clock=clock)
        self.refused_manifest: ManifestError | None = None
        self.last_sweep_ts = 0.0
        self._last_prune_ts = 0.0
        self.metrics: CoordinatorMetrics | None = None
        if config.metrics_port is not None:
            from mqfleet.coordinator.metrics import CoordinatorMetrics

            self.metrics = CoordinatorMetrics(self.state, last_sweep_ts=lambda: self.last_sweep_ts, clock=clock)
        #: Why each host's latest advert was refused (its last good one stays in force).
        self.advert_problems: OrderedDict[str, str] = OrderedDict()
        #: Characters of output seen per (job, attempt) since this process started (_within_log_budget).
        self._log_bytes_seen: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._in_flight: set[str] = set()
        self._changed_jobs: set[str] = set()
        #: job id -> when its state was last published for progress, and the jobs whose latest progress waits
        self._progress_ts: dict[str, float] = {}
        self._progress_due: set[str] = set()
        self._verify_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="verify")
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        self._last_status_ts = 0.0
        self._last_tick_ts = self.started_ts
        self._drop_lock = threading.Lock()
        #: Requests dropped unanswered: retained, or with a Response Topic outside the sender's namespace.
        self.dropped_requests = 0
        #: Log batches refused because their host does not hold the job's current lease.
        self.refused_log_batches = 0
        self.conn = Connection(
            config.broker,
            client_id=self.topics.client_id(config.client_id),
            will=(self.topics.coordinator_status, encode({"state": "offline", "coordinator": config.client_id}), True),
            # A clean session on purpose: mosquitto 2.0.11 keeps a persistent session's subscriptions across
            # its own restart but never delivers what it queued for them, so requests would vanish with a
            # success PUBACK. With none, senders get "no matching subscribers" and send again until we are
            # back (mqtt.Connection.request_raw; docs/RELIABILITY.md, "Requests across a reconnect").
            on_connect=self._on_connect,
            reply_prefix=config.prefix,
            # Renewals go ahead of every other request waiting: a burst of claims, log batches or
            # listings never holds one back until its lease expires (issue 17).
            is_urgent=self._is_renewal,
        )
        self.republisher = StateRepublisher(
            lock=self.lock, read_page=lambda after, limit: state_page(self.state, after, limit),
            write_digests=lambda digests: record_published(self.state, digests),
            publish=lambda topic, data: self.conn.publish(topic, data, qos=1, retain=True),
            topic_of=self.topics.job_state, publish_events=self._publish_event_batch,
            queued=lambda: self.conn.unacked_publishes(),
        )

    # --- life cycle -------------------------------------------------------------------

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

    def apply_manifest(self, manifest: Manifest | ManifestRows, now: float, *, origin: str = ORIGIN_FILE,
                       record: bool = True) -> dict[str, list[str]]:
        """Make a validated manifest the one in force and the jobs table follow it; its text is kept in the
        database (`record`) in the same transaction, so a restart keeps it (docs/OPERATIONS.md).

        Pass `rows.manifest_rows(manifest)`, built off the lock, so that only the writes hold it.
        """
        prepared = manifest if isinstance(manifest, ManifestRows) else manifest_rows(manifest)
        source = prepared.header.source
        with self.lock:
            with self.state.transaction():
                summary = self.catalog.apply_manifest(prepared, now)
                if prepared.header.fleet.cancel_unsatisfiable:
                    # turned on by this manifest: what already waits for ever is cancelled now
                    self.leases.cancel_unsatisfiable(now)
                if record:
                    self.stored_manifest = self.manifests.record(prepared.text, source, origin, now)
            self.manifest = prepared.header
            self.manifest_jobs = len(prepared.rows)
        logger.info(
            "manifest %s: %d jobs (%d added, %d orphaned)",
            source, len(prepared.rows), len(summary["added"]), len(summary["orphaned"]),
        )
        return summary

    def refuse_manifest(self, problem: ManifestError) -> None:
        """Remember a manifest refused whole (health reports it); the one in force stays."""
        self.refused_manifest = problem

    def load(self) -> dict[str, Any]:
        """Apply the --manifest file if it changed since it was last applied, else keep the manifest in force
        (which may have come from `reload --file`); logs which and why. ManifestError when there is neither."""
        if self._resume_manifest():
            return {"added": [], "kept": [], "orphaned": []}
        chosen = manifest_at_start(str(self.manifest_path), self.manifests)
        logger.info("manifest at start: %s", chosen.why)
        if chosen.refused is not None:
            self.refuse_manifest(chosen.refused)
        if not chosen.is_new:
            self.stored_manifest = self.manifests.in_force()
        prepared, record = manifest_rows(chosen.manifest), chosen.is_new
        del chosen  # the parsed JobSpecs: only their rows are needed now
        summary = self.apply_manifest(prepared, self.clock(), record=record)
        del prepared
        return_freed_memory()
        return summary

    def _resume_manifest(self) -> bool:
        """Keep the manifest in force without parsing it again when the start would keep it anyway and its
        jobs are already the database's: a restart then serves at once (coordinator/manifest_memo.py)."""
        in_force = self.manifests.in_force()
        if in_force is None:
            return False
        path = str(self.manifest_path)
        try:
            file_text: str | None = read_manifest_text(path)
        except ManifestError:
            file_text = None  # manifest_at_start logs it when it matters
        choice = choose_at_start(path, file_text, in_force, self.manifests.last_from_file(path))
        if choice.use_file:
            return False
        recalled = self.catalog.resume_manifest(manifest_digest(in_force.text, in_force.source))
        if recalled is None:
            return False
        self.manifest, self.manifest_jobs = recalled
        self.stored_manifest = in_force
        logger.info("manifest at start: %s; its %d jobs are in the database already, so it is not parsed again",
                    choice.why, self.manifest_jobs)
        return True

    def start(self, *, wait_s: float | None = 30.0) -> None:
        """Load the manifest, connect, and start sweeping; returns once connected."""
        if self.metrics is not None:
            # Bound first: a port in use fails the start before anything else happens.
            assert self.config.metrics_port is not None
            self.metrics.serve(self.config.metrics_host, self.config.metrics_port)
        self.store.check()
        self.checks.check_database_file()
        self.load()
        self._lead(self.clock())
        t = self.topics
        if self.shared:
            # Each request goes to one coordinator of the group. MQTT v5 forbids no_local on a shared
            # subscription; the reply-namespace check in _on_request keeps us from acting on our own
            # publishes (we publish replies, never requests).
            self.conn.subscribe(f"$share/{SHARE_GROUP}/{t.all_rpc}", self._on_request, retain_as_published=True)
            # a follower's will lands on the fleet's status topic: the leader puts its own status back
            self.conn.subscribe(t.coordinator_status, self._on_peer_status, no_local=True)
        else:
            # no_local: the coordinator never handles its own publishes, whatever topic they went to.
            self.conn.subscribe(t.all_rpc, self._on_request, no_local=True, retain_as_published=True)
        self.conn.subscribe(t.all_adverts, self._on_advert, no_local=True)
        self.conn.subscribe(t.all_statuses, self._on_status, no_local=True)
        self.conn.subscribe(t.all_logs, self._on_log, qos=0, no_local=True)
        self.conn.start(wait_s=wait_s)
        # A coordinator killed between commit and publish left retained states behind the database:
        # the states that differ from what was last published are republished in the background, at
        # a bounded rate, while requests are answered (docs/RELIABILITY.md, "Restarts").
        self.republisher.start()
        if self.is_leader:
            self.republisher.request_sweep()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="sweeper", daemon=True)
        self._sweeper.start()
        logger.info("coordinator %s serving on %s (prefix %s)", __version__, self.config.broker.url, t.prefix)

    def stop(self) -> None:
        self._stop.set()
        if self._sweeper:
            self._sweeper.join(timeout=5)
        self._verify_pool.shutdown(wait=True, cancel_futures=True)
        self.republisher.stop()
        with self.lock:
            self.republisher.flush()
        if self.metrics is not None:
            self.metrics.stop()
        self.flush_lines()
        offline = encode({"state": "offline", "ts": self.clock(), "coordinator": self.config.client_id})
        final = [(self.topics.coordinator_status, offline, True)]
        try:
            self.election.release()
            self.peers.forget()
            if self.shared and self.peers.others_alive(self.clock()):
                final = []  # another coordinator serves the fleet; its leader publishes the status
        except MqfleetError as e:
            logger.warning("coordinators table not updated at stop: %s", e)
        self.conn.stop(final=final)
        self.state.close()
        logger.info("coordinator stopped")

    def run_forever(self) -> None:
        """Block until stop() is called (from a signal handler)."""
        while not self._stop.wait(1.0):
            pass

    def _on_connect(self, session_present: bool) -> None:
        with self.lock:
            if self.is_leader:
                self._publish_status(self.clock())
            self._publish_changes()
        # Agents that missed nudges while we were away learn there may be work.
        self.nudge("coordinator online", self.clock())

    # --- the sweep: lease expiry, request memory, status --------------------------------

    @property
    def log_max_lines(self) -> int:
        return self.manifest.fleet.log_max_lines if self.manifest else defaults.LOG_MAX_LINES

    def flush_lines(self) -> None:
        """Write the trainer output lines received since the last flush (coordinator/history.py)."""
        self.history.flush_lines(self.log_max_lines)

    def tick(self, now: float) -> list[str]:
        """Expire leases due at `now`; tests call this with an injected time instead of sleeping."""
        with self.lock:
            self.flush_lines()
            expired = self.leases.expire_leases(now, fleet=self.fleet)
            for job_id in expired:
                logger.warning("job %s: lease expired, attempt ended as lost", job_id)
            self._release_progress(now)
            # A dead host's job is claimable now: wake an idle host instead of waiting for its poll.
            self._nudge_for(self._publish_changes(), "lease expired", now)
            # So is a job whose retry back-off just ended.
            self._nudge_for(self.leases.backoffs_ended(self._last_tick_ts, now), "retry back-off ended", now)
            self._last_tick_ts = max(self._last_tick_ts, now)
            self.republisher.flush()
            if now - self._last_status_ts >= STATUS_INTERVAL_S:
                self.state.prune_replies(now - defaults.REQUEST_MEMORY_S)
                self._publish_status(now)
        self.last_sweep_ts = now
        keep_s = (self.manifest.fleet.keep_days if self.manifest else defaults.KEEP_DAYS) * 86400.0
        if now - self._last_prune_ts >= min(PRUNE_INTERVAL_S, keep_s / 10):
            self._last_prune_ts = now
            self.prune(now)
        collect_checkpoint_garbage(self, now)
        return expired

    def prune(self, now: float) -> int:
        """Retention: forget events, and logs and progress of jobs ended more than [fleet] keep_days ago.

        Each small batch is its own transaction and takes the lock for a moment only, so requests
        are answered between batches.
        """
        keep_days = self.manifest.fleet.keep_days if self.manifest else defaults.KEEP_DAYS
        return self.history.prune(now - keep_days * 86400.0)

    def _sweep_loop(self) -> None:
        outage_logged = False
        while not self._stop.wait(self.config.sweep_interval_s):
            try:
                now = self.clock()
                self._lead(now)
                if self.shared:
                    self._follow_manifest()
                if self.is_leader:
                    self.tick(now)
                outage_logged = False
            except UnavailableError as e:
                if not outage_logged:  # once per outage: the sweep runs every second
                    logger.error("sweep skipped, state database unavailable: %s", e)
                    outage_logged = True
            except Exception:
                logger.exception("sweep failed")

    # --- several coordinators: the lead, heartbeats, the manifest in force -----------------

    def _lead(self, now: float) -> None:
        """Take or keep the lead (peers.Election), and beat the coordinators table's heart."""
        leading = self.election.hold()
        changed = leading != self.is_leader
        if leading and changed:
            self._take_lead(now)
        elif changed:
            logger.warning("coordinator %s: no longer the leader", self.config.client_id)
        self.is_leader = leading
        if changed or now - self.peers.last_heartbeat_ts >= peers.HEARTBEAT_S:
            self.peers.heartbeat("leader" if leading else "follower", now)

    def _take_lead(self, now: float) -> None:
        """The leader's first duties: fresh leases if nobody served meanwhile, every retained state republished."""
        if not self.peers.others_alive(now):
            # No agent could renew while no coordinator ran: give live leases a fresh term, so an outage
            # of the coordinators is not taken for the death of every host. A host that really died
            # meanwhile has a retained `offline` status, which shortens its leases to the grace.
            resumed = self.leases.resume_leases(now, lease_s=self.lease_s)
            if resumed:
                logger.info("resumed %d live lease(s): no coordinator served while we were away", len(resumed))
        # A coordinator killed between commit and publish left retained states behind the database:
        # the republisher publishes those that differ from what was last published (start() asks it
        # for the first lead, before it runs).
        if self.republisher.is_started:
            self.republisher.request_sweep()
        logger.warning("coordinator %s: took the lead at %.3f", self.config.client_id, now)
        if self.conn.connected:
            with self.lock:
                self._publish_status(now)
                self._publish_changes()

    def _follow_manifest(self) -> None:
        """Adopt the manifest in force when another coordinator applied a new one (reload)."""
        stored = self.manifests.in_force()
        mine = self.stored_manifest
        if stored is None or (mine is not None and stored.sha256 == mine.sha256 and stored.applied_ts == mine.applied_ts):
            return
        try:
            manifest = parse_manifest(stored.text, stored.source)
        except ManifestError as e:
            logger.error("the manifest in force (applied by another coordinator) does not validate here: %s", e)
            self.stored_manifest = stored
            return
        with self.lock:
            self.manifest, self.stored_manifest = manifest, stored
        logger.info("manifest %s adopted: applied by another coordinator", stored.source)

    def _on_peer_status(self, msg: Message) -> None:
        try:
            body = decode(msg.payload) if msg.payload else {}
        except MqfleetError:
            return
        if self.is_leader and body.get("state") != "online" and body.get("coordinator") != self.config.client_id:
            logger.info("coordinator %s went offline; the leader's status is republished", body.get("coordinator"))
            with self.lock:
                self._publish_status(self.clock())

    # --- requests -----------------------------------------------------------------------

    def _on_request(self, msg: Message) -> None:
        parsed = self.topics.parse_rpc(msg.topic)
        if parsed is None:
            return
        role_name, client, verb_name = parsed
        try:
            role = Role(role_name)
        except ValueError:
            self._drop_request(msg, f"unknown role level {role_name!r}")
            return
        # Checked before anything else, so the coordinator never publishes where a sender chose:
        # a reply goes only to the requester's own reply namespace (docs/SECURITY.md, "Replies").
        if msg.retain:
            # A retained request would run again at every coordinator restart.
            self._drop_request(msg, "it was published retained")
            return
        if msg.response_topic is not None and not self.topics.is_reply_topic_allowed(role, client, msg.response_topic):
            self._drop_request(msg, f"its response topic {msg.response_topic[:200]!r} is outside "
                                    f"{self.topics.reply_namespace(role, client)}")
            return
        try:
            verb = Verb(verb_name)
        except ValueError:
            self._reply(msg, error(UnknownVerbError.code, f"no verb {role_name}/{verb_name}"))
            return
        if ROLE_OF_VERB[verb] is not role:
            allowed = ROLE_OF_VERB[verb].value
            self._reply(msg, error(UnknownVerbError.code, f"verb '{verb.value}' is sent on rpc/{allowed}/, not rpc/{role.value}/"))
            return
        try:
            # A manifest sent with `reload --file` may be up to MAX_MANIFEST_BYTES (docs/CLI.md); it is
            # escaped inside JSON, so the request is allowed twice that (still under the broker's 4 MiB).
            limit = 2 * defaults.MAX_MANIFEST_BYTES if verb is Verb.RELOAD else defaults.MAX_REQUEST_BYTES
            body = decode(msg.payload, max_bytes=limit)
            request_id = field(body, "request_id", str, "")
            if len(request_id) > MAX_REQUEST_ID_CHARS:
                # Every remembered reply is keyed by it: a long id is database growth the sender chose.
                raise BadRequestError(f"field 'request_id' is {len(request_id)} characters; at most "
                                      f"{MAX_REQUEST_ID_CHARS}")
        except MqfleetError as e:
            self._reply(msg, error(e.code, str(e)))
            return
        req = Request(verb=verb, role=role, client=client, body=body, now=self.clock())
        spec = VERBS[verb]
        key = f"{role.value}/{client}/{verb.value}/{request_id}" if request_id and spec.remembered else ""
        if spec.prepare is not None:
            # Slow work (reading an artifact back) runs off the dispatcher thread.
            if key in self._in_flight:
                logger.info("request %s is still being handled; the redelivery waits for its reply", key)
                return
            if key:
                self._in_flight.add(key)
            self._verify_pool.submit(self._handle, msg, req, key)
            return
        self._handle(msg, req, key)

    def _handle(self, msg: Message, req: Request, key: str) -> None:
        spec = VERBS[req.verb]
        started = time.perf_counter()
        try:
            reply = self._execute(req, key, spec)
        except Exception:
            logger.exception("%s from %s failed", req.verb.value, req.client)
            reply = error("internal", f"the coordinator failed to handle '{req.verb.value}'; see its log")
        finally:
            self._in_flight.discard(key)
        self._reply(msg, reply)
        if req.verb is Verb.RELOAD:
            # the parsed manifest (the prepared rows, local to _execute) is garbage only now
            return_freed_memory()
        if self.metrics is not None:
            self.metrics.observe_request(req.verb.value, reply, time.perf_counter() - started)

    def _execute(self, req: Request, key: str, spec: VerbSpec) -> dict[str, Any]:
        try:
            return self._execute_once(req, key, spec)
        except UnavailableError as e:
            # Never remembered: the agent's retry (same request id) must run the request once the database is back.
            logger.warning("%s from %s not handled: %s", req.verb.value, req.client, e)
            return error(e.code, f"{e}; the coordinator answers again once its database is back: retry")

    def _execute_once(self, req: Request, key: str, spec: VerbSpec) -> dict[str, Any]:
        mac = ""
        if req.role is Role.OPERATOR:
            # Before the reply memory: a stored `ok` must never answer a request signed with the wrong token.
            try:
                mac = verify_request(self.config.operator_token, req.verb.value, req.body, req.now)
            except MqfleetError as e:
                logger.warning("%s from %s refused: %s", req.verb.value, req.client, e)
                return error(e.code, str(e))  # not remembered: the sender may retry with the right token
        if key:
            remembered = self.state.remembered_reply(key)
            if remembered is not None:
                logger.info("request %s redelivered; answering with the remembered reply", key)
                return remembered
        try:
            if mac:
                check_not_replayed(self.state, mac, req.now)
            if spec.prepare is not None:
                req = Request(**{**req.__dict__, "prepared": spec.prepare(self, req)})
            with self.lock:
                # An ended attempt's lines are committed with its end: `completed` implies all of them on disk.
                lines = self.history.take_queued() if req.verb in (Verb.COMPLETE, Verb.FAIL) else []
                try:
                    with self.state.transaction():
                        self.history.write_batches(lines, self.log_max_lines)
                        # Under the write lock: another coordinator may have answered a redelivery meanwhile.
                        again = self.state.remembered_reply(key) if key else None
                        if again is not None:
                            return again
                        reply = spec.handler(self, req)
                        if key:
                            self.state.remember_reply(key, reply, req.now)
                except BaseException:
                    self.history.requeue(lines)  # rolled back with the refusal: written by the next flush
                    raise
                self._after_commit(req)
            return reply
        except MqfleetError as e:
            if isinstance(e, UnavailableError):
                raise
            reply = error(e.code, str(e))
            if isinstance(e, ManifestError):
                reply["problems"] = [{"place": p.place, "message": p.message} for p in e.problems]
            candidates = getattr(e, "candidates", None)
            if candidates:
                reply["candidates"] = list(candidates)
            if key:
                self.state.remember_reply(key, reply, req.now)
            level = logging.INFO if req.role is Role.QUERY else logging.WARNING
            logger.log(level, "%s from %s refused: %s", req.verb.value, req.client, e)
            return reply

    def _after_commit(self, req: Request) -> None:
        claimable = self._publish_changes()
        if req.verb is Verb.RELOAD:
            # Added and changed jobs do not pass through an event; any host may have work now.
            self.nudge(req.verb.value, req.now)
            # A reload rewrites rows without events (priority, in_manifest): their states are found by digest.
            self.republisher.request_sweep()
        elif req.verb is Verb.UNDRAIN:
            self.nudge(req.verb.value, req.now, hosts=[field(req.body, "host", str)])
        else:
            self._nudge_for(claimable, req.verb.value, req.now)

    def _is_renewal(self, topic: str) -> bool:
        parsed = self.topics.parse_rpc(topic)
        return parsed is not None and parsed[0] == Role.AGENT.value and parsed[2] == Verb.RENEW.value

    def _drop_request(self, msg: Message, why: str) -> None:
        """Count and log (one line, rate-limited) a request that gets no reply at all."""
        with self._drop_lock:
            self.dropped_requests += 1
            count = self.dropped_requests
        if count <= 10 or count % 100 == 0:
            logger.warning("request on %s dropped (%d so far): %s", msg.topic[:200], count, why)

    def _reply(self, msg: Message, reply: dict[str, Any]) -> None:
        if msg.response_topic:
            self.conn.reply(msg, reply)
        else:
            logger.debug("request on %s had no response topic; reply dropped", msg.topic)

    # --- what agents publish ------------------------------------------------------------

    def _on_advert(self, msg: Message) -> None:
        host = self._host_of(msg)
        if not host or not msg.payload:
            return
        try:
            # The topic (pinned by the broker ACL) names the host, never the payload.
            advert = parse_advert(host, decode(msg.payload)).to_wire()
        except MqfleetError as e:
            logger.warning("advert of %s refused, its last good advert stays: %s", host, e)
            with self.lock:
                self.advert_problems[host] = f"latest advert refused: {e}"
                self.advert_problems.move_to_end(host)
                while len(self.advert_problems) > ADVERT_PROBLEMS_KEPT:
                    self.advert_problems.popitem(last=False)
            return
        self.hosts.record_advert(host, advert, self.clock())
        with self.lock:
            self.advert_problems.pop(host, None)

    def _on_status(self, msg: Message) -> None:
        host = self._host_of(msg)
        if not host or not msg.payload:
            return
        try:
            state = field(decode(msg.payload), "state", str)
        except MqfleetError as e:
            logger.warning("status of %s ignored: %s", host, e)
            return
        if state not in ("online", "offline"):
            logger.warning("status of %s ignored: unknown state %r", host, state)
            return
        now = self.clock()
        with self.lock:
            shortened = self.hosts.record_presence(host, state == "online", now, grace_s=self.grace_s)
            if shortened:
                logger.warning("host %s went offline; %d lease(s) now expire within the grace", host, len(shortened))
            self._nudge_for(self._publish_changes(), f"host {host} {state}", now)

    def _on_log(self, msg: Message) -> None:
        parsed = self.topics.parse_log(msg.topic)
        if parsed is None or not self.is_leader:
            # Every coordinator receives every batch; the leader alone files them, or each line would be
            # stored once per coordinator. Batches sent while the lead moves are lost, like any QoS 0 batch.
            return
        host, job_id = parsed
        try:
            body = decode(msg.payload)
        except MqfleetError:
            return
        lines, attempt = body.get("lines", []), body.get("attempt")
        if not isinstance(lines, list) or (attempt is not None and (isinstance(attempt, bool) or not isinstance(attempt, int))):
            return
        # Bounded before anything is kept: lines past the batch cap are dropped, long lines cut.
        kept = [str(line)[:MAX_LOG_LINE_CHARS] for line in lines[:MAX_LOG_LINES_PER_BATCH]]
        with self.lock:
            # Only a host that ran an attempt of this job writes its log, filed under that attempt: a topic
            # naming another host's job (or an invented one) is nobody's output (docs/SECURITY.md).
            number = self.history.attempt_of_host(job_id, host, attempt) if self.is_known_host(host) else None
            if number is None:
                self._count_refused_log(host, job_id)
                return
            max_lines = self.manifest.fleet.log_max_lines if self.manifest else defaults.LOG_MAX_LINES
            kept = self._within_log_budget(job_id, number, kept)
            # Stored durably, batched per sweep: a coordinator restart loses none of an ended attempt's lines
            # (docs/OPERATIONS.md, "Logs").
            self.history.queue_lines(job_id, number, kept, max_lines)

    def _within_log_budget(self, job_id: str, attempt: int, lines: list[str]) -> list[str]:
        """Lines as stored: once an attempt's output passed LOG_BYTES_PER_ATTEMPT, each further line is cut to
        LOG_LINE_CHARS_PAST_BUDGET, so one attempt holds at most about budget + log_max_lines x that in the
        database however long its lines (docs/SECURITY.md); the line count cap still drops the oldest."""
        key = (job_id, attempt)
        seen = self._log_bytes_seen.pop(key, 0)
        self._log_bytes_seen[key] = seen + sum(len(line) for line in lines)
        while len(self._log_bytes_seen) > LOG_BUDGETS_KEPT:
            self._log_bytes_seen.popitem(last=False)
        if seen + sum(len(line) for line in lines) <= defaults.LOG_BYTES_PER_ATTEMPT:
            return lines
        cut = defaults.LOG_LINE_CHARS_PAST_BUDGET
        return [line if len(line) <= cut else line[:cut] + " [cut: output over budget]" for line in lines]

    def _count_refused_log(self, host: str, job_id: str) -> None:
        with self._drop_lock:
            self.refused_log_batches += 1
            count = self.refused_log_batches
        if count <= 10 or count % 100 == 0:
            logger.warning("log batch from %s for job %s refused (%d so far): that host ran no attempt of it",
                           host, job_id[:64], count)

    def _host_of(self, msg: Message) -> str | None:
        parsed = self.topics.parse_host_topic(msg.topic)
        return parsed[0] if parsed else None

    # --- what the coordinator publishes -------------------------------------------------

    def _publish_changes(self) -> list[str]:
        """Publish retained job states and events committed since last time; returns the jobs that may have
        become claimable (back to pending, or waiting on a job that completed)."""
        changed = set(self._changed_jobs)
        self._changed_jobs.clear()
        claimable: list[str] = []
        # While a backlog of events drains in the background, new ones wait their turn behind it, so
        # the events topic keeps the database's order.
        if not self.republisher.has_event_backlog():
            changes = self.state.take_changes(limit=BULK_CHANGES + 1)
            claimable, jobs = self._publish_events(changes)
            changed |= jobs
            if len(changes) > BULK_CHANGES:
                # A manifest load added thousands of jobs: queueing every event and state at once would
                # hold them all in memory and flood the broker; the rest go out at a bounded rate.
                self.republisher.defer_events()
        self._publish_states(changed)
        for event in self.hosts.take_events():  # quarantines (docs/RELIABILITY.md, "Jobs that misbehave")
            self.conn.publish(self.topics.events, event, qos=1)
        return claimable

    def _publish_event_batch(self, limit: int) -> tuple[int, bool]:
        """The background's step through an event backlog (lock held): messages sent, and whether more wait."""
        changes = self.state.take_changes(limit=limit)
        claimable, jobs = self._publish_events(changes)
        self._publish_states(jobs)
        # jobs a manifest added were announced by the reload's (or the start's) nudge already
        added = {c["job_id"] for c in changes if c.get("reason") == "added"}
        self._nudge_for([j for j in claimable if j not in added], "work", self.clock())
        return len(changes) + len(jobs), len(changes) == limit

    def _publish_events(self, changes: list[dict[str, Any]]) -> tuple[list[str], set[str]]:
        claimable: list[str] = []
        jobs: set[str] = set()
        for change in changes:
            self.conn.publish(self.topics.events, change, qos=1)
            # A completion frees a slot on its own agent, which claims again by itself; other agents
            # are nudged only when it unblocked a waiting job, so idle agents are not stampeded.
            to = change.get("to")
            if to == JobStatus.PENDING.value:
                claimable.append(change["job_id"])
            elif to == JobStatus.COMPLETED.value:
                claimable.extend(self.catalog.pending_dependents(change["job_id"]))
            jobs.add(change["job_id"])
        return claimable, jobs

    def _publish_states(self, job_ids: set[str]) -> None:
        for job_id in job_ids:
            try:
                row = self.catalog.job(job_id)
            except MqfleetError:
                continue
            self.republisher.publish_state(row)


    def _nudge_for(self, job_ids: list[str], reason: str, now: float) -> None:
        """Wake the idle hosts that could claim one of these jobs (all agents when there are too many to sort)."""
        if not job_ids:
            return
        if len(job_ids) > NUDGE_TARGET_MAX_JOBS:
            self.nudge(reason, now)
            return
        specs = self.catalog.claimable_specs(job_ids, now)
        manifest = self.manifest
        if not specs or manifest is None:
            return  # blocked, or taken already: nobody can claim them now
        hosts = scheduler.hosts_to_wake(specs, self.hosts.views(manifest.hosts), commit=manifest.fleet.commit)
        if not hosts:
            # Every eligible host is busy: the first to free a slot claims by itself.
            logger.debug("%d claimable job(s) after %s: no eligible idle host to nudge", len(specs), reason)
            return
        self.nudge(reason, now, hosts=hosts, jobs=[s.id for s in specs])

    def nudge(self, reason: str, now: float, *, hosts: list[str] | None = None, jobs: list[str] | None = None) -> None:
        """QoS 0 `work` to the agents (only those named in `hosts` act on it); a lost nudge costs one idle poll."""
        payload: dict[str, Any] = {"reason": reason, "ts": now}
        if hosts is not None:
            payload["hosts"] = hosts
        if jobs is not None:
            payload["jobs"] = jobs[:NUDGE_TARGET_MAX_JOBS]
        logger.debug("nudge (%s) to %s", reason, ", ".join(hosts) if hosts is not None else "every agent")
        self.conn.publish(self.topics.work, payload, qos=0)

    def _publish_status(self, now: float) -> None:
        self._last_status_ts = now
        self.conn.publish(self.topics.coordinator_status, self.health(now), qos=1, retain=True)

    def mark_changed(self, job_id: str) -> None:
        """Republish a job's retained state after commit though its status did not change."""
        self._changed_jobs.add(job_id)

    def mark_progress(self, job_id: str) -> None:
        """Republish a job's retained state for new progress: now, or within a second of the last time."""
        now = self.clock()
        last = self._progress_ts.get(job_id)
        if last is None or now - last >= PROGRESS_REPUBLISH_S:
            self._progress_ts[job_id] = now
            self._progress_due.discard(job_id)
            self._changed_jobs.add(job_id)
        else:
            self._progress_due.add(job_id)

    def _release_progress(self, now: float) -> None:
        """Queue the held-back progress states whose second has passed; forget jobs quiet for a minute."""
        for job_id in [j for j in self._progress_due if now - self._progress_ts.get(j, 0.0) >= PROGRESS_REPUBLISH_S]:
            self._progress_due.discard(job_id)
            self._progress_ts[job_id] = now
            self._changed_jobs.add(job_id)
        for job_id in [j for j, ts in self._progress_ts.items() if now - ts > 60.0 and j not in self._progress_due]:
            del self._progress_ts[job_id]

    def send_control(self, host: str, message: dict[str, Any]) -> None:
        """QoS 1 to the agent's persistent session: it arrives even across a reconnect."""
        self.conn.publish(self.topics.control(host), message, qos=1)

    # --- queries --------------------------------------------------------------------------

    def advert_problem(self, host: str) -> str | None:
        """Why `host`'s latest advert was refused (its last good one stays), or None."""
        with self.lock:
            return self.advert_problems.get(host)

    def job_logs(self, job_id: str, attempt: int | None = None) -> tuple[int | None, list[str], list[int]]:
        """(attempt shown, its lines, every attempt number): the stored output of one attempt, by default
        the latest that has any; an attempt whose lines are gone (pruned, or from an older version)
        shows its stored tail."""
        with self.lock:
            self.flush_lines()
            attempts = self.catalog.attempts(job_id)
            numbers = [int(a["number"]) for a in attempts]
            if attempt is None:
                with_lines = self.history.attempts_with_lines(job_id)
                attempt = with_lines[-1] if with_lines else (numbers[-1] if numbers else None)
            if attempt is None:
                return None, [], numbers
            if attempt not in numbers:
                listed = ", ".join(map(str, numbers)) or "none yet"
                raise NotFoundError(f"job {job_id[:12]} has no attempt {attempt} (its attempts: {listed})")
            lines = self.history.lines(job_id, attempt)
        if not lines:
            tail = next((a.get("output_tail") or "" for a in attempts if a["number"] == attempt), "")
            lines = tail.splitlines()
        return attempt, lines, numbers

    def health(self, now: float) -> dict[str, Any]:
        """The `health` reply and retained status: counts, the manifest in force, the checks' results, and
        the coordinators sharing the state (this one named by `coordinator`)."""
        try:
            coordinators = self.peers.listing(now)
        except MqfleetError as e:
            coordinators = []
            logger.warning("coordinators table unreadable: %s", e)
        report = dataclasses.replace(
            health_report(self, now), coordinator=self.config.client_id, role="leader" if self.is_leader else "follower",
            state_store="postgresql" if self.shared else "sqlite", coordinators=coordinators,
        )
        return report.to_wire()


def return_freed_memory() -> None:
    """Give the memory a manifest load used back to the system (a Pi has 1-4 GB).

    Parsing 100,000 jobs builds hundreds of MB of objects that are garbage once
    their rows are written; without this the process keeps that peak as its RSS.
    """
    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the allocator keeps its own counsel

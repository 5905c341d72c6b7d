"""The coordinator service: `Coordinator`, the one process that decides who trains what, assembled
from its parts (coordinator/core.py lists them) and started and stopped here.

The state file's one lock (`StateFile.lock`) serialises every use of the database:
requests arrive on the MQTT connection's dispatcher thread, artifact checks on a
small pool, and the sweep on its own timer thread. Job states and events are
published only after their transaction commits, and under the same lock, so a
subscriber never sees a state the database lacks, nor two states out of order.
The manifest in force is the service's; the database modules get its settings passed in.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from mqfleet import __version__
from mqfleet.coordinator.core import CoordinatorConfig
from mqfleet.coordinator.dispatch import RequestDispatch
from mqfleet.coordinator.feed import Feed
from mqfleet.coordinator.health import HealthChecks, health_report
from mqfleet.coordinator.leader import Leadership
from mqfleet.coordinator.listeners import AgentListeners
from mqfleet.coordinator.manifest_keeper import ManifestInForce
from mqfleet.coordinator.outbox import Outbox
from mqfleet.coordinator.owner_defaults import OwnerDefaults
from mqfleet.coordinator.republish import StateRepublisher, record_published, state_page
from mqfleet.coordinator.sql.postgres import is_postgres_url, open_state
from mqfleet.coordinator.sweep import Sweep
from mqfleet.coordinator.tables import peers
from mqfleet.coordinator.tables.artifacts import Artifacts
from mqfleet.coordinator.tables.catalog import Catalog
from mqfleet.coordinator.tables.checkpoints import CheckpointBook
from mqfleet.coordinator.tables.claims import Claims
from mqfleet.coordinator.tables.garbage import UploadWindow
from mqfleet.coordinator.tables.history import AttemptHistory
from mqfleet.coordinator.tables.hosts import Hosts
from mqfleet.coordinator.tables.leases import Leases
from mqfleet.coordinator.tables.manifests import ManifestHistory, StoredManifest
from mqfleet.coordinator.tables.upload_limits import UploadLimits
from mqfleet.coordinator.takeover import TakeoverWatch
from mqfleet.errors import ManifestError, MqfleetError, NotFoundError
from mqfleet.manifest.types import Manifest
from mqfleet.mqtt.connection import Connection
from mqfleet.store.base import ArtifactStore, open_store
from mqfleet.wire.requests import Health, Presence
from mqfleet.wire.topics import Topics, encode

if TYPE_CHECKING:
    from mqfleet.coordinator.metrics import CoordinatorMetrics

logger = logging.getLogger(__name__)

#: The shared-subscription group of the coordinators of one fleet (MQTT v5 `$share/<group>/<filter>`).
SHARE_GROUP = "mqfleet-coordinators"


class Coordinator(RequestDispatch, AgentListeners, Outbox, Sweep, Leadership, ManifestInForce):
    """The one process that decides who trains what."""

    def __init__(self, config: CoordinatorConfig, *, clock: Callable[[], float] = time.time) -> None:
        config.validate()
        self.config = config
        self.clock = clock
        self.topics = Topics(config.prefix)
        self.started_ts = clock()
        #: On PostgreSQL several coordinators may serve one fleet: requests come through a shared
        #: subscription and the sweep runs on the leader alone (coordinator/tables/peers.py).
        self.shared = is_postgres_url(config.state_target)
        self.state = open_state(config.state_target, writer=f"{config.client_id}-{secrets.token_hex(3)}",
                                password_file=config.db_password_file)
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
        self.upload_limits = UploadLimits()
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

            self.metrics = CoordinatorMetrics(self.state, last_sweep_ts=lambda: self.last_sweep_ts, clock=clock,
                                              counts=self._process_counts)
        #: Why each host's latest advert was refused (its last good one stays in force).
        self.advert_problems: OrderedDict[str, str] = OrderedDict()
        #: Characters of output seen per (job, attempt) since this process started (_within_log_budget).
        self._log_bytes_seen: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._in_flight: set[str] = set()
        #: Requests queued during the connection's current step, run as one group at its end.
        self._waiting_requests = []
        #: Requests answered as part of a group of several (one commit each group).
        self.grouped_requests = 0
        self._changed_jobs: set[str] = set()
        #: job id -> when its state was last published for progress, and the jobs whose latest progress waits
        self._progress_ts: dict[str, float] = {}
        self._progress_due: set[str] = set()
        self._verify_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="verify")
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        self._last_status_ts = 0.0
        self._last_tick_ts = self.started_ts
        #: Guards the counts of dropped requests and refused log batches, and the log budgets (_log_bytes_seen).
        self._drop_lock = threading.Lock()
        #: Requests dropped unanswered: retained, or with a Response Topic outside the sender's namespace.
        self.dropped_requests = 0
        #: Log batches refused because their host does not hold the job's current lease.
        self.refused_log_batches = 0
        #: Retained messages deleted from request and log topics (outbox.clear_retained).
        self.retained_cleared = 0
        self.takeovers = TakeoverWatch(config.broker, client_id=self.topics.client_id(config.client_id),
                                       reply_prefix=config.prefix)
        #: What the coordinator made public or accepted, for followers in this process (the web dashboard)
        self.feed = Feed(self.topics)
        self.conn = Connection(
            config.broker,
            client_id=self.topics.client_id(config.client_id),
            will=(self.topics.coordinator_status, encode({"state": Presence.OFFLINE, "coordinator": config.client_id}), True),
            # A clean session on purpose: mosquitto 2.0.11 keeps a persistent session's subscriptions across
            # its own restart but never delivers what it queued for them, so requests would vanish with a
            # success PUBACK. With none, senders get "no matching subscribers" and send again until we are
            # back (mqtt.Connection.request_raw; docs/RELIABILITY.md, "Requests across a reconnect").
            on_connect=self._on_connect,
            reply_prefix=config.prefix,
            # Renewals go ahead of every other request waiting: a burst of claims, log batches or
            # listings never holds one back until its lease expires (issue 17).
            is_urgent=self._is_renewal,
            # The requests that arrived together run as one group, committed once (group commit), when
            # the dispatcher has no more messages waiting (issue 17).
            after_step=self.run_waiting_requests,
            # Our own sockets, so the takeover watch tells our reconnects from someone else's connects.
            on_socket=self.takeovers.saw_socket,
            # Events, job states and the status, as the bus gets them, to the feed's followers (none: no cost).
            on_publish=self.feed.published,
        )
        self.owner_defaults = OwnerDefaults(self.conn, self.topics, known_hosts=lambda: [
            r[0] for r in self.state.read("SELECT id FROM hosts")])
        self.republisher = StateRepublisher(
            lock=self.lock, read_page=lambda after, limit: state_page(self.state, after, limit),
            write_digests=lambda digests: record_published(self.state, digests),
            publish=lambda topic, data: self.conn.publish(topic, data, qos=1, retain=True),
            topic_of=self.topics.job_state, publish_events=self._publish_event_batch,
            queued=lambda: self.conn.unacked_publishes(),
        )


    # --- life cycle -------------------------------------------------------------------

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
            self.conn.subscribe(t.coordinator_status, self.in_request_order(self._on_peer_status), no_local=True)
        else:
            # no_local: the coordinator never handles its own publishes, whatever topic they went to.
            self.conn.subscribe(t.all_rpc, self._on_request, no_local=True, retain_as_published=True)
        # After the requests that arrived before them: a host's will is never handled ahead of its last claim.
        self.conn.subscribe(t.all_adverts, self.in_request_order(self._on_advert), no_local=True)
        self.conn.subscribe(t.all_statuses, self.in_request_order(self._on_status), no_local=True)
        self.conn.subscribe(t.all_logs, self.in_request_order(self._on_log), qos=0, no_local=True,
                            retain_as_published=True)
        self.conn.start(wait_s=wait_s)
        self.takeovers.start(wait_s=None)  # in the background: it only counts, and never holds up a start
        # A coordinator killed between commit and publish left retained states behind the database:
        # the states that differ from what was last published are republished in the background, at
        # a bounded rate, while requests are answered (docs/RELIABILITY.md, "Restarts").
        self.republisher.start()
        if self.is_leader:
            self.republisher.request_sweep()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="sweeper", daemon=True)
        self._sweeper.start()
        logger.info("coordinator %s serving on %s (prefix %s)", __version__, self.config.broker.url, t.prefix)

    def request_stop(self) -> None:
        """Ask `run_forever` to return; safe from a signal handler (it only sets an event)."""
        self._stop.set()

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
        offline = encode({"state": Presence.OFFLINE, "ts": self.clock(), "coordinator": self.config.client_id})
        final = [(self.topics.coordinator_status, offline, True)]
        try:
            self.election.release()
            self.peers.forget()
            if self.shared and self.peers.others_alive(self.clock()):
                final = []  # another coordinator serves the fleet; its leader publishes the status
        except MqfleetError as e:
            logger.warning("coordinators table not updated at stop: %s", e)
        self.conn.stop(final=final)
        self.takeovers.stop()
        self.state.close()
        logger.info("coordinator stopped")

    def run_forever(self) -> None:
        """Block until stop() is called (from a signal handler)."""
        while not self._stop.wait(1.0):
            pass

    def _on_connect(self, session_present: bool) -> None:
        self.run_waiting_requests()
        with self.lock:
            if self.is_leader:
                self._publish_status(self.clock())
            self._publish_changes()
        # Agents that missed nudges while we were away learn there may be work.
        self.nudge("coordinator online", self.clock())
        self.owner_defaults.publish(self.manifest.hosts if self.manifest is not None else {}, everyone=True)

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
            numbers = [a.number for a in attempts]
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
            tail = next((a.output_tail or "" for a in attempts if a.number == attempt), "")
            lines = tail.splitlines()
        return attempt, lines, numbers

    def _process_counts(self) -> dict[str, int]:
        """The counts kept in memory that the metrics serve, by their `health` field names."""
        return {"session_takeovers": self.takeovers.count, "retained_cleared": self.retained_cleared,
                "requests_dropped": self.dropped_requests, "log_batches_refused": self.refused_log_batches}

    def health(self, now: float) -> Health:
        """The `health` reply and retained status: counts, the manifest in force, the checks' results, and
        the coordinators sharing the state (this one named by `coordinator`)."""
        try:
            coordinators = self.peers.listing(now)
        except MqfleetError as e:
            coordinators = []
            logger.warning("coordinators table unreadable: %s", e)
        return dataclasses.replace(
            health_report(self, now), coordinator=self.config.client_id, role="leader" if self.is_leader else "follower",
            session_takeovers=self.takeovers.count,
            state_store="postgresql" if self.shared else "sqlite", coordinators=coordinators,
        )

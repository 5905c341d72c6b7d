"""The coordinator's Prometheus endpoint (`--metrics-port`): request counters and timings kept in
memory, and the fleet's state read from the database at each scrape (docs/OPERATIONS.md, "Metrics").

State gauges are computed when Prometheus asks, not kept up to date on every change: bookkeeping
would cost every claim something. A scrape reads through a connection of its own (on SQLite, WAL lets
a reader run beside the writer; PostgreSQL readers never block), so its counts, some 80 ms with 100,000
attempts, never hold the state's lock nor hold up a request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from mqfleet.coordinator.scrape_endpoint import MetricsServer
from mqfleet.coordinator.sql.connection import SqlConnection, one_row
from mqfleet.coordinator.sql.sqlite import StateFile
from mqfleet.errors import ConfigurationError
from mqfleet.lifecycle import Cause, JobStatus
from mqfleet.wire.codec import Wire
from mqfleet.wire.topics import Verb

logger = logging.getLogger(__name__)

#: Request latency buckets (seconds): claims take milliseconds, a complete that reads a big artifact back, seconds.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_VERBS = frozenset(v.value for v in Verb)
_CAUSES = ("completed", *(c.value for c in Cause))
#: Counts the coordinator keeps in memory since it started (its `health` fields of the same names):
#: each is served as the counter `mqfleet_<name>_total`.
PROCESS_COUNTERS = {
    "session_takeovers": "Times the broker disconnected the coordinator because another client took its client id.",
    "retained_cleared": "Retained messages the coordinator deleted from request and log topics.",
    "requests_dropped": "Requests dropped unanswered (retained, or a Response Topic outside the sender's namespace).",
    "log_batches_refused": "Log batches refused: their host ran no attempt of the job.",
}


class _StateCollector:
    """Gauges and counters read from the database at scrape time."""

    def __init__(self, state: StateFile, last_sweep_ts: Callable[[], float], clock: Callable[[], float]) -> None:
        self.state = state
        self.last_sweep_ts = last_sweep_ts
        self.clock = clock
        self._reader: SqlConnection | None = None  # opened at the first scrape
        self._reader_lock = threading.Lock()

    def _connection(self) -> tuple[SqlConnection, threading.Lock]:
        """(connection, lock) to read through: a connection of the collector's own, so a scrape never waits
        for the state's lock nor holds up a request (WAL lets an SQLite reader run beside the writer;
        PostgreSQL readers never block writers)."""
        with self._reader_lock:
            if self._reader is None:
                self._reader = self.state.open_reader("metrics")
        return self._reader, self._reader_lock

    def close(self) -> None:
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def collect(self) -> Iterator[Metric]:
        c, lock = self._connection()
        with lock:
            by_status = {r[0]: int(r[1]) for r in c.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status")}
            online, draining = one_row(c.execute(
                "SELECT COALESCE(SUM(online), 0), COALESCE(SUM(draining), 0) FROM hosts"
            ))
            leases = int(one_row(c.execute("SELECT COUNT(*) FROM leases"))[0])
            ended = {r[0]: int(r[1]) for r in c.execute(
                "SELECT outcome, COUNT(*) FROM attempts WHERE outcome IS NOT NULL GROUP BY outcome"
            )}
            artifact_bytes = int(one_row(c.execute("SELECT COALESCE(SUM(size), 0) FROM job_artifacts"))[0])
        jobs = GaugeMetricFamily("mqfleet_jobs", "Jobs by status.", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], by_status.get(status.value, 0))
        yield jobs
        yield GaugeMetricFamily("mqfleet_hosts_online", "Hosts whose retained status says online.", value=int(online))
        yield GaugeMetricFamily("mqfleet_hosts_draining", "Hosts drained by an operator.", value=int(draining))
        yield GaugeMetricFamily("mqfleet_leases_active", "Live job leases.", value=leases)
        attempts = CounterMetricFamily(
            "mqfleet_attempts_ended", "Attempts ended, by cause (completed, app, lost, preempted, oom, timeout, stalled, cancelled; shutdown from older agents).", labels=["cause"]
        )
        for cause in sorted({*_CAUSES, *ended}):
            attempts.add_metric([cause], ended.get(cause, 0))
        yield attempts
        last = self.last_sweep_ts()
        lag = max(0.0, self.clock() - last) if last else 0.0
        yield GaugeMetricFamily("mqfleet_sweep_lag_seconds", "Seconds since the lease sweep last finished.", value=lag)
        yield CounterMetricFamily(
            "mqfleet_artifact_bytes", "Bytes of the verified artifacts of completed jobs.", value=artifact_bytes
        )


class _ProcessCounters:
    """The PROCESS_COUNTERS, read from the coordinator at scrape time."""

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self.counts = counts

    def describe(self) -> Iterator[Metric]:
        # The registry asks at registration, before the coordinator has what the counts read.
        for name, help_text in PROCESS_COUNTERS.items():
            yield CounterMetricFamily(f"mqfleet_{name}", help_text)

    def collect(self) -> Iterator[Metric]:
        counts = self.counts()
        for name, help_text in PROCESS_COUNTERS.items():
            yield CounterMetricFamily(f"mqfleet_{name}", help_text, value=counts.get(name, 0))


class CoordinatorMetrics:
    """The registry behind /metrics, and the HTTP server that serves it."""

    def __init__(self, state: StateFile, *, last_sweep_ts: Callable[[], float], clock: Callable[[], float] = time.time,
                 counts: Callable[[], Mapping[str, int]] = dict) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "mqfleet_requests", "Requests answered, by verb and outcome (ok or the error code).",
            ["verb", "outcome"], registry=self.registry,
        )
        self.request_seconds = Histogram(
            "mqfleet_request_seconds", "Time from a request's arrival to its reply, by verb.",
            ["verb"], registry=self.registry, buckets=REQUEST_BUCKETS,
        )
        # The labelled children, looked up once: labels() builds a key and takes the family's lock every call.
        self._counted: dict[tuple[str, str], Counter] = {}
        self._timed: dict[str, Histogram] = {}
        self._state_collector = _StateCollector(state, last_sweep_ts, clock)
        self.registry.register(self._state_collector)
        self.registry.register(_ProcessCounters(counts))
        self._server: MetricsServer | None = None

    def observe_request(self, verb: str, reply: Wire, seconds: float) -> None:
        """Count one answered request; verbs outside the vocabulary are not labels (they come off the bus)."""
        if verb not in _VERBS:
            return
        outcome = "ok" if reply.get("ok") else str(reply.get("error") or "error")[:40]
        counter = self._counted.get((verb, outcome))
        if counter is None:  # two threads may both look it up: labels() hands both the same child
            counter = self._counted[(verb, outcome)] = self.requests.labels(verb, outcome)
        timer = self._timed.get(verb)
        if timer is None:
            timer = self._timed[verb] = self.request_seconds.labels(verb)
        counter.inc()
        timer.observe(seconds)

    def serve(self, host: str, port: int) -> None:
        """Serve /metrics on host:port (scrape_endpoint: bounded threads, read timeout); ConfigurationError when
        the port cannot be bound."""
        try:
            self._server = MetricsServer(host, port, self.registry)
        except OSError as e:
            raise ConfigurationError(
                f"metrics port {port} on {host} cannot be used ({e.strerror or e}); "
                f"pick a free port with --metrics-port or stop what holds it"
            ) from e
        self._server.start()
        logger.info("metrics served at http://%s:%d/metrics", host, self.port)

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return self._server.port if self._server is not None else 0

    @property
    def server(self) -> MetricsServer | None:
        return self._server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        self._state_collector.close()

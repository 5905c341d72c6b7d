"""Fault injectors of the soak: what each fault does, whom it hits, and what it measured.

The order of fault kinds and every choice of target come from `random.Random(seed)`.
Faults run one at a time, each waiting (bounded) for its effect to be measurable
before the next starts, so a figure such as "host death to pending" is never
blurred by a second fault in the same window.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import psutil

from mqfleet import defaults
from mqfleet.errors import LeaseLostError, MqfleetError
from mqfleet.lifecycle import Cause
from mqfleet.mqtt.config import BrokerConfig
from mqfleet.mqtt.connection import Connection
from mqfleet.mqtt.rpc import RpcClient
from mqfleet.soak.fleet import SoakFleet
from mqfleet.soak.observer import Observer
from mqfleet.wire.requests import CompleteRequest, FailRequest, RenewRequest
from mqfleet.wire.topics import JsonObject, Role, Verb

logger = logging.getLogger(__name__)

KINDS = ("agent_kill", "trainer_kill", "stall_short", "stall_grace", "stall_long", "coordinator_kill",
         "broker_restart", "duplicate", "reorder", "cancel", "hang")
#: Longest wait for any one fault's effect; a fault that has none by then is recorded as such.
EFFECT_TIMEOUT_S = 60.0
T = TypeVar("T")


def trainer_processes(root: Path, needle: str = "") -> list[psutil.Process]:
    """Live trainer processes whose output folder lies under `root` (and contains `needle`)."""
    found = []
    for proc in psutil.process_iter(["environ"]):
        try:
            out_dir = (proc.info.get("environ") or {}).get(defaults.ENV_OUT_DIR, "")
            if out_dir.startswith(str(root)) and needle in out_dir and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return sorted(found, key=lambda p: p.pid)


def wait_for(predicate: Callable[[], T], timeout_s: float, interval_s: float = 0.1) -> T:
    """The first truthy value of `predicate` within `timeout_s`, else its last (falsy) value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval_s)


@dataclass(frozen=True)
class FaultEntry:
    """One turn of the injector, as the report's fault log lists it."""

    t: float  # seconds since the injector started
    kind: str
    took_s: float
    detail: str

    def to_json(self) -> JsonObject:
        return {"t": self.t, "kind": self.kind, "took_s": self.took_s, "detail": self.detail}


@dataclass
class FaultRecord:
    """What the injector did and what it measured."""

    injected: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    death_to_pending_s: list[float] = field(default_factory=list)
    #: Each host death: (job id, the dead host, kill time); kill -> running on another host is read from the
    #: observer at the end, so waiting for it never slows the faults down.
    deaths: list[tuple[str, str, float]] = field(default_factory=list)
    stall_to_pending_s: list[float] = field(default_factory=list)
    deaths_completed_first: int = 0
    deaths_not_pending: int = 0
    stalls_kept: int = 0
    stalls_lost: int = 0
    orphans_after_agent_kill: int = 0
    stale_trainers: int = 0
    duplicates_sent: int = 0
    duplicates_same_reply: int = 0
    duplicates_unanswered: int = 0
    duplicate_mismatches: int = 0
    stale_sent: int = 0
    stale_refused: int = 0
    stale_accepted: int = 0
    cancels: int = 0
    cancels_refused: int = 0
    cancels_undelivered: int = 0
    cancel_to_trainer_gone_s: list[float] = field(default_factory=list)
    requeues: int = 0
    requeue_failures: int = 0
    coordinator_restart_s: list[float] = field(default_factory=list)
    #: `hang`: a trainer that stops printing must end `stalled` (then its retry completes, like every job).
    hangs: int = 0
    hangs_not_stalled: int = 0
    hang_to_stalled_s: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    log: list[FaultEntry] = field(default_factory=list)


class Injector:
    """Injects one fault at a time into a running SoakFleet."""

    def __init__(self, fleet: SoakFleet, observer: Observer, health: Callable[[], bool]) -> None:
        self.fleet = fleet
        self.config = fleet.config
        self.observer = observer
        self.health = health
        self.rng = random.Random(self.config.seed)
        self.record = FaultRecord()
        self.to_requeue: list[tuple[float, str]] = []
        assert fleet.broker is not None
        self.conn = Connection(BrokerConfig(url=fleet.broker.url), client_id=observer.topics.client_id("soak-injector"),
                               reply_prefix=self.config.prefix)
        self.conn.start(wait_s=15)
        self._host_conns: dict[str, Connection] = {}
        self._t0 = time.monotonic()

    def close(self) -> None:
        self.conn.stop(timeout_s=3)
        for conn in self._host_conns.values():
            conn.stop(timeout_s=3)

    def _conn_for(self, host: str) -> Connection:
        """A connection whose replies land in `host`'s reply namespace, the only place the coordinator answers."""
        conn = self._host_conns.get(host)
        if conn is None:
            t = self.observer.topics
            assert self.fleet.broker is not None
            conn = Connection(BrokerConfig(url=self.fleet.broker.url), client_id=t.client_id(f"soak-injector-{host}"),
                              reply_topic=f"{t.reply_namespace(Role.AGENT, host)}/soak-injector")
            conn.start(wait_s=15)
            self._host_conns[host] = conn
        return conn

    def kinds(self) -> Iterator[str]:
        """Every kind once per round, in a seeded order, so even a short run sees most of them."""
        while True:
            block = list(KINDS)
            self.rng.shuffle(block)
            yield from block

    def run(self, until_monotonic: float) -> None:
        """Inject faults until the deadline, then requeue every job it cancelled."""
        for kind in self.kinds():
            if time.monotonic() >= until_monotonic:
                break
            self.requeue_due()
            started = time.monotonic()
            try:
                detail = getattr(self, f"_{kind}")()
            except (MqfleetError, OSError, psutil.Error) as e:
                detail = f"injector error: {type(e).__name__}: {e}"
                self.record.problems.append(f"{kind}: {detail}")
            if detail is None:
                self.record.skipped[kind] += 1
            else:
                self.record.injected[kind] += 1
            self.record.log.append(FaultEntry(t=round(started - self._t0, 1), kind=kind,
                                              took_s=round(time.monotonic() - started, 1),
                                              detail=detail or "skipped: no target"))
            logger.info("fault %s: %s", kind, detail or "skipped")
            time.sleep(max(0.0, min(self.rng.uniform(1.0, 4.0), until_monotonic - time.monotonic())))
        self.requeue_due(everything=True)

    # --- processes -----------------------------------------------------------------------

    def _busy_host(self) -> tuple[str, list[str]] | None:
        busy = [h for h in self.config.hosts if self.observer.held_by(h) and self.fleet.agents[h].alive()]
        if not busy:
            return None
        host = self.rng.choice(busy)
        return host, self.observer.held_by(host)

    def _agent_kill(self) -> str | None:
        picked = self._busy_host()
        if picked is None:
            return None
        host, held = picked
        agent_dir = self.fleet.agents_dir / host
        t0 = time.time()
        self.fleet.agents[host].kill()
        # PDEATHSIG must take the trainer down with its agent; look before the restart reaps leftovers.
        left = wait_for(lambda: not trainer_processes(agent_dir), 5.0)
        if not left:
            orphans = trainer_processes(agent_dir)
            self.record.orphans_after_agent_kill += len(orphans)
            self.record.problems.append(f"agent_kill {host}: trainer(s) {[p.pid for p in orphans]} outlived the agent")
        # Restarted after a delay, with the same host id, as systemd's Restart= would.
        time.sleep(self.rng.uniform(1.0, 4.0))
        self.fleet.start_agent(host)
        delays = []
        for job_id in held:
            seen = wait_for(functools.partial(self.observer.first_seen, job_id, ("pending", "completed"), t0), EFFECT_TIMEOUT_S)
            if seen is None:
                self.record.deaths_not_pending += 1
                self.record.problems.append(f"agent_kill {host}: job {job_id[:12]} not pending {EFFECT_TIMEOUT_S:g}s after")
            elif self.observer.first_seen(job_id, ("pending",), t0) == seen:
                self.record.death_to_pending_s.append(seen - t0)
                delays.append(f"{seen - t0:.1f}s")
            else:
                self.record.deaths_completed_first += 1
        self.record.deaths.extend((job_id, host, t0) for job_id in held)
        return f"kill -9 {host} holding {len(held)} job(s); pending after {', '.join(delays) or '-'}"

    def _trainer_kill(self) -> str | None:
        procs = trainer_processes(self.fleet.agents_dir)
        if not procs:
            return None
        proc = self.rng.choice(procs)
        proc.kill()
        return f"kill -9 trainer pid {proc.pid}"

    def _stall_short(self) -> str | None:
        return self._stall(self.rng.uniform(0.5, 1.5), long=False)

    def _stall_grace(self) -> str | None:
        # Long enough for the broker to drop the agent (1.5x keepalive) and fire its will, short enough
        # for it to reconnect and renew inside the grace.
        return self._stall(1.5 * self.config.keepalive_s + self.rng.uniform(0.3, 0.8), long=False)

    def _stall_long(self) -> str | None:
        return self._stall(self.config.detection_bound_s + self.rng.uniform(3.0, 6.0), long=True)

    def _stall(self, stall_s: float, *, long: bool) -> str | None:
        picked = self._busy_host()
        if picked is None:
            return None
        host, held = picked
        agent = self.fleet.agents[host]
        old_trainers = trainer_processes(self.fleet.agents_dir / host)
        t0 = time.time()
        agent.signal(signal.SIGSTOP)
        try:
            time.sleep(stall_s)
        finally:
            agent.signal(signal.SIGCONT)
        if long:
            for job_id in held:
                seen = wait_for(functools.partial(self.observer.first_seen, job_id, ("pending", "completed"), t0), EFFECT_TIMEOUT_S)
                if seen is not None and self.observer.first_seen(job_id, ("pending",), t0) == seen:
                    self.record.stall_to_pending_s.append(seen - t0)
            # The agent learns on its next renew that the lease is gone and must stop those trainers.
            gone = wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in old_trainers),
                            self.config.lease_s + 15.0, interval_s=0.2)
            if not gone:
                self.record.stale_trainers += 1
                self.record.problems.append(f"stall_long {host}: trainer of a lost lease still runs")
            return f"SIGSTOP {host} for {stall_s:.1f}s holding {len(held)} job(s)"
        # A stall the grace covers must not cost the job: give the sweep time to have expired it if it would.
        time.sleep(self.config.grace_s + self.config.sweep_interval_s + 1.0)
        for job_id in held:
            if self.observer.first_seen(job_id, ("pending",), t0) is None:
                self.record.stalls_kept += 1
            else:
                self.record.stalls_lost += 1
        return f"SIGSTOP {host} for {stall_s:.1f}s holding {len(held)} job(s)"

    def _coordinator_kill(self) -> str | None:
        # with several coordinators (PostgreSQL), any of them: the leader or a follower
        name = self.rng.choice(sorted(self.fleet.coordinators))
        self.fleet.coordinators[name].kill()
        down_s = self.rng.uniform(0.5, 3.0)
        time.sleep(down_s)
        t0 = time.monotonic()
        self.fleet.start_coordinator(name)
        if not wait_for(self.health, 60.0, interval_s=0.5):
            self.record.problems.append(f"coordinator_kill: {name} restarted, and no coordinator answered within 60s")
        self.record.coordinator_restart_s.append(time.monotonic() - t0)
        return f"kill -9 {name}, down {down_s:.1f}s, answering {time.monotonic() - t0:.1f}s after restart"

    def _broker_restart(self) -> str | None:
        assert self.fleet.broker is not None
        t0 = time.monotonic()
        self.fleet.broker.restart()
        wait_for(lambda: self.observer.conn.connected and self.conn.connected, 20.0)
        return f"mosquitto restarted (persistence on), clients back after {time.monotonic() - t0:.1f}s"

    # --- deliveries ------------------------------------------------------------------------

    def _duplicate(self) -> str | None:
        answered = self.observer.answered(("claim", "renew", "upload_url", "complete", "fail"))[-300:]
        if not answered:
            return None
        picks = self.rng.sample(answered, min(3, len(answered)))
        verbs = []
        for _corr, captured, original in picks:
            # Same topic, same bytes (so the same request id): what a QoS 1 redelivery looks like.
            self.record.duplicates_sent += 1
            verbs.append(captured.verb)
            try:
                reply = self._conn_for(captured.host).request_raw(captured.topic, captured.payload, timeout_s=5.0)
            except MqfleetError:
                self.record.duplicates_unanswered += 1  # e.g. the original complete is still being verified
                continue
            if reply == original:
                self.record.duplicates_same_reply += 1
            else:
                self.record.duplicate_mismatches += 1
                self.record.problems.append(f"duplicate {captured.verb} from {captured.host}: reply {reply} != {original}")
        return f"redelivered {', '.join(verbs)}"

    def _reorder(self) -> str | None:
        stale = self.observer.stale_leases()
        if not stale:
            return None
        sent = []
        for job_id, lease_id, host in self.rng.sample(stale, min(3, len(stale))):
            verb = self.rng.choice((Verb.RENEW, Verb.COMPLETE, Verb.FAIL))
            request: RenewRequest | CompleteRequest | FailRequest
            if verb is Verb.RENEW:
                request = RenewRequest(job_id=job_id, lease_id=lease_id, progress={"progress": 0.5})
            elif verb is Verb.COMPLETE:
                request = CompleteRequest(job_id=job_id, lease_id=lease_id, sha256="0" * 64, size=1, metrics={},
                                          output_tail="stale complete from the soak")
            else:
                request = FailRequest(job_id=job_id, lease_id=lease_id, cause=Cause.APP, exit_code=1,
                                      output_tail="", error="stale fail from the soak")
            self.record.stale_sent += 1
            sent.append(verb.value)
            try:
                reply = RpcClient(self._conn_for(host), self.observer.topics, host).send(verb, request.to_wire(),
                                                                                       timeout_s=10.0)
            except MqfleetError as e:
                self.record.problems.append(f"stale {verb.value}: not answered: {e}")
                continue
            if not reply.get("ok") and reply.get("error") == LeaseLostError.code:
                self.record.stale_refused += 1
            else:
                self.record.stale_accepted += 1
                self.record.problems.append(f"stale {verb.value} for job {job_id[:12]} lease {lease_id[:8]}: {reply}")
        return f"stale-lease {', '.join(sent)}"

    # --- operator ------------------------------------------------------------------------------

    def _cancel(self) -> str | None:
        running = self.observer.running()
        if not running:
            return None
        job = self.rng.choice(running)
        job_id = job.id
        t0 = time.monotonic()
        result = self.fleet.cli("cancel", job_id)
        if result.returncode != 0:
            self.record.cancels_refused += 1  # it ended between our look and the cancel
            return f"cancel {job.name}: refused ({result.stdout.strip() or result.stderr.strip()})"[:300]
        self.record.cancels += 1
        self.to_requeue.append((time.monotonic() + self.rng.uniform(2.0, 8.0), job_id))
        needle = f"/jobs/{job_id[:16]}-"
        gone = wait_for(lambda: not trainer_processes(self.fleet.agents_dir, needle), 20.0, interval_s=0.2)
        if gone:
            self.record.cancel_to_trainer_gone_s.append(time.monotonic() - t0)
        else:
            self.record.cancels_undelivered += 1
            self.record.problems.append(f"cancel {job.name}: its trainer still runs 20s later")
        return f"cancel {job.name} (trainer gone after {time.monotonic() - t0:.1f}s)"

    def _hang(self) -> str | None:
        running = [j for j in self.observer.running() if j.name]
        if not running:
            return None
        job = self.rng.choice(running)
        name, job_id = job.name, job.id
        marker = self.fleet.hang_dir / name
        t0 = time.time()
        marker.write_text("hang\n", encoding="utf-8")
        picked_up = wait_for(lambda: not marker.exists(), 5.0, interval_s=0.2)
        if not picked_up:
            marker.unlink(missing_ok=True)  # it ended first; a later attempt must not hang for it
            return f"hang {name}: its trainer ended before it read the marker"
        self.record.hangs += 1
        seen = wait_for(functools.partial(self.observer.first_seen, job_id, ("pending", "failed"), t0),
                        self.config.stall_s + 2 * self.config.lease_s + 10.0)
        result = self.fleet.cli("show", job_id, "--json")
        try:
            causes = [a.get("cause") for a in json.loads(result.stdout).get("attempts_detail") or []]
        except ValueError:
            causes = []
        if seen is None or "stalled" not in causes:
            self.record.hangs_not_stalled += 1
            self.record.problems.append(f"hang {name}: attempt causes {causes}, not stalled")
            return f"hang {name}: not ended stalled ({causes})"
        self.record.hang_to_stalled_s.append(seen - t0)
        return f"hang {name}: ended stalled {seen - t0:.1f}s after it went silent (stall_s {self.config.stall_s:g})"

    def requeue_due(self, *, everything: bool = False) -> None:
        now = time.monotonic()
        due = [(t, j) for t, j in self.to_requeue if everything or t <= now]
        self.to_requeue = [(t, j) for t, j in self.to_requeue if (t, j) not in due]
        for _, job_id in due:
            result = self.fleet.cli("requeue", job_id)
            if result.returncode == 0:
                self.record.requeues += 1
            else:
                self.record.requeue_failures += 1
                self.record.problems.append(f"requeue {job_id[:12]}: {result.stdout.strip()} {result.stderr.strip()}"[:300])

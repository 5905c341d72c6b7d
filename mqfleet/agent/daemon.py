"""The agent daemon: adverts its host, claims work when a slot is free, runs each job, stops cleanly.

Claims happen when a slot frees, on every nudge from the coordinator on
`mqfleet/work`, on (re)connect, and on a slow safety poll in case a nudge was
missed while disconnected; there is no fixed delay before work starts.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from mqfleet import defaults
from mqfleet.agent.capability import detect_advert
from mqfleet.agent.command import inherited_env
from mqfleet.agent.isolation import TrainerUser, make_undumpable
from mqfleet.agent.job import JobRun, JobSettings
from mqfleet.agent.limits import LimitSettings
from mqfleet.agent.outcome import Ending
from mqfleet.agent.owner_link import OwnerLink
from mqfleet.agent.reaper import reap_leftovers
from mqfleet.errors import ConfigurationError, MqfleetError, RemoteError, RequestTimeoutError, UnknownHostError
from mqfleet.hostid import check_host_id
from mqfleet.mqtt.config import BrokerConfig
from mqfleet.mqtt.connection import Connection
from mqfleet.mqtt.inbox import Message
from mqfleet.mqtt.rpc import RpcClient
from mqfleet.wire import verbs
from mqfleet.wire.advert import Advert
from mqfleet.wire.owner import OwnerPolicy
from mqfleet.wire.published import ControlMessage, HostStatus, LogBatch, Nudge
from mqfleet.wire.requests import NoFields, Presence
from mqfleet.wire.topics import MAX_LOG_LINE_CHARS, Topics, encode, log_batches
from mqfleet.wire.verbs import Rep, Req, VerbSpec

logger = logging.getLogger(__name__)

#: An idle agent asks for work this often even without a nudge (a nudge is QoS 0 and may be missed).
IDLE_POLL_S = 30.0
#: Log lines are sent in small batches, at most this often per job.
LOG_FLUSH_S = 0.25
#: The host's facts are detected again before a claim (and at each heartbeat), but not more often than this:
#: claims come in bursts while slots fill, and detection runs git twice.
ADVERT_RECHECK_S = 1.0
#: Advert fields that change without the host's capability changing; a change of these alone is not republished.
_VOLATILE_ADVERT_FIELDS = ("ts",)


@dataclass(frozen=True)
class AgentConfig:
    """Everything an agent needs; built by the CLI from flags, env and defaults."""

    host_id: str
    broker: BrokerConfig
    work_dir: Path
    repo: Path
    slots: int = 1
    labels: tuple[str, ...] = ()
    prefix: str = defaults.TOPIC_PREFIX
    python: str = sys.executable
    heartbeat_s: float = defaults.HEARTBEAT_S
    kill_grace_s: float = defaults.KILL_GRACE_S
    shutdown_grace_s: float = defaults.SHUTDOWN_GRACE_S
    request_timeout_s: float = defaults.REQUEST_TIMEOUT_S
    keepalive_s: int = defaults.KEEPALIVE_S
    extra_env: Mapping[str, str] = field(default_factory=dict)
    #: run trainers as this user (name or uid) instead of the agent's own; "" for the agent's (docs/SECURITY.md, "Trainers")
    trainer_user: str = ""
    #: the owner's policy from the flags and agent.toml; the manifest's defaults fill what it leaves unset
    owner_policy: OwnerPolicy = OwnerPolicy()
    #: the group whose members may pause this agent (`mqfleet agent pause`), besides root and the agent's user
    owner_group: str = ""
    #: where the owner's switch listens; None: owner.sock in the work dir
    owner_socket: Path | None = None

    def validate(self) -> None:
        check_host_id(self.host_id)
        if self.slots < 1:
            raise ConfigurationError(f"--slots must be at least 1, not {self.slots}")
        if not self.repo.is_dir():
            raise ConfigurationError(f"training repo {self.repo} is not a folder; pass --repo DIR")
        self.resolved_trainer_user()
        problems = self.owner_policy.problems()
        if problems:
            raise ConfigurationError("owner policy: " + "; ".join(str(p) for p in problems))

    def resolved_trainer_user(self) -> TrainerUser | None:
        """The `trainer_user` looked up; ConfigurationError with the fix when trainers cannot run as it."""
        return TrainerUser.resolve(self.trainer_user) if self.trainer_user else None

    def trainer_base_env(self) -> dict[str, str]:
        """The allowed part of the agent's environment plus the operator's `--env` additions."""
        env = inherited_env(os.environ)
        env.update(self.extra_env)
        return env

    def job_settings(self, trainer_user: TrainerUser | None = None, owner: OwnerPolicy | None = None) -> JobSettings:
        """What a job run needs of these settings and of the owner policy in force; the environment is read now,
        as the job starts."""
        limits = LimitSettings() if owner is None else LimitSettings(
            nice=owner.nice or 0, ionice=owner.ionice or "none", max_memory_gib=owner.max_memory_gib)
        return JobSettings(work_dir=self.work_dir, repo=self.repo, python=self.python, kill_grace_s=self.kill_grace_s,
                           request_timeout_s=self.request_timeout_s, base_env=self.trainer_base_env(),
                           trainer_user=trainer_user, limits=limits)


class Agent:
    """One daemon per training host."""

    def __init__(self, config: AgentConfig) -> None:
        config.validate()
        self.config = config
        self.trainer_user = config.resolved_trainer_user()
        self.topics = Topics(config.prefix)
        self.jobs: dict[str, JobRun] = {}
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._jobs_lock = threading.Lock()
        self._log_lock = threading.Lock()
        self._log_buffers: dict[str, list[str]] = {}
        self._log_attempts: dict[str, int] = {}
        self._log_last_flush: dict[str, float] = {}
        self.advert: Advert | None = None  # detected at start()
        self._advert_checked = 0.0
        self._advert_lock = threading.Lock()
        self.conn = Connection(
            config.broker,
            client_id=self.topics.client_id(f"agent-{config.host_id}"),
            will=(self.topics.status(config.host_id), encode(HostStatus(state=Presence.OFFLINE).to_wire()), True),
            persistent=True,
            keepalive_s=config.keepalive_s,
            on_connect=self._on_connect,
            reply_prefix=config.prefix,
        )
        self.rpc = RpcClient(self.conn, self.topics, config.host_id, timeout_s=config.request_timeout_s)
        self.owner = OwnerLink(config.host_id, config.owner_policy, work_dir=config.work_dir,
                               socket_path=config.owner_socket,
                               owner_group=config.owner_group, running=self._running,
                               refresh_advert=self._advertise_owner_state, wake=self._wake.set)

    # --- life cycle -------------------------------------------------------------------

    def start(self, *, wait_s: float | None = 30.0) -> None:
        cfg = self.config
        # before anything a trainer could see: its environment and memory are out of reach of same-user processes
        make_undumpable()
        cfg.work_dir.mkdir(parents=True, exist_ok=True)
        if self.trainer_user is not None:
            self.trainer_user.prepare(cfg.work_dir, cfg.repo, cfg.python)
        reaped = reap_leftovers(cfg.work_dir / "pids")
        if reaped:
            logger.warning("killed %d trainer process(es) left by a previous agent run: %s", len(reaped), reaped)
        self.owner.start_switch()
        self.advert = self._detect_advert()
        self._advert_checked = time.monotonic()
        self.conn.subscribe(self.topics.control(cfg.host_id), self._on_control)
        self.conn.subscribe(self.topics.owner_defaults(cfg.host_id), self.owner.on_defaults)
        self.conn.subscribe(self.topics.work, self._on_nudge, qos=0)
        self.conn.start(wait_s=wait_s)
        self.owner.start_guard()
        threading.Thread(target=self._flush_logs_loop, name="log-flush", daemon=True).start()
        logger.info("agent %s online: %d slot(s), cuda=%s, trainers run as %s", cfg.host_id, cfg.slots, self.advert.cuda,
                    self.trainer_user.name if self.trainer_user else "the agent's own user")

    def run(self) -> int:
        """Claim and run jobs until stop(); then hand back what is still running. Returns 0."""
        next_heartbeat = time.monotonic() + self.config.heartbeat_s
        woken, next_poll = True, 0.0
        while not self.stopping.is_set():
            # Claims follow a wake (a nudge, a freed slot, a reconnect) or the idle poll, not the
            # heartbeat: the coordinator nudges whenever work appears (docs/RELIABILITY.md).
            if woken or time.monotonic() >= next_poll:
                answered = self._claim_while_free()
                next_poll = time.monotonic() + (IDLE_POLL_S if answered else min(IDLE_POLL_S, self.config.heartbeat_s))
            timeout = max(0.0, min(next_poll, next_heartbeat) - time.monotonic())
            woken = self._wake.wait(timeout)
            self._wake.clear()
            if time.monotonic() >= next_heartbeat:
                # a changed fact (commit, torch, free VRAM) may make a waiting job fit this host
                woken = self.refresh_advert() or woken
                self._publish_status(Presence.ONLINE)
                next_heartbeat = time.monotonic() + self.config.heartbeat_s
        self._shutdown()
        return 0

    def stop(self) -> None:
        """Take no new work; run() hands back running jobs after the shutdown grace. Signal-safe."""
        self.stopping.set()
        self._wake.set()

    def _shutdown(self) -> None:
        grace = self.config.shutdown_grace_s
        running = self._running()
        if running:
            logger.info("stopping: %d job(s) running, waiting up to %.0fs for them to finish", len(running), grace)
        deadline = time.monotonic() + grace
        for job in running:
            job.done.wait(max(0.0, deadline - time.monotonic()))
        self.owner.stop()
        for job in self._running():
            job.end(Ending.SHUTDOWN, "agent shut down; job handed back")
        for job in self._running():
            # Room for the final checkpoint sync, which runs before the job is handed back.
            job.join(self.config.kill_grace_s + self.config.request_timeout_s + defaults.CHECKPOINT_FINAL_SYNC_S + 5)
        self.conn.stop(final=[(self.topics.status(self.config.host_id), self._status_payload(Presence.OFFLINE), True)])
        logger.info("agent %s stopped", self.config.host_id)

    # --- claiming -------------------------------------------------------------------------

    def _running(self) -> list[JobRun]:
        with self._jobs_lock:
            return [j for j in self.jobs.values() if not j.done.is_set()]

    def _detect_advert(self) -> Advert:
        cfg = self.config
        advert = detect_advert(cfg.host_id, slots=cfg.slots, labels=cfg.labels, repo=cfg.repo)
        return replace(advert, owner_policy=self.owner.guard.policy, availability=self.owner.guard.availability)

    def refresh_advert(self, *, force: bool = False) -> bool:
        """Detect the host's facts again (torch and xgboost versions, repo commit and dirty flag, RAM, free
        VRAM) and republish the retained advert when one changed; True when it did."""
        with self._advert_lock:
            if not force and time.monotonic() - self._advert_checked < ADVERT_RECHECK_S:
                return False
            self._advert_checked = time.monotonic()
            fresh = self._detect_advert()
            # compared as published: a GPU's free memory, say, is a change of the advert's `gpus`
            now, before = fresh.to_wire(), self.advert.to_wire() if self.advert is not None else {}
            changed = sorted(k for k in set(now) | set(before)
                             if k not in _VOLATILE_ADVERT_FIELDS and now.get(k) != before.get(k))
            if not changed:
                return False
            logger.info("advert: %s changed (%s); republishing", ", ".join(changed),
                        "; ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed)[:500])
            self.advert = fresh
        try:
            self.conn.publish(self.topics.advert(self.config.host_id), now, qos=1, retain=True)
        except MqfleetError as e:  # the broker is away: _on_connect publishes the fresh advert
            logger.warning("advert: not republished (%s); it goes out at the next connect", e)
        return True

    def _advertise_owner_state(self) -> None:
        """The owner's policy or availability changed: republish the advert with them at once, without detecting the
        host's facts again (git, torch), so the coordinator stops offering work before a job is handed back."""
        advert = self.advert
        if advert is None:
            return
        self.advert = advert = replace(advert, owner_policy=self.owner.guard.policy,
                                       availability=self.owner.guard.availability)
        try:
            self.conn.publish(self.topics.advert(self.config.host_id), advert.to_wire(), qos=1, retain=True)
        except MqfleetError as e:  # the broker is away: _on_connect publishes the advert
            logger.warning("advert: owner state not published (%s); it goes out at the next connect", e)

    def _claim_while_free(self) -> bool:
        """Claim until the slots are full or no job fits; False when a claim went unanswered or was refused."""
        while not self.stopping.is_set() and len(self._running()) < self.config.slots and self.owner.takes_work:
            # the coordinator judges min_torch and same_commit on the advert: make sure it is current
            # (the advert goes out before the claim, on the same connection, so it is recorded first)
            self.refresh_advert()
            try:
                # checked at the boundary: a grant the agent cannot read is refused here, not halfway through a job
                grant = self.request(verbs.CLAIM, NoFields()).job
            except (RemoteError, RequestTimeoutError, MqfleetError) as e:
                logger.warning("claim failed: %s", e)
                if isinstance(e, RemoteError) and e.is_a(UnknownHostError):
                    # Our advert has not reached the coordinator yet (or it lost it): send it again
                    # and retry soon rather than at the next idle poll.
                    self._publish_advert()
                    threading.Timer(1.0, self._wake.set).start()
                return False
            if grant is None:
                return True
            job = JobRun(self, self.config.job_settings(self.trainer_user, self.owner.guard.policy), grant)
            with self._jobs_lock:
                self.jobs[job.job_id] = job
            job.start()
            if not self.owner.takes_work:  # the owner took the host back while we claimed
                self.owner.yield_jobs()
        return True

    def job_finished(self, job: JobRun) -> None:
        with self._log_lock:
            self._log_attempts.pop(job.job_id, None)
        with self._jobs_lock:
            if self.jobs.get(job.job_id) is job:
                del self.jobs[job.job_id]
        self._wake.set()

    # --- MQTT -------------------------------------------------------------------------------

    def request(self, verb: VerbSpec[Req, Rep], message: Req, *, attempts: int = 3,
                timeout_s: float | None = None) -> Rep:
        """An agent RPC through the one RPC client; retried on timeout with the same request id, so it runs
        at most once. An `unavailable` reply (the coordinator's database is away, docs/RELIABILITY.md) is
        sent again for as long as the `attempts` timeouts would have lasted. A claim is not retried once
        the agent is stopping; other verbs are, since a stopping agent still hands its jobs back."""
        return self.rpc.call(verb, message, attempts=attempts, timeout_s=timeout_s, retry_unavailable=True,
                             keep_trying=lambda: not (self.stopping.is_set() and verb is verbs.CLAIM))

    def _publish_advert(self) -> None:
        if self.advert is not None:
            self.conn.publish(self.topics.advert(self.config.host_id), self.advert.to_wire(), qos=1, retain=True)

    def _on_connect(self, session_present: bool) -> None:
        # Not under the advert lock: a refresh holding it runs git, and the dispatcher must not wait for that.
        # A refresh that lands between these lines is redone at the next look (its fields differ again).
        advert = self.advert
        if advert is not None:
            self.advert = replace(advert, ts=time.time())
        self._publish_advert()
        self._publish_status(Presence.ONLINE)
        if not session_present:
            logger.info("new broker session: messages sent while away were not kept")
        # After an outage the coordinator may have shortened our leases to its grace: renew now.
        for job in self._running():
            job.renew_now()
        self._wake.set()

    def _on_nudge(self, msg: Message) -> None:
        # A nudge that names hosts is meant for those alone: the coordinator worked out which idle
        # hosts could take the new work, so the others need not all claim in vain.
        try:
            hosts = Nudge.from_wire(msg.json()).hosts
        except MqfleetError:
            hosts = None
        if hosts is not None and self.config.host_id not in hosts:
            return
        self._wake.set()

    def _on_control(self, msg: Message) -> None:
        try:
            control = ControlMessage.from_wire(msg.json())
        except MqfleetError as e:
            logger.warning("control message ignored: %s", e)
            return
        with self._jobs_lock:
            job = self.jobs.get(control.job_id)
        if job is None or job.lease_id != control.lease_id:
            logger.info("cancel for job %s: not running here (any more)", control.job_id)
            return
        job.end(Ending.CANCELLED)

    def _status_payload(self, state: Presence) -> bytes:
        running = [j.job_id for j in self._running()]
        return encode(HostStatus(state=state, ts=time.time(), jobs=running, slots=self.config.slots).to_wire())

    def _publish_status(self, state: Presence) -> None:
        self.conn.publish(self.topics.status(self.config.host_id), self._status_payload(state), qos=1, retain=True)

    # --- trainer output ---------------------------------------------------------------------

    def publish_log(self, job_id: str, line: str, *, attempt: int = 0) -> None:
        with self._log_lock:
            self._log_buffers.setdefault(job_id, []).append(line)
            if attempt:
                self._log_attempts[job_id] = attempt
            due = time.monotonic() - self._log_last_flush.get(job_id, 0.0) >= LOG_FLUSH_S
        if due:
            self.flush_log(job_id)

    def _flush_logs_loop(self) -> None:
        # Lines that arrived just after a flush would otherwise wait for the trainer's next line.
        while not self.stopping.wait(LOG_FLUSH_S):
            with self._log_lock:
                pending = list(self._log_buffers)
            for job_id in pending:
                self.flush_log(job_id)

    def flush_log(self, job_id: str) -> None:
        with self._log_lock:
            lines = self._log_buffers.pop(job_id, [])
            self._log_last_flush[job_id] = time.monotonic()
        # Within the coordinator's caps (wire/topics.py): lines cut, batches split by count and by bytes,
        # so nothing it would cut or drop (a payload over MAX_REQUEST_BYTES) is sent whole.
        attempt = self._log_attempts.get(job_id)
        for batch in log_batches([line[:MAX_LOG_LINE_CHARS] for line in lines]):
            # the attempt, so the coordinator files late lines under the right one
            payload = LogBatch(job_id=job_id, lines=batch, ts=time.time(), attempt=attempt or None)
            try:
                self.conn.publish(self.topics.log(self.config.host_id, job_id), payload.to_wire(), qos=0)
            except MqfleetError as e:  # stopping, or the broker is away: log lines are best effort
                logger.debug("log lines of %s dropped: %s", job_id, e)
                return

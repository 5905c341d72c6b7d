"""What the coordinator publishes after a commit: events, retained job states (progress at a bounded
rate), nudges to idle agents, the retained coordinator status and control messages."""

from __future__ import annotations

import logging

from mqfleet.coordinator import scheduler
from mqfleet.coordinator.core import CoordinatorCore
from mqfleet.errors import MqfleetError
from mqfleet.lifecycle import JobStatus
from mqfleet.mqtt.inbox import Message
from mqfleet.wire.published import ControlMessage, JobEvent, Nudge

#: The service's logger: the coordinator's log lines keep one name whichever part writes them.
logger = logging.getLogger("mqfleet.coordinator.service")

#: Above this many newly claimable jobs a nudge goes to every agent instead of the eligible idle ones:
#: working out eligibility costs a spec parse per job, and so many jobs wake most hosts anyway.
NUDGE_TARGET_MAX_JOBS = 64
#: Above this many events committed at once (a manifest load), the rest are published by the
#: background republisher at its bounded rate, instead of all being queued in memory at once.
BULK_CHANGES = 1000
#: A job's retained state is republished for progress at most this often (the latest report wins);
#: status changes are never held back. Every renewal of a busy fleet carries progress.
PROGRESS_REPUBLISH_S = 1.0


class Outbox(CoordinatorCore):
    """Publishing after commit (a part of `Coordinator`); the caller holds the lock."""

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
            self.conn.publish(self.topics.events, event.to_wire(), qos=1)
        return claimable

    def _publish_event_batch(self, limit: int) -> tuple[int, bool]:
        """The background's step through an event backlog (lock held): messages sent, and whether more wait."""
        changes = self.state.take_changes(limit=limit)
        claimable, jobs = self._publish_events(changes)
        self._publish_states(jobs)
        # jobs a manifest added were announced by the reload's (or the start's) nudge already
        added = {c.job_id for c in changes if c.reason == "added"}
        self._nudge_for([j for j in claimable if j not in added], "work", self.clock())
        return len(changes) + len(jobs), len(changes) == limit

    def _publish_events(self, changes: list[JobEvent]) -> tuple[list[str], set[str]]:
        claimable: list[str] = []
        jobs: set[str] = set()
        for change in changes:
            self.conn.publish(self.topics.events, change.to_wire(), qos=1)
            # A completion frees a slot on its own agent, which claims again by itself; other agents
            # are nudged only when it unblocked a waiting job, so idle agents are not stampeded.
            to = change.to
            if to == JobStatus.PENDING.value:
                claimable.append(change.job_id)
            elif to == JobStatus.COMPLETED.value:
                claimable.extend(self.catalog.pending_dependents(change.job_id))
            jobs.add(change.job_id)
        return claimable, jobs

    def _publish_states(self, job_ids: set[str]) -> None:
        for job_id in job_ids:
            try:
                state = self.catalog.job_state(job_id)
            except MqfleetError:
                continue
            if state is not None:
                self.republisher.publish_state(job_id, state)


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
        hosts = scheduler.hosts_to_wake(specs, self.hosts.views(manifest.hosts, now=now), commit=manifest.fleet.commit)
        if not hosts:
            # Every eligible host is busy: the first to free a slot claims by itself.
            logger.debug("%d claimable job(s) after %s: no eligible idle host to nudge", len(specs), reason)
            return
        self.nudge(reason, now, hosts=hosts, jobs=[s.id for s in specs])

    def nudge(self, reason: str, now: float, *, hosts: list[str] | None = None, jobs: list[str] | None = None) -> None:
        """QoS 0 `work` to the agents (only those named in `hosts` act on it); a lost nudge costs one idle poll."""
        payload = Nudge(reason=reason, ts=now, hosts=hosts,
                        jobs=jobs[:NUDGE_TARGET_MAX_JOBS] if jobs is not None else None)
        logger.debug("nudge (%s) to %s", reason, ", ".join(hosts) if hosts is not None else "every agent")
        self.conn.publish(self.topics.work, payload.to_wire(), qos=0)

    def clear_retained(self, msg: Message) -> None:
        """Delete a retained message someone left on a request or log topic, and count it.

        The broker keeps a retained message in memory and persistence until it is replaced, and the
        ACL cannot forbid the flag on a topic it allows, so each is cleared once it has been seen (an
        empty retained publish deletes it; docs/SECURITY.md, "Replies"). Its deletion comes back to a
        shared subscription as an empty retained message, which callers ignore.
        """
        with self._drop_lock:
            self.retained_cleared += 1
        self.conn.publish(msg.topic, b"", qos=1, retain=True)

    def _publish_status(self, now: float) -> None:
        self._last_status_ts = now
        self.conn.publish(self.topics.coordinator_status, self.health(now).to_wire(), qos=1, retain=True)

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

    def send_control(self, host: str, message: ControlMessage) -> None:
        """QoS 1 to the agent's persistent session: it arrives even across a reconnect."""
        self.conn.publish(self.topics.control(host), message.to_wire(), qos=1)

"""What agents publish outside requests: retained adverts and statuses, and their trainers' log batches."""

from __future__ import annotations

import logging

from mqfleet import defaults
from mqfleet.coordinator.core import CoordinatorCore
from mqfleet.errors import MqfleetError
from mqfleet.mqtt.inbox import Message
from mqfleet.wire.advert import parse_advert
from mqfleet.wire.published import HostStatus, LogBatch
from mqfleet.wire.requests import Presence
from mqfleet.wire.topics import MAX_LOG_LINE_CHARS, decode

#: The service's logger: the coordinator's log lines keep one name whichever part writes them.
logger = logging.getLogger("mqfleet.coordinator.service")

#: Attempts whose output size is tracked (the live ones, in practice); the oldest entry goes first past it.
LOG_BUDGETS_KEPT = 10_000
#: Hosts whose last advert was refused, remembered with the reason for `workers`.
ADVERT_PROBLEMS_KEPT = 1000


class AgentListeners(CoordinatorCore):
    """The coordinator's listeners on the agents' topics (a part of `Coordinator`)."""

    def _on_advert(self, msg: Message) -> None:
        host = self._host_of(msg)
        if not host or not msg.payload:
            return
        try:
            # The topic (pinned by the broker ACL) names the host, never the payload.
            advert = parse_advert(host, decode(msg.payload))
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
        self.feed.host_changed(host)

    def _on_status(self, msg: Message) -> None:
        host = self._host_of(msg)
        if not host or not msg.payload:
            return
        try:
            state = HostStatus.from_wire(decode(msg.payload)).state
        except MqfleetError as e:
            logger.warning("status of %s ignored: %s", host, e)
            return
        now = self.clock()
        with self.lock:
            shortened = self.hosts.record_presence(host, state is Presence.ONLINE, now, grace_s=self.grace_s)
            if shortened:
                logger.warning("host %s went offline; %d lease(s) now expire within the grace", host, len(shortened))
            self._nudge_for(self._publish_changes(), f"host {host} {state}", now)
        self.feed.host_changed(host)

    def _on_log(self, msg: Message) -> None:
        if msg.retain:
            # Log batches are never retained: one that is would stay on the broker (any number of job ids
            # under the host's log topic), so every coordinator deletes it; an empty one is a deletion.
            if msg.payload:
                logger.warning("retained log batch on %s removed from the broker", msg.topic[:200])
                self.clear_retained(msg)
            return
        parsed = self.topics.parse_log(msg.topic)
        if parsed is None or not self.is_leader or not self.fleet.keep_history:
            # Every coordinator receives every batch; the leader alone files them, or each line would be
            # stored once per coordinator. Batches sent while the lead moves are lost, like any QoS 0 batch.
            # With `[fleet] keep_history = false` none is stored: `logs -f` reads them off the broker.
            return
        host, job_id = parsed
        try:
            batch = LogBatch.from_wire(decode(msg.payload))  # lines past the batch cap are dropped there
        except MqfleetError:
            return
        attempt = batch.attempt
        kept = [line[:MAX_LOG_LINE_CHARS] for line in batch.lines]  # long lines cut
        # Only a host that ran an attempt of this job writes its log, filed under that attempt: a topic
        # naming another host's job (or an invented one) is nobody's output (docs/SECURITY.md). The
        # attempts this coordinator granted are known without a query or the lock (history.known_attempt).
        number = self.history.known_attempt(job_id, host, attempt)
        if number is None:
            with self.lock:
                number = self.history.attempt_of_host(job_id, host, attempt) if self.is_known_host(host) else None
        if number is None:
            self._count_refused_log(host, job_id)
            return
        with self._drop_lock:
            kept = self._within_log_budget(job_id, number, kept)
        # Stored durably, batched per sweep: a coordinator restart loses none of an ended attempt's lines
        # (docs/OPERATIONS.md, "Logs").
        self.history.queue_lines(job_id, number, kept, self.log_max_lines)
        self.feed.lines_accepted(job_id, number, kept)

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

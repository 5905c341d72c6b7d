"""What the soak sees on the wire: job states, events, and every agent request with its reply.

One persistent MQTT session (QoS 1), so events published while the observer is
cut off by a broker restart are queued for it rather than missed. Agent requests
and their replies are kept, matched by correlation data, so the fault injector
can replay them (duplicates) or send their stale leases (reordered deliveries).
Handlers only record; they run on the connection's dispatcher thread.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass

from mqfleet.errors import MqfleetError
from mqfleet.mqtt.config import BrokerConfig
from mqfleet.mqtt.connection import Connection
from mqfleet.mqtt.inbox import Message
from mqfleet.wire.requests import ClaimReply, JobRow
from mqfleet.wire.topics import JsonObject, Topics

#: Agent requests remembered for replay; older ones are forgotten.
REQUESTS_KEPT = 4000


@dataclass(frozen=True)
class Captured:
    """One agent request seen on the wire (replayed byte for byte by the injector)."""

    topic: str
    host: str
    verb: str
    payload: bytes
    ts: float


class Observer:
    """Records the fleet's traffic for the injector and the invariants."""

    def __init__(self, broker_url: str, prefix: str) -> None:
        self.topics = Topics(prefix)
        self.lock = threading.Lock()
        #: job id -> its latest retained state
        self.states: dict[str, JobRow] = {}
        #: job id -> [(seen at, status)] from retained states and events, in arrival order
        self.timeline: dict[str, list[tuple[float, str]]] = defaultdict(list)
        #: When each job started running, and where: (ts, host) from the `events` topic.
        self.runs: dict[str, list[tuple[float, str]]] = defaultdict(list)
        self.completed_events: Counter[str] = Counter()
        self.events_seen = 0
        self.requests: OrderedDict[bytes, Captured] = OrderedDict()
        #: correlation data -> the reply to that request, compared whole with the reply to its replay
        self.replies: dict[bytes, JsonObject] = {}
        #: job id -> [(lease id, host, seen at)] in the order claims granted them
        self.leases: dict[str, list[tuple[str, str, float]]] = defaultdict(list)
        self.conn = Connection(BrokerConfig(url=broker_url), client_id=self.topics.client_id("soak-observer"),
                               persistent=True, reply_prefix=prefix)

    def start(self) -> None:
        t = self.topics
        self.conn.subscribe(t.events, self._on_event)
        self.conn.subscribe(t.all_job_states, self._on_state)
        self.conn.subscribe(f"{t.prefix}/rpc/agent/+/+", self._on_request)
        self.conn.subscribe(f"{t.prefix}/reply/#", self._on_reply)
        self.conn.start(wait_s=15)

    def stop(self) -> None:
        self.conn.stop(timeout_s=3)

    # --- handlers ----------------------------------------------------------------------

    def _on_event(self, msg: Message) -> None:
        try:
            event = msg.json()
        except MqfleetError:
            return
        job_id, to = str(event.get("job_id")), str(event.get("to"))
        with self.lock:
            self.events_seen += 1
            self.timeline[job_id].append((time.time(), to))
            if to == "running":
                self.runs[job_id].append((time.time(), str(event.get("host"))))
            if to == "completed":
                self.completed_events[job_id] += 1

    def _on_state(self, msg: Message) -> None:
        try:
            row = JobRow.from_wire(msg.json())
        except MqfleetError:  # not JSON, or not a job row (the invariants then find the state missing)
            return
        with self.lock:
            self.states[row.id] = row
            self.timeline[row.id].append((time.time(), row.status))

    def _on_request(self, msg: Message) -> None:
        parsed = self.topics.parse_rpc(msg.topic)
        if parsed is None or msg.correlation_data is None:
            return
        try:
            msg.json()  # only a well-formed request is worth replaying
        except MqfleetError:
            return
        captured = Captured(msg.topic, parsed[1], parsed[2], msg.payload, time.time())
        with self.lock:
            self.requests[msg.correlation_data] = captured
            while len(self.requests) > REQUESTS_KEPT:
                old, _ = self.requests.popitem(last=False)
                self.replies.pop(old, None)

    def _on_reply(self, msg: Message) -> None:
        if msg.correlation_data is None:
            return
        try:
            reply: JsonObject = msg.json()
        except MqfleetError:
            return
        with self.lock:
            request = self.requests.get(msg.correlation_data)
            if request is None:
                return
            self.replies[msg.correlation_data] = reply
            if request.verb == "claim":
                try:
                    grant = ClaimReply.from_wire(reply).job
                except MqfleetError:  # a refusal, or a grant the agent refuses too: no lease to go stale
                    grant = None
                if grant is not None and grant.lease_id:
                    self.leases[grant.job.id].append((grant.lease_id, request.host, time.time()))

    # --- queries for the injector and the invariants -----------------------------------

    def held_by(self, host: str) -> list[str]:
        """Jobs whose latest retained state says `host` holds them."""
        with self.lock:
            return sorted(j for j, row in self.states.items() if row.host == host and row.status in ("claimed", "running"))

    def running(self) -> list[JobRow]:
        with self.lock:
            return sorted((r for r in self.states.values() if r.status == "running"), key=lambda r: r.id)

    def first_seen(self, job_id: str, statuses: tuple[str, ...], after: float) -> float | None:
        """When the observer first saw the job in one of `statuses` after `after`."""
        with self.lock:
            return next((ts for ts, s in self.timeline.get(job_id, []) if ts >= after and s in statuses), None)

    def first_run_elsewhere(self, job_id: str, host: str, after: float) -> float | None:
        """When the observer first saw the job start running on a host other than `host` after `after`."""
        with self.lock:
            return next((ts for ts, h in self.runs.get(job_id, []) if ts >= after and h != host), None)

    def answered(self, verbs: tuple[str, ...]) -> list[tuple[bytes, Captured, JsonObject]]:
        """Captured requests of these verbs that have a reply, oldest first."""
        with self.lock:
            return [(c, r, self.replies[c]) for c, r in self.requests.items() if r.verb in verbs and c in self.replies]

    def stale_leases(self) -> list[tuple[str, str, str]]:
        """(job id, lease id, host) of leases that are certainly no longer current.

        A lease is stale once a later claim granted the job again, or once the job was
        seen holding no lease after the grant; both only ever become more true.
        """
        unleased = ("pending", "completed", "failed", "cancelled")
        with self.lock:
            stale = []
            for job_id, grants in self.leases.items():
                for i, (lease_id, host, granted) in enumerate(grants):
                    ended = any(ts > granted and s in unleased for ts, s in self.timeline.get(job_id, []))
                    if i < len(grants) - 1 or ended:
                        stale.append((job_id, lease_id, host))
            return sorted(stale)

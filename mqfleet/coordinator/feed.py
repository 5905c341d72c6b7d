"""`Feed`: what the coordinator made public or accepted, offered to followers in this process (the web dashboard,
mqfleet/web/) the moment it happens, without ever waiting for them.

It carries public state only (docs/SECURITY.md, "Parties and listeners"): the events, retained job states and
coordinator status the coordinator publishes after a commit (its connection tells the feed of every publish; replies,
control messages and nudges are left out here), a host's advert or status taken in (the host's id alone: readers ask
`workers` for the checked values), and the trainer output lines the coordinator accepted from the host that runs the
attempt, which followers must show to operators only. With no follower every offer returns at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from mqfleet.wire.topics import Topics, encode

logger = logging.getLogger(__name__)


class FeedKind(str, Enum):
    JOB_STATE = "job_state"
    EVENT = "event"
    STATUS = "status"
    HOST = "host"
    LINES = "lines"


@dataclass(frozen=True)
class FeedItem:
    """One thing the feed carries: `key` is the job id (job_state, lines) or host id (host), else ""; `payload` is
    the JSON published (job_state, event, status), `{job_id, attempt, lines}` (lines), or empty (host)."""

    kind: FeedKind
    key: str
    payload: bytes


#: A follower must return at once (it queues the item and wakes its own thread): it runs on the coordinator's threads.
Follower = Callable[[FeedItem], None]


class Feed:
    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self._lock = threading.Lock()
        #: replaced whole, never changed in place, so an offer reads it without the lock
        self._followers: tuple[Follower, ...] = ()
        self._job_state_head = f"{topics.prefix}/jobs/"

    def follow(self, follower: Follower) -> None:
        with self._lock:
            self._followers = (*self._followers, follower)

    def unfollow(self, follower: Follower) -> None:
        with self._lock:
            self._followers = tuple(f for f in self._followers if f is not follower)

    def published(self, topic: str, payload: bytes | str) -> None:
        """The connection published `payload` on `topic`: offered when it is an event, a job state or the status."""
        if not self._followers:
            return
        data = payload.encode() if isinstance(payload, str) else payload
        if topic == self.topics.events:
            self._offer(FeedItem(FeedKind.EVENT, "", data))
        elif topic == self.topics.coordinator_status:
            self._offer(FeedItem(FeedKind.STATUS, "", data))
        elif topic.startswith(self._job_state_head) and topic.endswith("/state"):
            job_id = topic[len(self._job_state_head):-len("/state")]
            if job_id and "/" not in job_id:
                self._offer(FeedItem(FeedKind.JOB_STATE, job_id, data))

    def host_changed(self, host: str) -> None:
        """A host's advert or presence was taken in."""
        if self._followers:
            self._offer(FeedItem(FeedKind.HOST, host, b""))

    def lines_accepted(self, job_id: str, attempt: int, lines: list[str]) -> None:
        """Trainer output the coordinator filed under `attempt` of `job_id` (only the host that ran it gets here)."""
        if self._followers and lines:
            self._offer(FeedItem(FeedKind.LINES, job_id, encode({"job_id": job_id, "attempt": attempt, "lines": lines})))

    def _offer(self, item: FeedItem) -> None:
        for follower in self._followers:
            try:
                follower(item)
            except Exception:  # a follower's bug must never fail a publish or a request
                logger.exception("feed follower %r failed", follower)

"""The fleet as the bus shows it, for a live view (`mqfleet watch`): hosts from their retained statuses and
adverts, jobs from their retained states, the latest events. The coordinator is asked once, for the draining
flags and the rows the bus has not carried yet; everything after comes from the bus."""

from __future__ import annotations

import queue
import time
from collections import deque
from dataclasses import dataclass

from mqfleet.client import FleetClient
from mqfleet.mqtt.inbox import Message
from mqfleet.wire.replies import Worker
from mqfleet.wire.topics import JsonObject, JsonValue, Topics

#: A picture is settled once no retained message arrived for this long (or at the caller's timeout).
QUIET_S = 0.5
#: Events kept, newest last.
EVENTS_KEPT = 50


@dataclass
class HostPicture:
    """A host as the bus shows it: its state (from its retained status), slots (from its advert) and draining."""

    state: str = "?"
    slots: JsonValue = None
    draining: bool = False


class FleetPicture:
    """What a live view shows, folded from bus messages (and one initial snapshot). Bus messages are hostile
    input: one that is not a JSON object is ignored; the renderer treats every value as untrusted text."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self.hosts: dict[str, HostPicture] = {}
        #: job states and events as the bus carries them (retained job states, the event stream)
        self.jobs: dict[str, JsonObject] = {}
        self.events: deque[JsonObject] = deque(maxlen=EVENTS_KEPT)

    def seed(self, workers: list[Worker], jobs: list[JsonObject]) -> None:
        for w in workers:
            self.hosts[w.id] = HostPicture(state="online" if w.online else "offline", slots=w.slots, draining=w.draining)
        for job in jobs:
            self.jobs.setdefault(str(job.get("id")), job)

    def apply(self, msg: Message) -> None:
        try:
            payload = msg.json()
        except Exception:
            return
        if not isinstance(payload, dict):
            return
        if msg.topic == self.topics.events:
            self.events.append(payload)
            return
        host_topic = self.topics.parse_host_topic(msg.topic)
        if host_topic is not None:
            host, kind = host_topic
            entry = self.hosts.setdefault(host, HostPicture())
            if kind == "status" and payload.get("state"):
                entry.state = str(payload["state"])
            elif kind == "advert":
                entry.slots = payload.get("slots", entry.slots)
            return
        job_id = payload.get("id")
        if msg.topic.endswith("/state") and isinstance(job_id, str) and job_id:
            before = self.jobs.get(job_id)
            # Job states are republished on status changes only, so a snapshot's progress may be newer.
            if payload.get("progress") is None and before and before.get("status") == payload.get("status"):
                payload["progress"] = before.get("progress")
            self.jobs[job_id] = payload


def settle_picture(client: FleetClient, *, timeout_s: float) -> tuple[FleetPicture, queue.SimpleQueue[Message]]:
    """A picture from one snapshot plus the retained messages once they stop arriving; and the queue the live
    messages keep landing in, for the caller's thread to apply."""
    picture = FleetPicture(client.topics)
    inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
    t = client.topics
    # Subscribed before the snapshot, so nothing falls between the two.
    for topic_filter in (t.all_job_states, t.all_statuses, t.all_adverts, t.events):
        client.subscribe(topic_filter, inbox.put)
    picture.seed(client.workers(), client.jobs())
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            picture.apply(inbox.get(timeout=QUIET_S))
        except queue.Empty:
            break
    return picture, inbox

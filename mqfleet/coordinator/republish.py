"""Retained job states kept equal to the database, without a flood: what was published is remembered.

Each retained `jobs/{id}/state` the coordinator publishes is remembered as a
digest of its payload, in memory first and then in the `published_states` table
(written in one transaction per sweep tick, never on a request's path). A
starting coordinator, or one that just loaded a manifest of many jobs, walks the
jobs table in keyset pages in the background and republishes only the jobs whose
current state differs from what was last published, at a bounded rate; requests
are answered meanwhile (docs/RELIABILITY.md, "Restarts").
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable

from mqfleet.coordinator.sql.sqlite import StateFile
from mqfleet.coordinator.tables.rows import JOB_SELECT, job_json
from mqfleet.errors import StateStoreError
from mqfleet.wire.topics import JsonObject, encode

logger = logging.getLogger(__name__)

#: Rows read per step of the background walk (one short hold of the coordinator's lock each).
SWEEP_BATCH = 200
#: A step waits while more publishes than this wait for the broker's acknowledgement: a reply
#: queues behind them, so a renewal's answer is never held back by more than about this many.
MAX_QUEUED = 100
#: Longest a step waits for that queue to shrink (a broker that stopped acknowledging).
QUEUE_WAIT_S = 10.0
#: Retained states the background walk publishes per second at most: the broker and the
#: outgoing queue never take a whole fleet's states at once.
SWEEP_RATE_PER_S = 2000.0
#: Events read per step when a backlog drains (a manifest load that added thousands of jobs).
EVENT_BATCH = 200
#: Digests held in memory before they are written even if no tick came.
MAX_UNRECORDED = 5000

Publish = Callable[[str, bytes], None]


def state_payload(row: JsonObject) -> tuple[bytes, str]:
    """The retained state's bytes (a JobRow's JSON object) and their digest (what `published_states` remembers)."""
    data = encode(row)
    return data, hashlib.blake2b(data, digest_size=8).hexdigest()


def state_page(state: StateFile, after: int, limit: int) -> list[tuple[int, JsonObject, str | None]]:
    """Up to `limit` jobs after the keyset `after`: (seq, the JobRow's JSON object, digest last published or None).
    The walk covers every job, so it skips the JobRow (`rows.job_json`)."""
    sql = JOB_SELECT.replace("SELECT ", "SELECT j.seq AS seq, p.digest AS published_digest, ", 1)
    sql += " LEFT JOIN published_states p ON p.job_id = j.id WHERE j.seq > ? ORDER BY j.seq LIMIT ?"
    return [(int(r["seq"]), job_json(r), r["published_digest"]) for r in state.read(sql, (after, limit))]


def record_published(state: StateFile, digests: dict[str, str]) -> None:
    """Remember published digests, in one transaction."""
    with state.transaction() as c:
        c.executemany(
            "INSERT INTO published_states (job_id, digest) VALUES (?, ?) "
            "ON CONFLICT (job_id) DO UPDATE SET digest = excluded.digest",
            list(digests.items()),
        )


class StateRepublisher:
    """Publishes retained job states, remembers their digests, and repairs stale ones in the background.

    `publish_state` runs under the coordinator's lock right after a commit;
    the background walk takes the same lock for each page, so a page read and
    its publishes are never interleaved with a newer state of the same job.
    """

    def __init__(
        self, *, lock: threading.RLock, read_page: Callable[[int, int], list[tuple[int, JsonObject, str | None]]],
        write_digests: Callable[[dict[str, str]], None], publish: Publish, topic_of: Callable[[str], str],
        publish_events: Callable[[int], tuple[int, bool]], queued: Callable[[], int],
        rate_per_s: float = SWEEP_RATE_PER_S,
    ) -> None:
        self._lock = lock
        self._read_page = read_page
        self._write_digests = write_digests
        self._publish = publish
        self._topic_of = topic_of
        self._rate_per_s = rate_per_s
        self._publish_events = publish_events
        self._queued = queued
        self._event_backlog = False
        self._sweep_requested = False
        self._unrecorded: dict[str, str] = {}
        self._wanted = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None
        #: States the background walks have republished since start (tests and health read it).
        self.republished = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="republish", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wanted.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def is_started(self) -> bool:
        return self._thread is not None

    def request_sweep(self) -> None:
        """Walk every job once more (soon, in the background) and republish those that changed."""
        self._sweep_requested = True
        self._idle.clear()
        self._wanted.set()

    def defer_events(self) -> None:
        """Events wait in the database beyond what was just published: drain them in the background
        (caller holds the lock), in order, each batch through `publish_events`."""
        self._event_backlog = True
        self._idle.clear()
        self._wanted.set()

    def has_event_backlog(self) -> bool:
        return self._event_backlog

    def is_sweeping(self) -> bool:
        return not self._idle.is_set()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no sweep or event drain is running; False after `timeout_s`."""
        return self._idle.wait(timeout_s)

    def publish_state(self, job_id: str, state: JsonObject) -> None:
        """Publish one job's retained state (its JobRow's JSON) now (caller holds the lock, after commit)."""
        data, digest = state_payload(state)
        self._publish(self._topic_of(job_id), data)
        self._unrecorded[job_id] = digest
        if len(self._unrecorded) >= MAX_UNRECORDED:
            self.flush()

    def flush(self) -> None:
        """Write the digests published since the last flush (caller holds the lock, outside a transaction)."""
        if not self._unrecorded:
            return
        digests, self._unrecorded = self._unrecorded, {}
        try:
            self._write_digests(digests)
        except StateStoreError:
            # only costs a needless republish after a restart; keep them for the next flush
            logger.warning("could not record %d published states; will retry", len(digests), exc_info=True)
            self._unrecorded = {**digests, **self._unrecorded}

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wanted.wait()
            if self._stop.is_set():
                return
            self._wanted.clear()
            try:
                self._drain_events()
                if self._sweep_requested:
                    self._sweep_requested = False
                    self._sweep()
            except Exception:
                logger.exception("republishing retained job states failed; the next sweep tries again")
            if not self._wanted.is_set():
                self._idle.set()

    def _wait_for_queue(self) -> None:
        """Pace by the broker: wait until the publishes already handed out are mostly acknowledged."""
        deadline = time.monotonic() + QUEUE_WAIT_S
        while self._queued() > MAX_QUEUED and time.monotonic() < deadline and not self._stop.is_set():
            self._stop.wait(0.005)

    def _drain_events(self) -> None:
        while self._event_backlog and not self._stop.is_set():
            self._wait_for_queue()
            with self._lock:
                sent, more = self._publish_events(EVENT_BATCH)
                # cleared under the lock: the next commit's events are published by the request path
                self._event_backlog = more
            self._stop.wait(max(0.001, sent / self._rate_per_s))

    def _sweep(self) -> None:
        after, seen, sent = 0, 0, 0
        while not self._stop.is_set():
            self._wait_for_queue()
            with self._lock:
                page = self._read_page(after, SWEEP_BATCH)
                for seq, row, stored in page:
                    after = seq
                    data, digest = state_payload(row)
                    job_id = str(row["id"])
                    if self._unrecorded.get(job_id, stored) == digest:
                        continue
                    self._publish(self._topic_of(job_id), data)
                    self._unrecorded[job_id] = digest
                    sent += 1
                if len(self._unrecorded) >= MAX_UNRECORDED:
                    self.flush()
            seen += len(page)
            if len(page) < SWEEP_BATCH:
                break
            # pace by what was sent: a walk over unchanged jobs costs reads only
            self._stop.wait(max(0.001, sent / self._rate_per_s))
            self.republished += sent
            sent = 0
        self.republished += sent
        with self._lock:
            self.flush()
        logger.info("retained job states checked: %d jobs, %d republished since start", seen, self.republished)

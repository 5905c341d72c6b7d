"""`FanOut`: the coordinator's feed (coordinator/feed.py) handed to the open event streams of the dashboard.

The feed calls the fan-out on the coordinator's own threads (the dispatcher, the sweeper), so that call only
appends to a bounded queue and wakes the event loop once; the loop then hands each item to the streams that want
it, each through a bounded queue of its own. A stream whose queue is full (a browser that stopped reading) is
closed, never waited for: its page reconnects and reads the state again. Streams are counted, overall and per
client address, and refused past the caps (503, 429), so open tabs cost a bounded amount of memory and a closed
tab nothing.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter, deque
from collections.abc import Callable

from mqfleet.coordinator.feed import FeedItem, FeedKind

#: Items one stream may have waiting; past it the stream is closed (its page reconnects and reloads).
STREAM_QUEUE = 512
#: Items waiting for the event loop at most; past it every stream is told to reload (`resync`).
PENDING_MAX = 20_000


class StreamRefusedError(Exception):
    """Raised when a stream would pass the cap on open streams (status 503) or a client's own cap (429)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Stream:
    """One open event stream: the feed items it wants, queued for its response."""

    def __init__(self, client: str, kinds: frozenset[FeedKind], wants: Callable[[FeedItem], bool]) -> None:
        self.client = client
        self.kinds = kinds
        self._wants = wants
        #: None tells the response to end (closed as slow, or the server stops); RESYNC to reload its page
        self.queue: asyncio.Queue[FeedItem | None] = asyncio.Queue(maxsize=STREAM_QUEUE)

    def wants(self, item: FeedItem) -> bool:
        return item.kind in self.kinds and self._wants(item)


#: Told to every stream when items were lost before reaching it: its page reads everything again.
RESYNC = FeedItem(FeedKind.STATUS, "resync", b"")


class FanOut:
    def __init__(self, *, max_streams: int, max_per_client: int) -> None:
        self.max_streams = max_streams
        self.max_per_client = max_per_client
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: deque[FeedItem] = deque()
        self._lock = threading.Lock()
        self._scheduled = False
        self._lost = False
        self._streams: set[Stream] = set()
        self._per_client: Counter[str] = Counter()
        #: streams closed because they did not keep up
        self.dropped = 0

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop the streams live on (the web server's); items arriving before are not kept."""
        self._loop = loop

    # --- on the coordinator's threads --------------------------------------------------------------------------

    def __call__(self, item: FeedItem) -> None:
        loop = self._loop
        if loop is None or not self._streams:
            return
        with self._lock:
            if len(self._pending) >= PENDING_MAX:
                self._lost = True
                self._pending.clear()
            self._pending.append(item)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop closed: the server stopped
            pass

    # --- on the event loop ---------------------------------------------------------------------------------------

    def _deliver(self) -> None:
        with self._lock:
            items, self._pending = self._pending, deque()
            lost, self._lost = self._lost, False
            self._scheduled = False
        if lost:
            items = deque([RESYNC])
        for item in items:
            for stream in list(self._streams):
                if item is RESYNC or stream.wants(item):
                    self._put(stream, item)

    def _put(self, stream: Stream, item: FeedItem | None) -> None:
        try:
            stream.queue.put_nowait(item)
        except asyncio.QueueFull:
            # Never waited for: a browser that does not read is dropped, and reloads when it reconnects.
            self.dropped += 1
            self.close(stream)
            while not stream.queue.empty():
                stream.queue.get_nowait()
            stream.queue.put_nowait(None)

    def open(self, client: str, kinds: frozenset[FeedKind], wants: Callable[[FeedItem], bool]) -> Stream:
        if len(self._streams) >= self.max_streams:
            raise StreamRefusedError(f"{len(self._streams)} live streams are open, the most this dashboard serves "
                                     "(--web-max-streams); the page still works, without live updates", 503)
        if self._per_client[client] >= self.max_per_client:
            raise StreamRefusedError(f"this address has {self._per_client[client]} live streams open, the most one "
                                     "client may; close some tabs", 429)
        stream = Stream(client, kinds, wants)
        self._streams.add(stream)
        self._per_client[client] += 1
        return stream

    def close(self, stream: Stream) -> None:
        if stream in self._streams:
            self._streams.discard(stream)
            self._per_client[stream.client] -= 1
            if self._per_client[stream.client] <= 0:
                del self._per_client[stream.client]

    def shutdown(self) -> None:
        """End every stream, from any thread (the server is about to stop)."""
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self.close_all)
            except RuntimeError:  # the loop closed already
                pass

    def close_all(self) -> None:
        """End every stream (the server stops)."""
        for stream in list(self._streams):
            self.close(stream)
            try:
                stream.queue.put_nowait(None)
            except asyncio.QueueFull:
                stream.queue.get_nowait()
                stream.queue.put_nowait(None)

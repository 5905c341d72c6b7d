"""`Dashboard`: what every route of the web app shares: the `FleetSource`, the live `FanOut`, the few threads the
coordinator's queries run on (never the event loop), short-lived snapshots shared by every viewer, who is signed in,
and the pages' common context."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from litestar import Request
from litestar.response import Template

from mqfleet.web.live import FanOut
from mqfleet.web.source import FleetSource

T = TypeVar("T")

#: Threads the dashboard's queries run on: however many browsers ask, at most this many read the coordinator's state.
QUERY_THREADS = 2
#: A sign-in lasts this long.
SESSION_S = 12 * 3600
#: Failed sign-ins one address may make per minute, and all addresses together.
SIGNIN_FAILURES_PER_MIN = 5
SIGNIN_FAILURES_PER_MIN_ALL = 30

Req = Request[Any, Any, Any]


class SigninLimiter:
    """Failed sign-ins per address and overall in the last minute, so the token cannot be guessed at speed."""

    def __init__(self) -> None:
        self._failures: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()
        self._lock = threading.Lock()

    def _trim(self, times: deque[float], now: float) -> None:
        while times and now - times[0] > 60.0:
            times.popleft()

    def allowed(self, client: str, now: float) -> bool:
        with self._lock:
            mine = self._failures.setdefault(client, deque())
            self._trim(mine, now)
            self._trim(self._all, now)
            if not mine:
                del self._failures[client]
            return len(mine) < SIGNIN_FAILURES_PER_MIN and len(self._all) < SIGNIN_FAILURES_PER_MIN_ALL

    def failed(self, client: str, now: float) -> None:
        with self._lock:
            self._failures.setdefault(client, deque()).append(now)
            self._all.append(now)
            if len(self._failures) > 10_000:  # bounded whoever tries
                self._failures.pop(next(iter(self._failures)))


class Dashboard:
    def __init__(self, source: FleetSource, fanout: FanOut) -> None:
        self.source = source
        self.fanout = fanout
        self.pool = ThreadPoolExecutor(max_workers=QUERY_THREADS, thread_name_prefix="web-query")
        self.signins = SigninLimiter()
        self._snapshots: dict[str, tuple[float, int, Any]] = {}
        #: feed items seen (any kind): a snapshot read before the latest one is read again
        self.changes = 0

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on a query thread: the event loop never waits for the coordinator's lock."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(fn, *args, **kwargs))

    def feed_item(self, item: object) -> None:
        """A feed follower (on the coordinator's threads): something changed, so snapshots are stale."""
        self.changes += 1

    async def snapshot(self, name: str, max_age_s: float, fn: Callable[[], T], *, until_change: bool = True) -> T:
        """`fn()`'s result, shared by every viewer until it is `max_age_s` old or (`until_change`) the feed told of
        a change: a hundred fleet pages opened in one quiet second cost one query."""
        held = self._snapshots.get(name)
        fresh = held is not None and (held[1] == self.changes or not until_change)
        if held is not None and fresh and time.monotonic() - held[0] < max_age_s:
            value: T = held[2]
            return value
        seen = self.changes
        value = await self.read(fn)
        self._snapshots[name] = (time.monotonic(), seen, value)
        while len(self._snapshots) > 256:  # one per name filter asked for: bounded whoever asks
            self._snapshots.pop(next(iter(self._snapshots)))
        return value

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.source.close()

    # --- who is asking -------------------------------------------------------------------------------------------

    @staticmethod
    def client(request: Req) -> str:
        return request.client.host if request.client else "?"

    @staticmethod
    def is_operator(request: Req) -> bool:
        """Signed in with the operator token: the session (an encrypted, HttpOnly, SameSite=Strict cookie) says so,
        and is younger than SESSION_S. It holds no token, only that the sign-in happened and when."""
        session = request.session
        since = session.get("since")
        return (session.get("operator") is True and isinstance(since, (int, float))
                and 0 <= time.time() - since < SESSION_S)

    def page(self, request: Req, template: str, *, status_code: int = 200, **context: Any) -> Template:
        """A page with what every page shows: who is signed in, and a note left by the last action."""
        note = None
        if "note" in request.session:
            note = request.session.pop("note")
            request.set_session(dict(request.session) if request.session else {})
        return Template(template_name=template, status_code=status_code,
                        context={"operator": self.is_operator(request), "note": note, "path": request.url.path,
                                 "can_sign_in": bool(self.source.operator_token), **context})

    @staticmethod
    def note(request: Req, message: str, *, ok: bool = True) -> None:
        """A line the next page shows once (what an action did)."""
        request.set_session({**request.session, "note": {"ok": ok, "text": message[:500]}})

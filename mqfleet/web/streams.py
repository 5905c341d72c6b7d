"""`/live`: a page's server-sent event stream, fed by the coordinator's feed through the `FanOut`.

What each page follows: the fleet page, hosts, the status and events (sent as one `changed` a second at most: the
page reads its part again); a jobs page, the states of the jobs it shows (`job_state`, the public job row); a job
page, that job's state and, for a signed-in operator only, its trainer output as the coordinator accepts it
(`lines`); a sweep page, its members' states (`changed`, every few seconds at most). A stream that falls behind is
closed and the page reconnects; `resync` asks a page to read everything again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from litestar import get
from litestar.exceptions import HTTPException
from litestar.handlers import HTTPRouteHandler
from litestar.response import ServerSentEvent, ServerSentEventMessage

from mqfleet.coordinator.feed import FeedItem, FeedKind
from mqfleet.web.dashboard import Dashboard, Req
from mqfleet.web.live import RESYNC, Stream, StreamRefusedError
from mqfleet.web.views import BadInputError

#: A comment line this often keeps proxies from closing a quiet stream, and finds closed tabs.
PING_S = 15.0
#: Milliseconds a browser waits before reconnecting a stream that ended.
RETRY_MS = 2000
#: Job states one jobs-page stream follows at most.
MAX_IDS = 200
#: Seconds between two `changed` messages of the fleet and sweep pages.
FLEET_EVERY_S = 1.0
SWEEP_EVERY_S = 3.0


def _everything(item: FeedItem) -> bool:
    return True


async def _messages(dash: Dashboard, stream: Stream, coalesce_s: float | None) -> AsyncIterator[ServerSentEventMessage]:
    loop = asyncio.get_running_loop()
    try:
        yield ServerSentEventMessage(event="ready", data="", retry=RETRY_MS)
        dirty, quiet_until = False, 0.0
        while True:
            wait_s = max(0.0, quiet_until - loop.time()) if dirty else PING_S
            try:
                item = await asyncio.wait_for(stream.queue.get(), wait_s)
            except TimeoutError:
                if dirty:
                    dirty, quiet_until = False, loop.time() + (coalesce_s or 0.0)
                    yield ServerSentEventMessage(event="changed", data="")
                else:
                    yield ServerSentEventMessage(comment="ping")
                continue
            if item is None:  # closed: too slow, or the server stops
                return
            if item is RESYNC:
                yield ServerSentEventMessage(event="resync", data="")
            elif coalesce_s is not None:
                if loop.time() >= quiet_until:
                    quiet_until = loop.time() + coalesce_s
                    yield ServerSentEventMessage(event="changed", data="")
                else:
                    dirty = True
            else:
                yield ServerSentEventMessage(event=item.kind.value, data=item.payload.decode("utf-8", "replace"))
    finally:
        dash.fanout.close(stream)


def stream_routes(dash: Dashboard) -> list[HTTPRouteHandler]:
    @get("/live")
    async def live(request: Req) -> ServerSentEvent:
        params = request.query_params
        view = params.get("view")
        kinds: frozenset[FeedKind]
        wants: Callable[[FeedItem], bool] = _everything
        coalesce_s: float | None = None
        if view == "fleet":
            kinds, coalesce_s = frozenset({FeedKind.HOST, FeedKind.STATUS, FeedKind.EVENT}), FLEET_EVERY_S
        elif view == "jobs":
            ids = frozenset(filter(None, (params.get("ids") or "").split(",")))
            if len(ids) > MAX_IDS:
                raise BadInputError(f"ids names at most {MAX_IDS} jobs, not {len(ids)}")
            kinds, wants = frozenset({FeedKind.JOB_STATE}), lambda item: item.key in ids
        elif view == "job":
            job = params.get("job") or ""
            if not job or len(job) > 128:
                raise BadInputError("job must name a job id")
            # Trainer output is an operator's: an anonymous stream never carries it (docs/SECURITY.md).
            kinds = frozenset({FeedKind.JOB_STATE, FeedKind.LINES} if dash.is_operator(request) else {FeedKind.JOB_STATE})
            wants = lambda item: item.key == job  # noqa: E731
        elif view == "sweep":
            members = await dash.read(dash.source.sweep_members, params.get("sweep") or "")
            kinds, wants, coalesce_s = frozenset({FeedKind.JOB_STATE}), lambda item: item.key in members, SWEEP_EVERY_S
        else:
            raise BadInputError("view must be fleet, jobs, job or sweep")
        try:
            stream = dash.fanout.open(dash.client(request), kinds, wants)
        except StreamRefusedError as e:
            raise HTTPException(status_code=e.status, detail=str(e)) from e
        return ServerSentEvent(_messages(dash, stream, coalesce_s), headers={"Cache-Control": "no-store",
                                                                             "X-Accel-Buffering": "no"})

    return [live]

"""The dashboard's pages, each also served as its live part (`.../part`, what a page swaps in when its stream says
something changed): fleet, jobs, one job (and its whole output as text), sweeps and one sweep.

New pages (groups from issue 28, studies from issue 31) are one more route here over one more `FleetSource` read.
An anonymous viewer gets the public view of each (`views.public_*`); a signed-in operator everything the CLI shows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

from litestar import Response, get
from litestar.handlers import HTTPRouteHandler
from litestar.response import Stream, Template

from mqfleet.lifecycle import TERMINAL, JobStatus
from mqfleet.web import views
from mqfleet.web.dashboard import Dashboard, Req
from mqfleet.web.views import JobsQuery

#: What a page shows, read for one request.
Context = Callable[[Req], Awaitable[dict[str, Any]]]
#: Seconds a fleet snapshot (workers, health) is shared by every viewer before it is read again.
SNAPSHOT_S = 1.0
#: Rows of a jobs page whose state changes are followed live (the stream's URL names them).
LIVE_ROWS = 100


def page_routes(dash: Dashboard) -> list[HTTPRouteHandler]:
    source = dash.source

    async def fleet_context(request: Req) -> dict[str, Any]:
        workers = await dash.snapshot("workers", SNAPSHOT_S, source.workers)
        health = await dash.snapshot("health", SNAPSHOT_S, source.health, until_change=False)
        if not dash.is_operator(request):
            workers = [views.public_worker(w) for w in workers]
        return {"workers": workers, "health": health, "live": "/live?view=fleet"}

    @get("/")
    async def home(request: Req) -> Response[bytes]:
        return Response(b"", status_code=303, headers={"Location": "/fleet"})

    async def jobs_context(request: Req) -> dict[str, Any]:
        p = request.query_params
        query = JobsQuery.parse(p.get("status"), p.get("name"), p.get("after"), p.get("order"), p.get("limit"))
        reply = await dash.read(source.jobs_page, status=query.status, name=query.name, after=query.after,
                                newest_first=query.newest_first, limit=query.limit, count=False)
        health = await dash.snapshot("health", SNAPSHOT_S, source.health, until_change=False)
        # Counting walks every matching row under the coordinator's lock (300 ms for a name glob at 100,000 jobs, time
        # claims would wait): by status it is health's count, and a name glob's matches are not counted.
        total: int | None = None
        if query.after is None and query.name is None:
            counts = health.jobs_by_status
            total = counts.get(query.status, 0) if query.status else sum(counts.values())
        ids = ",".join(str(j.get("id", "")) for j in reply.jobs[:LIVE_ROWS])
        return {"query": query, "jobs": reply.jobs, "total": total, "next_after": reply.next_after,
                "statuses": [s.value for s in JobStatus], "health": health, "live": f"/live?view=jobs&ids={ids}"}

    async def job_context(request: Req) -> dict[str, Any]:
        detail = await dash.read(source.job, request.path_params["ref"])
        operator = dash.is_operator(request)
        output = None
        if operator:
            head = await dash.read(source.logs, detail.id, None, limit=1)
            start = max(0, head.total - views.OUTPUT_TAIL_LINES)
            output = head if head.total <= 1 else await dash.read(source.logs, detail.id, head.attempt, offset=start,
                                                                  limit=views.OUTPUT_TAIL_LINES)
        else:
            detail = views.public_job(detail)
        return {"job": detail, "output": output, "series": views.progress_series(detail.progress_history),
                "live": f"/live?view=job&job={quote(detail.id, safe='')}"}

    @get("/jobs/{ref:str}/output")
    async def job_output(request: Req, ref: str) -> Response[Any]:
        """One attempt's whole stored output as text, page by page (operators only, like `mqfleet logs`)."""
        if not dash.is_operator(request):
            return dash.page(request, "error.html", status_code=403, message="Trainer output needs sign-in.")
        attempt = views.parse_int(request.query_params.get("attempt"), "attempt", low=1, high=1_000_000)
        first = await dash.read(source.logs, ref, attempt)

        async def pages() -> AsyncIterator[bytes]:
            reply = first
            for _ in range(10_000):
                yield "".join(line + "\n" for line in reply.lines).encode("utf-8", "replace")
                if reply.next_offset is None:
                    return
                reply = await dash.read(source.logs, first.job_id, first.attempt, offset=reply.next_offset)

        return Stream(pages(), media_type="text/plain; charset=utf-8")

    @get("/sweeps")
    async def sweeps(request: Req) -> Template:
        return dash.page(request, "sweeps.html", names=await dash.read(source.sweep_names))

    async def sweep_context(request: Req) -> dict[str, Any]:
        name = request.path_params["name"]
        reply = await dash.read(source.sweep, name)
        counts = Counter(row.status for row in reply.jobs)
        operator = dash.is_operator(request)
        walls = [row.usage.wall_s for row in reply.jobs if row.status == "completed" and row.usage]
        left = len(reply.jobs) - sum(counts[status] for status in TERMINAL)
        running = max(1, counts[JobStatus.RUNNING] + counts[JobStatus.CLAIMED])
        eta = (sum(walls) / len(walls)) * left / running if walls and left and operator else None
        return {"sweep": reply, "name": name, "counts": counts, "eta_s": eta,
                "series": views.compare_series(reply.jobs, reply.metric_names) if operator else {},
                "live": f"/live?view=sweep&sweep={quote(name, safe='')}"}

    def with_part(path: str, template: str, context: Context) -> list[HTTPRouteHandler]:
        """The page at `path` and its live part at `path/part` (what the page swaps in when its stream says so)."""
        async def whole(request: Req) -> Template:
            return dash.page(request, f"{template}.html", **await context(request))

        async def part(request: Req) -> Template:
            return dash.page(request, f"{template}_part.html", **await context(request))

        return [get(path, name=template)(whole), get(f"{path}/part", name=f"{template}_part")(part)]

    return [home, job_output, sweeps, *with_part("/fleet", "fleet", fleet_context),
            *with_part("/jobs", "jobs", jobs_context), *with_part("/jobs/{ref:str}", "job", job_context),
            *with_part("/sweeps/{name:str}", "sweep", sweep_context)]

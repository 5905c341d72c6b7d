"""Sign-in with the operator token, sign-out, and the operator actions (cancel, requeue, drain, undrain).

The token is compared in constant time on the server and never leaves it: a sign-in leaves an encrypted,
HttpOnly, SameSite=Strict session cookie saying only that it happened and when. Every POST carries the CSRF token
of Litestar's CSRF middleware (checked before any handler here runs). Actions go to the coordinator as signed
operator requests (`FleetSource`), so they pass the same checks as `mqfleet cancel`; their answer, or refusal, is
shown once on the next page. Hold and release (issue 28) are two more routes of the same shape.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from litestar import Response, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.response import Template

from mqfleet.errors import MqfleetError
from mqfleet.web.dashboard import Dashboard, Req

logger = logging.getLogger(__name__)


def _redirect(to: str) -> Response[bytes]:
    return Response(b"", status_code=303, headers={"Location": to})


def _local_path(raw: object) -> str:
    """Where to go after signing in: a path of this site only (never `//elsewhere` or a URL)."""
    path = raw if isinstance(raw, str) else ""
    if not path.startswith("/") or path.startswith("//") or "\\" in path or len(path) > 2000:
        return "/fleet"
    return path


def action_routes(dash: Dashboard) -> list[HTTPRouteHandler]:
    source = dash.source

    @get("/signin")
    async def signin_form(request: Req) -> Template:
        return dash.page(request, "signin.html", next=_local_path(request.query_params.get("next")), problem=None)

    @post("/signin")
    async def signin(request: Req) -> Response[Any]:
        form = await request.form()
        token, after = form.get("token"), _local_path(form.get("next"))
        client, now = dash.client(request), time.monotonic()
        expected = source.operator_token
        if not dash.signins.allowed(client, now):
            return dash.page(request, "signin.html", status_code=429, next=after,
                             problem="Too many failed sign-ins from this address: wait a minute.")
        if not expected:
            return dash.page(request, "signin.html", status_code=403, next=after,
                             problem="The coordinator has no operator token (MQFLEET_OPERATOR_TOKEN): nobody can sign in.")
        if not isinstance(token, str) or not hmac.compare_digest(token.encode(), expected.encode()):
            dash.signins.failed(client, now)
            logger.warning("web sign-in refused from %s", client)
            return dash.page(request, "signin.html", status_code=401, next=after, problem="That is not the operator token.")
        logger.info("web sign-in of an operator from %s", client)
        request.set_session({"operator": True, "since": time.time(), "note": {"ok": True, "text": "Signed in."}})
        return _redirect(after)

    @post("/signout")
    async def signout(request: Req) -> Response[bytes]:
        request.clear_session()
        return _redirect("/fleet")

    async def act(request: Req, back: str, what: Callable[[], Awaitable[str]]) -> Response[Any]:
        if not dash.is_operator(request):
            return dash.page(request, "error.html", status_code=403, message="Actions need an operator's sign-in.")
        try:
            dash.note(request, await what())
        except MqfleetError as e:
            dash.note(request, str(e), ok=False)
        return _redirect(back)

    @post("/jobs/{ref:str}/cancel")
    async def cancel(request: Req, ref: str) -> Response[Any]:
        async def run() -> str:
            row = await dash.read(source.cancel, ref)
            return f"{row.name} ({row.id[:12]}): {row.status}"
        return await act(request, f"/jobs/{quote(ref, safe='')}", run)

    @post("/jobs/{ref:str}/requeue")
    async def requeue(request: Req, ref: str) -> Response[Any]:
        fresh = (await request.form()).get("fresh") == "1"

        async def run() -> str:
            row = await dash.read(source.requeue, ref, fresh=fresh)
            return f"{row.name} ({row.id[:12]}): {row.status}" + (", checkpoint deleted" if fresh else "")
        return await act(request, f"/jobs/{quote(ref, safe='')}", run)

    @post(["/hosts/{host:str}/drain", "/hosts/{host:str}/undrain"])
    async def drain(request: Req, host: str) -> Response[Any]:
        draining = not request.url.path.endswith("/undrain")

        async def run() -> str:
            reply = await dash.read(source.drain, host, draining=draining)
            return f"{reply.host}: {'draining' if draining else 'takes work'}"
        return await act(request, "/fleet", run)

    return [signin_form, signin, signout, cancel, requeue, drain]

"""`WebServer`: the dashboard served by the coordinator's process (`mqfleet coordinator --web-port N`), in a thread of
its own running its own event loop (uvicorn), stopped with the coordinator; and `build_app`, the Litestar app.

Litestar gives the pieces the dashboard must not write itself: encrypted session cookies, CSRF tokens checked on
every POST, server-sent events, Jinja templates with autoescaping, static files (docs/INTERNALS.md, "The web
dashboard"). Nothing here is imported unless `--web-port` is given.
"""

from __future__ import annotations

import asyncio
import gzip
import importlib.util
import ipaddress
import logging
import secrets
import socket
import threading
from pathlib import Path
from typing import Any

import uvicorn
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from litestar import Litestar, Response, get
from litestar.config.compression import CompressionConfig
from litestar.config.csrf import CSRFConfig
from litestar.datastructures import ResponseHeader
from litestar.exceptions import HTTPException
from litestar.middleware.session.client_side import CookieBackendConfig
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from mqfleet import defaults
from mqfleet.errors import (
    AmbiguousError,
    BadRequestError,
    ConfigurationError,
    MqfleetError,
    NotFoundError,
    UnavailableError,
)
from mqfleet.web import views
from mqfleet.web.actions import action_routes
from mqfleet.web.dashboard import SESSION_S, Dashboard, Req
from mqfleet.web.live import FanOut
from mqfleet.web.pages import page_routes
from mqfleet.web.source import FleetSource
from mqfleet.web.streams import stream_routes

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
#: Scripts only from this site (so no markup that slipped into a page could run one); plotly sets inline styles.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'")


def plotly_js() -> bytes:
    """plotly.js as the `plotly` package installed it (nothing is copied into this repository, nothing from a CDN)."""
    spec = importlib.util.find_spec("plotly")
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = next((Path(f) / "package_data" / "plotly.min.js" for f in folders
                 if (Path(f) / "package_data" / "plotly.min.js").is_file()), None)
    if path is None:
        raise ConfigurationError("the web dashboard needs the plotly package for its charts: pip install 'mqfleet[web]'")
    return path.read_bytes()


def _status_of(error: Exception) -> int:
    if isinstance(error, (views.BadInputError, BadRequestError, AmbiguousError)):
        return 400
    if isinstance(error, NotFoundError):
        return 404
    if isinstance(error, UnavailableError):
        return 503
    return 500


def build_app(dash: Dashboard, *, secure_cookies: bool) -> Litestar:
    plotly = gzip.compress(plotly_js(), compresslevel=6)

    @get("/assets/plotly.min.js")
    async def plotly_asset(request: Req) -> Response[bytes]:
        # Served gzipped (1.4 MiB instead of 4.6): a browser caches it for a day.
        return Response(plotly, media_type="text/javascript", headers={
            "Content-Encoding": "gzip", "Cache-Control": "public, max-age=86400", "Vary": "Accept-Encoding"})

    def on_error(request: Req, error: Exception) -> Response[Any]:
        status = _status_of(error)
        if status == 500:
            logger.exception("web: %s %s failed", request.method, request.url.path, exc_info=error)
        message = str(error) if status != 500 else "The dashboard failed to answer; see the coordinator's log."
        return dash.page(request, "error.html", status_code=status, message=message)

    def on_http_error(request: Req, error: HTTPException) -> Response[Any]:
        message = error.detail if error.status_code != 500 else "The dashboard failed to answer."
        if request.url.path == "/live":
            return Response(message, status_code=error.status_code, media_type="text/plain")
        return dash.page(request, "error.html", status_code=error.status_code, message=message)

    async def started() -> None:
        dash.fanout.bind(asyncio.get_running_loop())
        dash.source.feed.follow(dash.fanout)
        dash.source.feed.follow(dash.feed_item)

    async def stopping() -> None:
        dash.source.feed.unfollow(dash.feed_item)
        dash.source.feed.unfollow(dash.fanout)
        dash.fanout.close_all()

    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True, undefined=StrictUndefined)
    env.filters.update(ago=views.ago, until=views.until, duration=views.duration, size=views.size, percent=views.percent,
                       gpus=views.gpus, text=views.text)
    return Litestar(
        route_handlers=[*page_routes(dash), *action_routes(dash), *stream_routes(dash), plotly_asset,
                        create_static_files_router(path="/static", directories=[HERE / "static"])],
        template_config=TemplateConfig(instance=JinjaTemplateEngine.from_environment(env)),
        middleware=[CookieBackendConfig(secret=secrets.token_bytes(32), key="mqfleet-session", httponly=True,
                                        samesite="strict", secure=secure_cookies, max_age=SESSION_S).middleware],
        csrf_config=CSRFConfig(secret=secrets.token_urlsafe(32), cookie_name="mqfleet-csrf", cookie_httponly=True,
                               cookie_samesite="strict", cookie_secure=secure_cookies),
        compression_config=CompressionConfig(backend="gzip", minimum_size=1000, exclude=["/live", "/assets"]),
        response_headers=[ResponseHeader(name="Content-Security-Policy", value=CSP),
                          ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
                          ResponseHeader(name="Referrer-Policy", value="same-origin"),
                          ResponseHeader(name="X-Frame-Options", value="DENY")],
        exception_handlers={HTTPException: on_http_error, views.BadInputError: on_error, MqfleetError: on_error,
                            Exception: on_error},
        on_startup=[started], on_shutdown=[stopping],
        request_max_body_size=64 * 1024,
        openapi_config=None,
        logging_config=None,
    )


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class WebServer:
    """The dashboard on HOST:PORT, in its own thread. `start()` binds first, so a port in use fails the start."""

    def __init__(self, source: FleetSource, *, host: str = defaults.WEB_HOST, port: int,
                 max_streams: int = defaults.WEB_MAX_STREAMS) -> None:
        self.host, self.port = host, port
        self.dash = Dashboard(source, FanOut(max_streams=max_streams, max_per_client=defaults.WEB_MAX_STREAMS_PER_CLIENT))
        # Cookies only over TLS off loopback: the dashboard is then behind a TLS proxy (docs/OPERATIONS.md).
        app = build_app(self.dash, secure_cookies=not is_loopback(host))
        self._config = uvicorn.Config(app, log_level="warning", lifespan="on", http="h11", ws="none",
                                      timeout_graceful_shutdown=3, limit_concurrency=max_streams + 200,
                                      access_log=False, server_header=False)
        self._server = uvicorn.Server(self._config)
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self, wait_s: float = 15.0) -> None:
        try:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(512)
        except OSError as e:
            raise ConfigurationError(f"--web-port {self.port} on {self.host}: cannot listen there ({e.strerror or e}); "
                                     "pick a free port, or a --web-host this machine has") from e
        self.port = sock.getsockname()[1]
        self._socket = sock
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name="web", daemon=True)
        self._thread.start()
        started = threading.Event()
        for _ in range(int(wait_s / 0.05)):
            if self._server.started or not self._thread.is_alive():
                break
            started.wait(0.05)
        if not self._server.started:
            raise ConfigurationError(f"the web dashboard did not start on {self.url}; see the log above")
        logger.info("web dashboard on %s", self.url)

    def stop(self) -> None:
        """End the open streams, stop serving, and wait (bounded) for the thread."""
        self.dash.fanout.shutdown()
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.dash.close()

"""The HTTP API (shared/spec/API.md), unchanged for deployed Configurators.

Errors are raised as kiisrv types everywhere below; this module is the one place that
turns them, and the framework's own errors, into ``{"error": ...}`` JSON. It is also
where a request's statistics are taken (who asked, from what), since only HTTP knows.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiisrv import __version__
from kiisrv.clients import client_address
from kiisrv.core import Kiisrv, Outcome
from kiisrv.errors import (
    BuildFailed,
    InvalidLayout,
    KiisrvError,
    NotFound,
    PayloadTooLarge,
    Unavailable,
)
from kiisrv.recipe.layout import request_schema
from kiisrv.settings import Settings
from kiisrv.store import stats
from kiisrv.store.requests import RequestRecord
from kiisrv.store.storage import now
from kiisrv.tools import canary
from kiisrv.web import metrics, status
from kiisrv.web.httpguard import HttpRules, read_body

log = logging.getLogger("kiisrv.http")

STATIC_DIR = Path(__file__).parent / "static"
# Request bodies past httpguard.SPOOL_BYTES, while they arrive (unnamed files).
UPLOADS_DIR = "uploads"
STATIC_FILES = {"chart.umd.min.js": "text/javascript", "status.js": "text/javascript"}
_HASH_RE = re.compile(r"^[0-9a-f]{32}$")


def client_os(user_agent: str) -> str:
    ua = user_agent.lower()
    if "windows" in ua:
        return "Windows"
    if "mac" in ua:
        return "Mac"
    if "linux" in ua or "x11" in ua:
        return "Linux"
    return "Unknown"


def request_record(request: Request, outcome: Outcome, received: Any, client: str) -> RequestRecord:
    """The Requests row of one answered build request (the reference's columns).

    ``client`` is already the keyed hash of the address (privacy.py): no raw address
    is ever written.
    """
    user_agent = request.headers.get("user-agent", "")
    return RequestRecord(
        ip_addr=client,
        os=client_os(user_agent),
        web="electron" not in user_agent.lower(),
        hash=outcome.job.hash,
        board=outcome.board,
        variant=outcome.variant,
        layers=outcome.layers,
        container=outcome.container,
        success=outcome.success,
        request_time=received,
        build_duration=outcome.duration_ms,
        # A cache hit costs nothing and is not rate-limited: it is counted per day,
        # not written as a row of its own (34,000 of them were 4 MB of rows).
        hit_day=received.date().isoformat() if outcome.cached else None,
    )


def _no_constant(name: str) -> Any:
    """JSON has no NaN or Infinity: Python reads them, a strict parser of the zip's
    layout JSON would not."""
    raise InvalidLayout(f"the body is not valid JSON: {name} is not a JSON number")


def parse_body(raw: bytes) -> Any:
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidLayout(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidLayout("the body is nested too deeply to be a layout") from None
    if not isinstance(body, dict):
        raise InvalidLayout('the body must be a JSON object {"config": ..., "env": ...}')
    return body


# Zips up to this size are answered from memory (one write), larger ones streamed.
SMALL_FILE = 4 * 1024 * 1024


def _small_file(path: Path) -> bytes | None:
    with path.open("rb") as fh:
        data = fh.read(SMALL_FILE + 1)
    return data if len(data) <= SMALL_FILE else None


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


# Label values come from fixed sets: a label per client-sent method let a client add
# series to /metrics at will (2,000 random methods: 16 MB, never freed; #14.4).
METRIC_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


class CountRequests:
    """Counts every HTTP request by handler, method and status, for /metrics."""

    def __init__(self, app: ASGIApp, measures: metrics.Metrics) -> None:
        self.app = app
        self.measures = measures

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        code = 500

        async def sending(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            # The router names the endpoint in the scope: a handful of names, not paths.
            route = getattr(scope.get("endpoint"), "__name__", "unmatched")
            method = scope["method"] if scope["method"] in METRIC_METHODS else "other"
            self.measures.requests.labels(route, method, str(code)).inc()


class BodyLimit:
    """Refuses bodies over the limit before they are read into memory."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = PayloadTooLarge(f"the request body is larger than {self.limit} bytes")
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await error_response(413, too_large.message)(scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise too_large
            return message

        await self.app(scope, limited, send)


def create_app(settings: Settings) -> FastAPI:
    server = Kiisrv(settings)
    measures = metrics.Metrics(server)
    proxies = settings.proxies

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    app = FastAPI(title="kiisrv", version=__version__, lifespan=lifespan)
    app.state.kiisrv = server
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(HttpRules)
    app.add_middleware(CountRequests, measures=measures)

    @app.exception_handler(KiisrvError)
    async def on_kiisrv_error(request: Request, exc: KiisrvError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:10]
        )
        return error_response(400, f"invalid request: {problems}")

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> JSONResponse:
        return error_response(500, f"internal server error: {type(exc).__name__}")

    build_doc: dict[str, Any] = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/BuildRequest"}}
            },
        },
    }

    async def build(request: Request) -> Response:
        """Build firmware for a layout; blocks until the zip is ready."""
        received = now()
        try:
            raw = await read_body(request, settings.data_dir / UPLOADS_DIR)
        except ClientDisconnect:
            # Nobody to answer: one line, not a traceback (100 aborted uploads wrote
            # 390 KB of them), and nothing else was done.
            log.info("a client went away before sending its whole request")
            return Response(status_code=400)
        client = client_address(
            request.client.host if request.client else "",
            request.headers.getlist("x-forwarded-for"),
            proxies,
        )
        try:
            outcome = await server.build_raw(raw, parse_body, client)
        except RecursionError:  # nested deep inside an otherwise parsed body
            raise InvalidLayout("the body is nested too deeply to be a layout") from None
        server.stats.record(request_record(request, outcome, received, server.pseudonym(client)))
        if outcome.cached:
            measures.cache_hits.inc()
        if not outcome.success and outcome.job.retry_later:
            raise Unavailable(
                outcome.job.error or "the build could not run",
                retry_after=30,
                success=False,
                filename=outcome.filename,
            )
        if not outcome.success:
            raise BuildFailed(
                outcome.job.error or "the build failed",
                success=False,
                filename=outcome.filename,
            )
        return JSONResponse({"filename": outcome.filename, "success": True})

    for path in ("/", "/download.php"):
        app.add_api_route(
            path, build, methods=["POST"], openapi_extra=build_doc, name=f"build {path}"
        )

    @app.get("/tmp/{name}", response_class=FileResponse)
    async def artifact(name: str) -> Response:
        """A build's zip (or ``_error.zip``), as named in a build answer."""
        path = await server.artifact(name)
        data = await anyio.to_thread.run_sync(_small_file, path)
        if data is None:
            return FileResponse(path, media_type="application/zip")
        # Headers and body in one go: an API server killed between the two (a file read
        # on a thread apart) left clients with headers and no body, which no load
        # balancer can send again.
        return Response(data, media_type="application/zip")

    @app.get("/versions")
    async def versions() -> dict[str, Any]:
        """Versions whose controller image is present, with their release details."""
        available = await server.catalog.available()
        return {name: a.info.as_json() if a.info else None for name, a in available.items()}

    @app.get("/layouts/{name}")
    async def layout(name: str, rev: str | None = None) -> Response:
        """A keyboard's layout JSON; aliases resolve to their target."""
        content = await anyio.to_thread.run_sync(server.layouts.read, name, rev)
        return Response(content, media_type="application/json")

    @app.get("/stats", response_class=PlainTextResponse)
    async def statistics() -> str:
        """Request statistics as plain text, as the reference server printed them."""
        await server.stats.flush()
        return await stats.render(server.storage, server.layouts)

    async def status_page() -> HTMLResponse:
        """What is building, what was built, and the statistics as charts; no build named."""
        return HTMLResponse(status.render(await status.collect(server)))

    app.add_api_route("/status", status_page, methods=["GET"], response_class=HTMLResponse)
    app.add_api_route("/", status_page, methods=["GET"], include_in_schema=False)

    def operator_only(request: Request) -> None:
        """The detailed status is the holder of ``KIISRV_STATUS_TOKEN``'s alone: without
        a token set it does not exist (404); without the token it asks for it (401)."""
        token = settings.status_token
        if token is None:
            raise NotFound(f"no route {request.method} {request.url.path}")
        given = request.headers.get("authorization", "")
        if not status.token_matches(token.get_secret_value(), given):
            raise HTTPException(
                401,
                "the detailed status needs the status token: Authorization: Bearer <token>",
                headers={"WWW-Authenticate": status.REALM},
            )

    @app.get("/status/detail", response_class=HTMLResponse, include_in_schema=False)
    async def status_detail(request: Request) -> HTMLResponse:
        """The status page with each build's hash, layout and log (the operator's)."""
        operator_only(request)
        return HTMLResponse(status.render(await status.collect(server, detailed=True), "../"))

    @app.get("/status/detail.json", include_in_schema=False)
    async def status_detail_json(request: Request) -> dict[str, Any]:
        """The detailed status page's figures (the operator's)."""
        operator_only(request)
        return (await status.collect(server, detailed=True)).as_json()

    @app.get("/metrics")
    async def metrics_page() -> Response:
        """Prometheus metrics (names prefixed ``kiisrv_``)."""
        return Response(await measures.render(), media_type=metrics.CONTENT_TYPE)

    @app.get("/stats.json")
    async def stats_json() -> dict[str, Any]:
        """The figures of ``/stats``."""
        await server.stats.flush()
        return await stats.as_json(server.storage, server.layouts)

    @app.get("/status.json")
    async def status_json() -> dict[str, Any]:
        """The status page's figures; no build named."""
        return (await status.collect(server)).as_json()

    @app.get("/static/{name}")
    async def static(name: str) -> FileResponse:
        """The status page's own files (Chart.js): no CDN, self-hosters may be offline."""
        if name not in STATIC_FILES:
            raise NotFound(f"no static file {name!r}")
        return FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name])

    @app.get("/compat")
    async def compat() -> Response:
        """The latest compatibility report of ``kiisrv canary``: layout x version."""
        path = settings.data_dir / canary.REPORT_NAME
        try:
            content = await anyio.to_thread.run_sync(path.read_bytes)
        except FileNotFoundError:
            raise NotFound("no compatibility report yet: run `kiisrv canary`") from None
        return Response(content, media_type="application/json")

    @app.get("/builds/{hash_}")
    async def build_status(hash_: str) -> dict[str, object]:
        """The state of one build (queued, running, succeeded, failed)."""
        job = await server.status(hash_) if _HASH_RE.match(hash_) else None
        if job is None:
            raise NotFound(f"no build {hash_!r}")
        # How many builds start before it (asu's users ask for it most); None unless queued.
        return {**job.as_json(), "queue_position": await server.queue.position(hash_)}

    @app.get("/builds/{hash_}/log", response_class=PlainTextResponse)
    async def build_log(hash_: str) -> PlainTextResponse:
        """A build's output: live while it runs, its build log once finished."""
        if not _HASH_RE.match(hash_):
            raise NotFound(f"no build {hash_!r}")
        text = await server.log(hash_)
        return PlainTextResponse(text.decode("utf-8", "replace"))

    @app.get("/healthz")
    async def health() -> dict[str, object]:
        """Liveness for container health checks; says whether the engine answers."""
        engine = await server.engine.ping()
        return {"status": "ok", "engine": engine}

    # The reference server took a build POST on any path; other methods get a 404 there.
    async def anything_else(request: Request) -> Response:
        if request.method == "POST":
            return await build(request)
        raise NotFound(f"no route {request.method} {request.url.path}")

    app.add_api_route(
        "/{path:path}", anything_else, methods=["GET", "POST"], include_in_schema=False
    )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            defs = request_schema()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(defs.pop("$defs", {}))
            components["BuildRequest"] = defs
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app

"""The build API the Configurator uses (shared/spec/API.md): a layout in, a zip's name
out; the zip, a build's state and its log by hash.

It is also where a request's statistics are taken (who asked, from what), since only
HTTP knows; the client is the peer or, behind a trusted proxy, its X-Forwarded-For
(clients.py), and only its keyed hash is kept (privacy.py).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.requests import ClientDisconnect

from kiisrv.clients import client_address
from kiisrv.core import Kiisrv, Outcome
from kiisrv.errors import BuildFailed, InvalidLayout, NotFound, Unavailable
from kiisrv.settings import Settings
from kiisrv.store.requests import RequestRecord
from kiisrv.store.storage import now
from kiisrv.web import metrics
from kiisrv.web.httpguard import read_body

log = logging.getLogger("kiisrv.http")

# Request bodies past httpguard.SPOOL_BYTES, while they arrive (unnamed files).
UPLOADS_DIR = "uploads"
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
    # The pruner (its own thread) may have removed the zip since it was looked up.
    try:
        with path.open("rb") as fh:
            data = fh.read(SMALL_FILE + 1)
    except FileNotFoundError:
        raise NotFound(f"no build artifact named {path.name!r}") from None
    return data if len(data) <= SMALL_FILE else None


def router(server: Kiisrv, settings: Settings, measures: metrics.Metrics) -> APIRouter:
    """The build routes, the catch-all last: it must come after every other route."""
    routes = APIRouter()
    proxies = settings.proxies

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
        routes.add_api_route(
            path, build, methods=["POST"], openapi_extra=build_doc, name=f"build {path}"
        )

    @routes.get("/tmp/{name}", response_class=FileResponse)
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

    @routes.get("/builds/{hash_}")
    async def build_status(hash_: str) -> dict[str, object]:
        """The state of one build (queued, running, succeeded, failed)."""
        job = await server.status(hash_) if _HASH_RE.match(hash_) else None
        if job is None:
            raise NotFound(f"no build {hash_!r}")
        # How many builds start before it (asu's users ask for it most); None unless queued.
        return {**job.as_json(), "queue_position": await server.queue.position(hash_)}

    @routes.get("/builds/{hash_}/log", response_class=PlainTextResponse)
    async def build_log(hash_: str) -> PlainTextResponse:
        """A build's output: live while it runs, its build log once finished."""
        if not _HASH_RE.match(hash_):
            raise NotFound(f"no build {hash_!r}")
        text = await server.log(hash_)
        return PlainTextResponse(text.decode("utf-8", "replace"))

    @routes.get("/builds/{hash_}/manifest")
    async def build_manifest(hash_: str) -> dict[str, Any]:
        """What went into a build's firmware, and this deployment's signature over it
        (as ``manifest.json`` and ``manifest.sig`` in its zip; ``kiisrv verify``)."""
        if not _HASH_RE.match(hash_):
            raise NotFound(f"no build {hash_!r}")
        text, signature = await server.manifest(hash_)
        return {"manifest": json.loads(text), "signature": json.loads(signature)}

    # The reference server took a build POST on any path; other methods get a 404 there.
    async def anything_else(request: Request) -> Response:
        if request.method == "POST":
            return await build(request)
        raise NotFound(f"no route {request.method} {request.url.path}")

    routes.add_api_route(
        "/{path:path}", anything_else, methods=["GET", "POST"], include_in_schema=False
    )
    return routes

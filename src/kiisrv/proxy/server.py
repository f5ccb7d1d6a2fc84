"""``kiisrv socket-proxy``: the only holder of the Docker socket in a deployment.

The server and the workers reach the engine through it (``DOCKER_HOST=tcp://...``);
it forwards to the engine's unix socket what ``policy.py`` allows and answers 403
to the rest, with a JSON ``message`` the Docker SDK shows. Written in Python so the
rule lives beside the code that makes the calls, where unit tests reach it: no
packaged proxy filters create bodies.

What it checks is what it forwards: a per-container call goes to the full id its
inspect answer gave (``policy.bound_container``), or to the full id of a
container this proxy itself created (remembered from the create's answer: no inspect
needed, the create was checked), and a create body as re-serialised after the check. The
engine's error answers reach the caller as their status and a fixed message: its text
names other containers (a 409 names the user of a volume; "multiple IDs found" tells
prefixes apart). Malformed input is a 400 or 403, never a 500; a body must arrive
whole within ``KIISRV_PROXY_BODY_TIMEOUT``.

Responses are streamed as they come: ``wait`` answers when the build ends and logs
may be long, so the upstream read has no timeout (the caller keeps its own).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from kiisrv.build.containers import NOT_OURS
from kiisrv.proxy.create import check_create
from kiisrv.proxy.policy import (
    MAX_ARCHIVE_BODY,
    MAX_CREATE_BODY,
    Call,
    Ceilings,
    Kind,
    Policy,
    Refused,
    bound_container,
    check_image,
    checked_query,
    list_query,
    parse_json,
    parse_size,
    route,
    visible,
    visible_images,
)
from kiisrv.settings import Settings

log = logging.getLogger("kiisrv.socketproxy")

DEFAULT_PORT = 2375
# Containers remembered as made through this proxy (a build's calls skip an inspect).
MAX_REMEMBERED = 4096
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}


def policy(settings: Settings) -> Policy:
    """The rule for this deployment, from the same variables the server reads: the
    build limits the server asks for are the ceilings the proxy holds it to."""
    instances = [i.strip() for i in settings.proxy_instances.split(",") if i.strip()]
    return Policy(
        instances=frozenset(instances or [settings.instance]),
        image_prefix=settings.image_prefix,
        image_tag=settings.image_tag,
        build_user=settings.build_user,
        ceilings=Ceilings(
            memory=parse_size(settings.build_memory),
            pids=settings.build_pids,
            nano_cpus=int(settings.build_cpus * 1e9),
            tmpfs=parse_size(settings.build_tmpfs),
            log_bytes=parse_size(settings.build_log_size),
            log_files=2,
        ),
    )


def engine_socket(settings: Settings) -> str:
    if not settings.docker_url.startswith("unix://"):
        raise ValueError(f"DOCKER_HOST={settings.docker_url}: the proxy needs the unix socket")
    return settings.docker_url.removeprefix("unix://")


class BadRequest(Exception):
    """The proxy answers 400: the request itself is malformed or came too slowly."""


def _message(status: int) -> str:
    """What the caller learns of an engine error: its status, never the engine's text."""
    return {
        400: "the Docker engine refused the request as invalid",
        404: "the Docker engine found no such object",
        409: "the Docker engine answered: conflict (in use, or already so)",
        304: "not modified",
    }.get(status, f"the Docker engine answered {status}")


class SocketProxy:
    """An ASGI app: one request in, the engine calls its check needs, then the call."""

    def __init__(self, policy: Policy, socket_path: str, body_timeout: float = 30.0) -> None:
        self.policy = policy
        self.body_timeout = body_timeout
        # Full ids of the containers created through this proxy, oldest first.
        self._created: OrderedDict[str, None] = OrderedDict()
        self.engine = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=socket_path),
            base_url="http://engine",
            timeout=httpx.Timeout(None, connect=10),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=20),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()  # startup: the client connects lazily
            await send({"type": "lifespan.startup.complete"})
            await receive()  # shutdown
            await self.engine.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        response = await self.handle(Request(scope, receive))
        await response(scope, receive, send)

    async def handle(self, request: Request) -> Response:
        method, path = request.method, request.scope["path"]
        try:
            return await self._handle(request)
        except Refused as exc:
            log.warning("refused %s %s: %s", method, path, exc.reason)
            return _refusal(exc.reason)
        except BadRequest as exc:
            log.warning("bad request %s %s: %s", method, path, exc)
            return JSONResponse(
                {"message": f"refused by kiisrv socket proxy: {exc}"}, status_code=400
            )
        except ClientDisconnect:
            return Response(status_code=400)
        except httpx.TransportError as exc:
            log.warning("engine unreachable for %s %s: %s", method, path, exc)
            return JSONResponse({"message": "the Docker engine is unreachable"}, 502)
        except Exception:
            # A bug here must not become a 500 that says more than a refusal, nor a call.
            log.exception("unexpected failure on %s %s: refused", method, path)
            return JSONResponse(
                {"message": "refused by kiisrv socket proxy: malformed request"}, 400
            )

    async def _handle(self, request: Request) -> Response:
        method = request.method
        call = route(method, request.scope["path"])
        query = checked_query(call, list(request.query_params.multi_items()), self.policy)
        if call.kind is Kind.IMAGES:
            return await self._filtered(call.path, query, lambda a: visible_images(a, self.policy))
        if call.kind is Kind.IMAGE:
            check_image(call, self.policy)
        if call.kind is Kind.LIST:
            return await self._filtered(
                call.path, list_query(query), lambda a: visible(a, self.policy)
            )
        body: bytes | None = None
        path = call.path
        if call.kind is Kind.CONTAINER:
            inspecting = method == "GET" and call.tail == "/json"
            ident = call.container or ""
            if inspecting or ident not in self._created:  # else: made, and checked, here
                inspected = await self._own_container(call)
                if inspecting:
                    return JSONResponse(inspected)  # the answer the check read
                ident = inspected["Id"]
            path = call.at(ident)
            if method == "PUT":  # a build's inputs, into its own container
                body = await self._body(request, MAX_ARCHIVE_BODY, "archive")
            if method == "DELETE":
                self._created.pop(ident, None)
        elif call.kind is Kind.CREATE:
            config = check_create(
                parse_json(await self._body(request, MAX_CREATE_BODY, "create"), "the body"),
                self.policy,
            )
            return await self._create(call.path, query, json.dumps(config).encode())
        return await self._forward(method, path, query, body)

    async def _body(self, request: Request, limit: int, what: str) -> bytes:
        """A request body, read up to a bound and within the body timeout: a client that
        announces more than it sends is cut off, not waited for."""
        data = bytearray()

        async def read() -> None:
            async for chunk in request.stream():
                data.extend(chunk)
                if len(data) > limit:
                    raise Refused(f"{what} body too large")

        try:
            async with asyncio.timeout(self.body_timeout):
                await read()
        except TimeoutError:
            raise BadRequest(f"the {what} body did not arrive in {self.body_timeout:g} s") from None
        return bytes(data)

    async def _own_container(self, call: Call) -> dict[str, Any]:
        """The engine's inspect answer for the container the call names, if it is exactly
        one of this deployment's; Refused(NOT_OURS) otherwise, the same for every case."""
        r = await self.engine.get(f"{call.version}/containers/{call.container}/json")
        if r.status_code != 200:
            raise Refused(NOT_OURS)
        inspected = parse_json(r.content, "the engine's answer")
        bound_container(call.container or "", inspected, self.policy)
        return dict(inspected)

    async def _create(self, path: str, query: Sequence[tuple[str, str]], body: bytes) -> Response:
        """The checked create, forwarded; the id it made is remembered as this
        deployment's, so calls on it by that full id need no inspect first (an id
        never names another container; labels never change)."""
        r = await self.engine.post(
            path, params=list(query), content=body, headers={"Content-Type": "application/json"}
        )
        if r.status_code != 201:
            return _engine_error(r.status_code)
        answer = parse_json(r.content, "the engine's answer")
        ident = answer.get("Id") if isinstance(answer, dict) else None
        if isinstance(ident, str) and re.fullmatch(r"[0-9a-f]{64}", ident):
            self._created[ident] = None
            while len(self._created) > MAX_REMEMBERED:
                self._created.popitem(last=False)
        return JSONResponse(answer, status_code=201)

    async def _filtered(self, path: str, query: Sequence[tuple[str, str]], narrow: Any) -> Response:
        r = await self.engine.get(path, params=list(query))
        if r.status_code != 200:
            return _engine_error(r.status_code)
        return JSONResponse(narrow(parse_json(r.content, "the engine's answer")))

    async def _forward(
        self, method: str, path: str, query: Sequence[tuple[str, str]], body: bytes | None
    ) -> Response:
        headers = {}
        if body is not None:
            headers["Content-Type"] = "application/x-tar" if method == "PUT" else "application/json"
        upstream = await self.engine.send(
            self.engine.build_request(
                method, path, params=list(query), content=body, headers=headers
            ),
            stream=True,
        )
        if upstream.status_code >= 400:
            await upstream.aclose()
            return _engine_error(upstream.status_code)

        async def relay() -> AsyncIterator[bytes]:
            # Closed also when the caller goes away mid-stream (a wait it gave up on).
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()

        return StreamingResponse(
            relay(),
            status_code=upstream.status_code,
            headers={k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP},
        )


def _refusal(reason: str) -> Response:
    return JSONResponse({"message": f"refused by kiisrv socket proxy: {reason}"}, status_code=403)


def _engine_error(status: int) -> Response:
    return JSONResponse({"message": _message(status)}, status_code=status)


def run(settings: Settings, host: str, port: int, keep_alive: int) -> None:
    """Serve until stopped (``kiisrv socket-proxy``)."""
    import uvicorn

    rule = policy(settings)
    log.info(
        "socket proxy on %s:%d for instances %s (no bind mounts; ceilings %s)",
        host,
        port,
        ", ".join(sorted(rule.instances)),
        rule.ceilings,
    )
    uvicorn.run(
        SocketProxy(rule, engine_socket(settings), settings.proxy_body_timeout),
        host=host,
        port=port,
        log_level="info",
        timeout_keep_alive=keep_alive,
    )

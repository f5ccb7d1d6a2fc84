"""``kiisrv socket-proxy``: the only holder of the Docker socket in a deployment.

The server and the workers reach the engine through it (``DOCKER_HOST=tcp://...``);
it forwards to the engine's unix socket what ``enginepolicy`` allows and answers 403
to the rest, with a JSON ``message`` the Docker SDK shows. Written in Python so the
rule lives beside the code that makes the calls, where unit tests reach it: no
packaged proxy filters create bodies.

Responses are streamed as they come: ``wait`` answers when the build ends and logs
may be long, so the upstream read has no timeout (the caller keeps its own).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from kiisrv.ccache import client_volume_prefix
from kiisrv.enginepolicy import (
    MAX_ARCHIVE_BODY,
    MAX_CREATE_BODY,
    Call,
    Kind,
    Policy,
    Refused,
    check_create,
    check_volume,
    list_query,
    owned,
    route,
    visible,
    visible_volumes,
    volume_query,
)
from kiisrv.settings import Settings

log = logging.getLogger("kiisrv.socketproxy")

DEFAULT_PORT = 2375
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
    """The rule for this deployment, from the same variables the server reads."""
    instances = [i.strip() for i in settings.proxy_instances.split(",") if i.strip()]
    return Policy(
        instances=frozenset(instances or [settings.instance]),
        image_prefix=settings.image_prefix,
        image_tag=settings.image_tag,
        volumes=frozenset([settings.ccache_volume]),
        build_user=settings.build_user,
        client_volume_prefix=client_volume_prefix(settings),
    )


def engine_socket(settings: Settings) -> str:
    if not settings.docker_url.startswith("unix://"):
        raise ValueError(f"DOCKER_HOST={settings.docker_url}: the proxy needs the unix socket")
    return settings.docker_url.removeprefix("unix://")


class SocketProxy:
    """An ASGI app: one request in, at most two engine calls out (an ownership check)."""

    def __init__(self, policy: Policy, socket_path: str) -> None:
        self.policy = policy
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
            call = route(method, path)
            query = list(request.query_params.multi_items())
            if call.kind is Kind.CONTAINER:
                refusal = await self._owner_check(call)
                if refusal is not None:
                    return refusal
            if call.kind is Kind.LIST:
                return await self._list(call, list_query(query))
            if call.kind is Kind.VOLUMES:
                return await self._volumes(call, volume_query(query, self.policy))
            if call.kind is Kind.VOLUME:
                check_volume(call, self.policy)
                query = []  # no force: a volume in use stays
            body = None
            if call.kind is Kind.CREATE:
                body = json.dumps(check_create(await _json(request), self.policy)).encode()
            elif method == "PUT":  # a build's inputs, into its own container (owner-checked)
                body = await _bounded(request, MAX_ARCHIVE_BODY, "archive")
            return await self._forward(method, call.path, query, body)
        except Refused as exc:
            log.warning("refused %s %s: %s", method, path, exc.reason)
            return JSONResponse(
                {"message": f"refused by kiisrv socket proxy: {exc.reason}"}, status_code=403
            )
        except httpx.TransportError as exc:
            log.warning("engine unreachable for %s %s: %s", method, path, exc)
            return JSONResponse({"message": f"the Docker engine is unreachable: {exc}"}, 502)

    async def _owner_check(self, call: Call) -> Response | None:
        """None when the container is kiisrv's; the engine's answer when it has none."""
        r = await self.engine.get(f"/containers/{call.container}/json")
        if r.status_code != 200:
            return Response(r.content, r.status_code, media_type="application/json")
        owned((r.json().get("Config") or {}).get("Labels"), self.policy)
        return None

    async def _list(self, call: Call, query: Sequence[tuple[str, str]]) -> Response:
        r = await self.engine.get(call.path, params=list(query))
        if r.status_code != 200:
            return Response(r.content, r.status_code, media_type="application/json")
        return JSONResponse(visible(r.json(), self.policy))

    async def _volumes(self, call: Call, query: Sequence[tuple[str, str]]) -> Response:
        r = await self.engine.get(call.path, params=list(query))
        if r.status_code != 200:
            return Response(r.content, r.status_code, media_type="application/json")
        return JSONResponse(visible_volumes(r.json(), self.policy))

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


async def _bounded(request: Request, limit: int, what: str) -> bytes:
    """A request body, read up to a bound."""
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise Refused(f"{what} body too large")
    return bytes(data)


async def _json(request: Request) -> Any:
    """The create body, read up to a bound: a build's is a few KB."""
    data = await _bounded(request, MAX_CREATE_BODY, "create")
    try:
        return json.loads(data)
    except ValueError:
        raise Refused("create body is not JSON") from None


def run(settings: Settings, host: str, port: int, keep_alive: int) -> None:
    """Serve until stopped (``kiisrv socket-proxy``)."""
    import uvicorn

    rule = policy(settings)
    log.info(
        "socket proxy on %s:%d for instances %s (no bind mounts)",
        host,
        port,
        ", ".join(sorted(rule.instances)),
    )
    uvicorn.run(
        SocketProxy(rule, engine_socket(settings)),
        host=host,
        port=port,
        log_level="info",
        timeout_keep_alive=keep_alive,
    )

"""What every request passes through before a route: the body's size limit and the
count of requests for ``/metrics`` (httpguard.py guards the connection below both)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiisrv.errors import PayloadTooLarge
from kiisrv.web import metrics
from kiisrv.web.errors import error_response

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

"""What ``kiisrv serve`` holds against slow and greedy clients, below the app.

uvicorn times out only idle keep-alive connections: a client that sends nothing, a
header line every ten seconds or a body one byte at a time keeps its connection (and
what it sent so far) for as long as it likes, and one client may open as many as the
file-descriptor limit allows. A front proxy may add limits of its own, but this is
what a local run and every API server of a cluster expose, so the server holds by
itself (``GuardedProtocol``, uvicorn's h11 protocol with these rules):

- **connections**: at most ``KIISRV_MAX_CONNECTIONS`` in all and
  ``KIISRV_MAX_CLIENT_CONNECTIONS`` per client (its address, an IPv6 /64 as one; a
  trusted proxy is exempt, it speaks for many). One over is answered 503 or 429 and
  closed at once.
- **headers**: a request's headers must arrive whole within ``KIISRV_HEADER_TIMEOUT``
  seconds of its first byte (or of the connection, for a client that sends nothing);
  then 408 and closed.
- **body**: a client that sends no body byte for ``KIISRV_BODY_TIMEOUT`` seconds, or
  that averages less than ``KIISRV_BODY_MIN_RATE`` bytes a second once that long has
  passed, is answered 408 and closed. (The app spools bodies past a small size to
  disk, so what a stalled client sent is not held in memory; app.py.)
- **malformed HTTP** is answered with JSON, like every other error of the API.

The rules are decided in ``BodyClock`` and ``ConnectionCount``, pure and tested on
their own; the protocol class only feeds them events and acts on their answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import anyio.to_thread
import h11
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from kiisrv.clients import Network, is_trusted, limit_key

log = logging.getLogger("kiisrv.http")

# How often a body in progress is looked at.
TICK = 1.0


@dataclass(frozen=True)
class Limits:
    header_timeout: float
    body_timeout: float
    body_min_rate: float
    max_connections: int
    max_client_connections: int
    trusted: Sequence[Network] = ()
    ipv6_prefix: int = 64


class ConnectionCount:
    """Open connections per client key and in all; decides who may open one more."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.total = 0
        self.per_client: Counter[str] = Counter()

    def key(self, peer: str) -> str | None:
        """The client a connection counts against; None for a trusted proxy."""
        if not peer or is_trusted(peer, self.limits.trusted):
            return None
        return limit_key(peer, self.limits.ipv6_prefix)

    def admit(self, key: str | None) -> int | None:
        """None when one more connection is allowed (and counted), else the status to
        refuse it with: 503 when the server is full, 429 when this client is."""
        if self.total >= self.limits.max_connections:
            return 503
        if key is not None and self.per_client[key] >= self.limits.max_client_connections:
            return 429
        self.total += 1
        if key is not None:
            self.per_client[key] += 1
        return None

    def release(self, key: str | None) -> None:
        self.total -= 1
        if key is not None:
            self.per_client[key] -= 1
            if self.per_client[key] <= 0:
                del self.per_client[key]


class BodyClock:
    """Whether a request body in progress is arriving fast enough.

    ``stalled`` is asked every ``TICK``: no byte for ``body_timeout`` seconds, or once
    that long has passed, an average below ``body_min_rate``. Time the server itself
    did not read (flow control paused reading while the app was busy) is not the
    client's: it is left out.
    """

    def __init__(self, limits: Limits, now: float) -> None:
        self.limits = limits
        self.started = self.last = now
        self.received = 0
        self.excused = 0.0  # seconds the server was not reading

    def data(self, size: int, now: float) -> None:
        self.received += size
        self.last = now

    def excuse(self, seconds: float, now: float) -> None:
        self.excused += seconds
        self.last = now

    def stalled(self, now: float) -> str | None:
        """Why the body is too slow, or None."""
        if now - self.last > self.limits.body_timeout:
            return f"no body byte for {self.limits.body_timeout:g} s"
        elapsed = now - self.started - self.excused
        if elapsed > self.limits.body_timeout and self.received / elapsed < (
            self.limits.body_min_rate
        ):
            return f"the body came slower than {self.limits.body_min_rate:g} bytes/s"
        return None


def raw_response(status: int, message: str, extra: dict[str, str] | None = None) -> bytes:
    """A whole JSON error response, closing the connection: for the moments the app
    never sees (no request yet, or a client cut off)."""
    reason = {400: "Bad Request", 408: "Request Timeout", 429: "Too Many Requests"}.get(
        status, "Service Unavailable"
    )
    body = json.dumps({"error": message}).encode()
    headers = {
        "content-type": "application/json",
        "content-length": str(len(body)),
        "connection": "close",
        **(extra or {}),
    }
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"HTTP/1.1 {status} {reason}\r\n{head}\r\n".encode() + body


def guarded_protocol(limits: Limits) -> type[H11Protocol]:
    """uvicorn's h11 protocol with ``limits`` (a class per server: the count is shared
    by its connections)."""
    count = ConnectionCount(limits)

    class GuardedProtocol(H11Protocol):
        _key: str | None = None
        _counted = False
        _header_timer: asyncio.TimerHandle | None = None
        _body_timer: asyncio.TimerHandle | None = None
        _body: BodyClock | None = None
        _paused_at: float | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._key = count.key(self.client[0] if self.client else "")
            refused = count.admit(self._key)
            if refused is not None:
                why = (
                    "too many connections from your address"
                    if refused == 429
                    else "the server has too many connections; try again shortly"
                )
                self._close_with(refused, why, {"retry-after": "10"})
                return
            self._counted = True
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._counted:
                count.release(self._key)
                self._counted = False
            self._cancel_timers()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE:
                self._arm_header_timer()  # the first byte of a request: its headers' clock
            elif self._body is not None:
                self._body.data(len(data), self.loop.time())
            before = self.conn.their_state
            super().data_received(data)
            if before is h11.IDLE and self.conn.their_state is not h11.IDLE:
                self._headers_done()

        def send_400_response(self, msg: str) -> None:
            self._close_with(400, f"malformed HTTP request: {msg}")

        # -- the rules' clocks --------------------------------------------------------

        def _arm_header_timer(self) -> None:
            if self._header_timer is None and not self.transport.is_closing():
                self._header_timer = self.loop.call_later(
                    limits.header_timeout, self._header_timeout
                )

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self._close_with(
                    408, f"the request headers did not arrive in {limits.header_timeout:g} s"
                )

        def _headers_done(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            if self.conn.their_state is h11.SEND_BODY:
                self._body = BodyClock(limits, self.loop.time())
                self._body_timer = self.loop.call_later(TICK, self._check_body)

        def _check_body(self) -> None:
            self._body_timer = None
            body = self._body
            if body is None or self.transport.is_closing():
                return
            if self.conn.their_state is not h11.SEND_BODY:
                self._body = None  # the whole body came
                return
            now = self.loop.time()
            if self.flow.read_paused:  # the app has not taken what came: not the client's
                if self._paused_at is not None:
                    body.excuse(now - self._paused_at, now)
                self._paused_at = now
            else:
                self._paused_at = None
            why = body.stalled(now)
            if why is not None:
                log.info("a client was cut off during its request body: %s", why)
                self._close_with(408, f"request body too slow: {why}")
                return
            self._body_timer = self.loop.call_later(TICK, self._check_body)

        def _cancel_timers(self) -> None:
            for timer in (self._header_timer, self._body_timer):
                if timer is not None:
                    timer.cancel()
            self._header_timer = self._body_timer = None
            self._body = None

        def _close_with(
            self, status: int, message: str, extra: dict[str, str] | None = None
        ) -> None:
            """Answers (when no response has started) and closes: the app, if it waits
            for the body, sees the client gone."""
            self._cancel_timers()
            cycle: Any = self.cycle
            if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE) and not (
                cycle is not None and cycle.response_started
            ):
                self.transport.write(raw_response(status, message, extra))
            self.transport.close()

    return GuardedProtocol


# -- in the app ------------------------------------------------------------------------


class HttpRules:
    """ASGI middleware for what the protocol lets through but the API refuses or adds:

    - ``Content-Length`` together with ``Transfer-Encoding``: 400 and the connection
      closed (two lengths are how requests are smuggled past a proxy that reads the
      other one);
    - ``HEAD`` wherever ``GET`` works: the GET's status and headers, no body.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        names = {name for name, _ in scope.get("headers", [])}
        if b"content-length" in names and b"transfer-encoding" in names:
            response = JSONResponse(
                {"error": "a request may not have both Content-Length and Transfer-Encoding"},
                status_code=400,
                headers={"connection": "close"},
            )
            await response(scope, receive, send)
            return
        if scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if not message.get("more_body", False):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


# Bodies up to this size stay in memory; a larger one goes to a file as it arrives, so
# a client that sends most of a large body and stalls pins no memory (real layouts are
# at most ~150 KB).
SPOOL_BYTES = 256 * 1024


async def read_body(request: Request, folder: Path) -> bytes:
    """The request body, kept in memory up to ``SPOOL_BYTES`` and past that in a file
    of ``folder`` (written off the event loop), removed once read. Raises what the
    stream raises (ClientDisconnect, the body limit's PayloadTooLarge)."""
    held = bytearray()
    spool: BinaryIO | None = None
    try:
        async for chunk in request.stream():
            if spool is None and len(held) + len(chunk) <= SPOOL_BYTES:
                held += chunk
                continue
            if spool is None:
                spool = await anyio.to_thread.run_sync(_spool_file, folder)
                chunk, held = bytes(held) + chunk, bytearray()
            await anyio.to_thread.run_sync(spool.write, chunk)
        if spool is None:
            return bytes(held)
        return await anyio.to_thread.run_sync(_read_back, spool)
    finally:
        if spool is not None:
            await anyio.to_thread.run_sync(spool.close)


def _spool_file(folder: Path) -> BinaryIO:
    folder.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryFile(dir=folder)  # no name: gone with its last descriptor


def _read_back(spool: BinaryIO) -> bytes:
    spool.seek(0)
    return spool.read()

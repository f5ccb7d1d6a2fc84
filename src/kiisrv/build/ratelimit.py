"""At most N new builds per client per minute.

A build costs seconds of CPU, a cache hit almost nothing: only requests that would
start a build count (not cache hits, not joining a build in flight). Who the client
is, behind a proxy, is clients.py's.

Where the window lives: in this process (``RateLimiter``), or, with
``KIISRV_QUEUE_URL``, in that Redis (``cluster.ratelimit.RedisRateLimiter``), where every API server
counts against the same window: with a window per server, N servers behind a load
balancer allowed N x the limit.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from kiisrv.clients import limit_key
from kiisrv.errors import RateLimited

WINDOW = 60.0
_MAX_CLIENTS = 100_000  # memory bound: the oldest windows are dropped past it


class Limiter(Protocol):
    """What ``Kiisrv.build`` counts a new build against."""

    async def take(self, client: str) -> None:
        """Counts one new build of ``client`` (an address), or raises RateLimited (429)."""


def refusal(per_minute: int, retry: int) -> RateLimited:
    return RateLimited(
        f"too many new builds: at most {per_minute} a minute from one client; "
        f"try again in {retry} s",
        retry_after=retry,
    )


class RateLimiter:
    """The window of one API server, in its memory."""

    def __init__(
        self,
        per_minute: int,
        clock: Callable[[], float] = time.monotonic,
        ipv6_prefix: int = 64,
    ) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self.ipv6_prefix = ipv6_prefix
        self._starts: dict[str, deque[float]] = {}

    async def take(self, client: str) -> None:
        if self.per_minute <= 0:
            return
        client = limit_key(client, self.ipv6_prefix)
        now = self.clock()
        starts = self._starts.pop(client, None) or deque()
        while starts and starts[0] <= now - WINDOW:
            starts.popleft()
        self._starts[client] = starts  # most recent last: the oldest are dropped first
        if len(starts) >= self.per_minute:
            raise refusal(self.per_minute, max(1, math.ceil(starts[0] + WINDOW - now)))
        starts.append(now)
        while len(self._starts) > _MAX_CLIENTS:
            self._starts.pop(next(iter(self._starts)))

"""At most N new builds per client per minute, and who the client is behind a proxy.

A build costs seconds of CPU, a cache hit almost nothing: only requests that would
start a build count (not cache hits, not joining a build in flight). Behind nginx or
Caddy every request comes from the proxy; its ``X-Forwarded-For`` names the client,
but only a proxy listed in ``KIISRV_TRUSTED_PROXIES`` is believed, or anyone could
pick their own address per request.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import deque
from collections.abc import Callable, Sequence

from kiisrv.errors import RateLimited

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
WINDOW = 60.0
_MAX_CLIENTS = 100_000  # memory bound: the oldest windows are dropped past it


def parse_networks(text: str) -> list[Network]:
    """``10.0.0.1, 172.16.0.0/12, ::1`` -> networks; ValueError names a bad entry."""
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"not an address or network: {item!r}") from None
    return networks


def _trusted(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in n for n in networks)


def client_address(peer: str, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    """The client: the peer, or behind trusted proxies the last address they did not add."""
    if not forwarded_for or not _trusted(peer, trusted):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


class RateLimiter:
    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._starts: dict[str, deque[float]] = {}

    def take(self, client: str) -> None:
        """Counts one new build of ``client``, or raises RateLimited (429)."""
        if self.per_minute <= 0:
            return
        now = self.clock()
        starts = self._starts.pop(client, None) or deque()
        while starts and starts[0] <= now - WINDOW:
            starts.popleft()
        self._starts[client] = starts  # most recent last: the oldest are dropped first
        if len(starts) >= self.per_minute:
            retry = max(1, math.ceil(starts[0] + WINDOW - now))
            raise RateLimited(
                f"too many new builds: at most {self.per_minute} a minute from one client; "
                f"try again in {retry} s",
                retry_after=retry,
            )
        starts.append(now)
        while len(self._starts) > _MAX_CLIENTS:
            self._starts.pop(next(iter(self._starts)))

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


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address, IPv4-mapped IPv6 (``::ffff:192.0.2.1``) as the IPv4 it is."""
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _trusted(address: str, networks: Sequence[Network]) -> bool:
    ip = _address(address)
    return ip is not None and any(ip in n for n in networks)


def client_address(
    peer: str, forwarded_for: str | Sequence[str] | None, trusted: Sequence[Network]
) -> str:
    """The client: the peer, or behind trusted proxies the right-most hop they did not add.

    Every ``X-Forwarded-For`` header counts, in order (a client's own header comes
    first and a proxy's ``option forwardfor`` adds another: reading only the first let
    the client choose its key). Walking from the right, each trusted proxy vouches for
    the hop to its left; the first hop that is not a trusted proxy is the client. A
    hop that is no address (``unknown``, junk) cannot be a key a client picks at will:
    the proxy that passed it on stands for it.
    """
    ip = _address(peer)
    peer = str(ip) if ip is not None else peer
    if not forwarded_for or not _trusted(peer, trusted):
        return peer
    values = [forwarded_for] if isinstance(forwarded_for, str) else list(forwarded_for)
    hops = [h.strip() for value in values for h in value.split(",") if h.strip()]
    last = peer
    for hop in reversed(hops):
        ip = _address(hop)
        if ip is None:
            return last
        if not _trusted(hop, trusted):
            return str(ip)
        last = str(ip)
    return last


def limit_key(address: str, ipv6_prefix: int = 64) -> str:
    """What one budget belongs to: an IPv4 address, or the IPv6 network around one.

    An IPv6 customer holds at least a /64: per /128, one user had 2^64 budgets.
    """
    ip = _address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{ip}/{ipv6_prefix}", strict=False))
    return str(ip) if ip is not None else address


class RateLimiter:
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

    def take(self, client: str) -> None:
        """Counts one new build of ``client``, or raises RateLimited (429)."""
        if self.per_minute <= 0:
            return
        client = limit_key(client, self.ipv6_prefix)
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

"""At most N new builds per client per minute, and who the client is behind a proxy.

A build costs seconds of CPU, a cache hit almost nothing: only requests that would
start a build count (not cache hits, not joining a build in flight). Behind nginx or
Caddy every request comes from the proxy; its ``X-Forwarded-For`` names the client,
but only a proxy listed in ``KIISRV_TRUSTED_PROXIES`` is believed, or anyone could
pick their own address per request.

Where the window lives: in this process (``RateLimiter``), or, with
``KIISRV_QUEUE_URL``, in that Redis (``RedisRateLimiter``), where every API server
counts against the same window: with a window per server, N servers behind a load
balancer allowed N x the limit.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from redis.exceptions import RedisError

from kiisrv import privacy
from kiisrv.errors import RateLimited

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from kiisrv.settings import Settings

log = logging.getLogger("kiisrv")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
WINDOW = 60.0
_MAX_CLIENTS = 100_000  # memory bound: the oldest windows are dropped past it
KEY_PREFIX = "kiisrv:ratelimit:"


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


def is_trusted(address: str, networks: Sequence[Network]) -> bool:
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
    if not forwarded_for or not is_trusted(peer, trusted):
        return peer
    values = [forwarded_for] if isinstance(forwarded_for, str) else list(forwarded_for)
    hops = [h.strip() for value in values for h in value.split(",") if h.strip()]
    last = peer
    for hop in reversed(hops):
        ip = _address(hop)
        if ip is None:
            return last
        if not is_trusted(hop, trusted):
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


class Limiter(Protocol):
    """What ``Kiisrv.build`` counts a new build against."""

    async def take(self, client: str) -> None:
        """Counts one new build of ``client`` (an address), or raises RateLimited (429)."""


def make_limiter(settings: Settings, client_key: bytes, redis: Redis | None) -> Limiter:
    """The window shared through ``redis`` (the queue's, when there is one), else one here."""
    if redis is not None:
        return RedisRateLimiter(
            redis, settings.rate_limit, client_key, ipv6_prefix=settings.rate_limit_ipv6_prefix
        )
    return RateLimiter(settings.rate_limit, ipv6_prefix=settings.rate_limit_ipv6_prefix)


def _refusal(per_minute: int, retry: int) -> RateLimited:
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
            raise _refusal(self.per_minute, max(1, math.ceil(starts[0] + WINDOW - now)))
        starts.append(now)
        while len(self._starts) > _MAX_CLIENTS:
            self._starts.pop(next(iter(self._starts)))


# The same sliding window as RateLimiter, as a sorted set of start times per client,
# run atomically in Redis: no two servers can both take the last place. Redis's own
# clock (TIME) times every server's starts, so clock skew between them does not matter.
# The key expires one window after the last start: an idle client costs nothing.
# Also returns whether the client key of the caller is the one the other servers use
# (by its fingerprint, kept a day): with different keys one client is several budgets.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
redis.call('SET', KEYS[2], ARGV[4], 'NX', 'EX', 86400)
local same = redis.call('GET', KEYS[2]) == ARGV[4] and 1 or 0
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {tonumber(oldest[2]) + window - now, same}
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
return {0, same}
"""


class RedisRateLimiter:
    """The window every API server on one Redis shares.

    Redis sees a client only as a keyed hash (privacy.py) of its ``limit_key``, under
    the client key the API servers share (``<data>/client-key``): whoever reads Redis
    cannot tell who built what. A Redis that does not answer lets the build through
    with a log line: the build itself needs that Redis to be queued, so it gets the
    queue's 503, and a flapping Redis costs at most a few builds over the limit.
    """

    def __init__(
        self,
        redis: Redis,
        per_minute: int,
        client_key: bytes,
        ipv6_prefix: int = 64,
        window: float = WINDOW,
    ) -> None:
        self.per_minute = per_minute
        self.ipv6_prefix = ipv6_prefix
        self.window_ms = int(window * 1000)
        self._key = client_key
        self._fingerprint = hmac.new(client_key, b"kiisrv rate limit", hashlib.sha256).hexdigest()
        self._script = redis.register_script(_TAKE)
        self._told = False

    def redis_key(self, client: str) -> str:
        """The Redis key of a client's window: a pseudonym, never the address."""
        limited = limit_key(client, self.ipv6_prefix)
        return KEY_PREFIX + privacy.pseudonym(self._key, f"ratelimit {limited}")

    async def take(self, client: str) -> None:
        if self.per_minute <= 0:
            return
        keys = [self.redis_key(client), KEY_PREFIX + "key-id"]
        member = secrets.token_hex(8)  # one start; two in the same millisecond are two
        args: list[str | int] = [self.window_ms, self.per_minute, member, self._fingerprint]
        try:
            wait_ms, same = await self._script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            log.warning("rate limit not checked: Redis does not answer (%s)", exc)
            return
        if not same and not self._told:
            self._told = True
            log.error(
                "another API server on this Redis has another <data>/client-key: each "
                "counts the rate limit of a client apart; copy one client-key to all"
            )
        if wait_ms > 0:
            raise _refusal(self.per_minute, max(1, math.ceil(wait_ms / 1000)))

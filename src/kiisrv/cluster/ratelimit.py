"""The rate limit's window in the Redis every API server shares (build/ratelimit.py):
with a window per server, N servers behind a load balancer allowed N x the limit."""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets

from redis.asyncio import Redis
from redis.exceptions import RedisError

from kiisrv import privacy
from kiisrv.build.ratelimit import WINDOW, refusal
from kiisrv.clients import limit_key

log = logging.getLogger("kiisrv")

KEY_PREFIX = "kiisrv:ratelimit:"

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
            raise refusal(self.per_minute, max(1, math.ceil(wait_ms / 1000)))

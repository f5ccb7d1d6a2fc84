"""A client's turns in the cluster (build/fairness.py): every API server admits a
client's builds through one Redis sorted set per client, at most its share at once,
as leases renewed while admitted, so a killed API server's turns end on their own."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from redis.exceptions import RedisError

from kiisrv.errors import Unavailable

# Atomically: forget expired turns, then take one if fewer than ARGV[3] are held.
_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[4]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
  return 1
end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
  redis.call('PEXPIREAT', KEYS[1], math.floor(tonumber(ARGV[2]) * 1000))
  return 1
end
return 0
"""
KEY_PREFIX = "kiisrv:turns:"


class RedisTurns:
    """Every API server's lines in one Redis: a sorted set per client of the builds
    admitted, each scored by when its lease ends (renewed while admitted)."""

    def __init__(self, redis: Redis, per_client: int, lease: float, poll: float = 0.25) -> None:
        self.redis = redis
        self.per_client = max(1, per_client)
        self.lease = lease
        self.poll = poll
        self._take = redis.register_script(_TAKE)

    async def _try(self, key: str, build: str) -> bool:
        now = time.time()
        try:
            taken = await self._take(
                keys=[key], args=[now, now + self.lease, self.per_client, build]
            )
        except RedisError:
            raise Unavailable(
                "the build queue (Redis) cannot be reached; try again shortly", retry_after=30
            ) from None
        return bool(taken)

    @asynccontextmanager
    async def turn(self, client: str | None, build: str) -> AsyncIterator[None]:
        if client is None:
            yield
            return
        key = KEY_PREFIX + client
        while not await self._try(key, build):
            await asyncio.sleep(self.poll)
        keeper = asyncio.create_task(self._keep(key, build))
        try:
            yield
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            with contextlib.suppress(Exception):  # the lease ends on its own
                await self.redis.zrem(key, build)

    async def _keep(self, key: str, build: str) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            with contextlib.suppress(Exception):  # an outage: the lease may end meanwhile
                await self._try(key, build)

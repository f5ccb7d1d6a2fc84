"""The parts of a deployment, made from Settings in one place.

``kiisrv serve`` (core.Kiisrv), ``kiisrv worker`` (cluster.worker.BuildWorker) and the
CLI's one-shot commands all take their parts from here, so that what a setting means
(a queue URL: builds go through Redis; a store URL: results in PostgreSQL) is decided
once. Nothing is created at import time, and the cluster's modules (Redis, arq,
PostgreSQL) are imported only by a deployment that has a cluster.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kiisrv.build.ratelimit import Limiter, RateLimiter
from kiisrv.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis


def limiter(settings: Settings, client_key: bytes, redis: Redis | None) -> Limiter:
    """The window shared through ``redis`` (the queue's, when there is one), else one here."""
    if redis is not None:
        from kiisrv.cluster.ratelimit import RedisRateLimiter

        return RedisRateLimiter(
            redis, settings.rate_limit, client_key, ipv6_prefix=settings.rate_limit_ipv6_prefix
        )
    return RateLimiter(settings.rate_limit, ipv6_prefix=settings.rate_limit_ipv6_prefix)

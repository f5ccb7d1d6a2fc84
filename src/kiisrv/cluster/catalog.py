"""The versions a cluster can build: those at least one live worker has the image of.

Each worker advertises its images and versions in Redis (``kiisrv:worker:<instance>``,
signed, expiring after ``KIISRV_WORKER_LEASE`` unless renewed); ``/versions`` is
their union, and a build goes to the image id most live workers have.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from arq.connections import ArqRedis
from redis.exceptions import RedisError

from kiisrv.build.catalog import Catalog
from kiisrv.build.engine import Engine
from kiisrv.cluster.keys import WORKER_PREFIX, unreachable, wire
from kiisrv.cluster.wire import Advert, Forged, Wire, release_of
from kiisrv.errors import Unavailable
from kiisrv.recipe.versions import Available, ReleaseInfo, Version
from kiisrv.settings import Settings
from kiisrv.store.storage import Storage

log = logging.getLogger("kiisrv.distributed")


class WorkerCatalog(Catalog):
    """Versions that at least one live worker can build: the union of their adverts."""

    def __init__(self, settings: Settings, storage: Storage, engine: Engine, redis: ArqRedis):
        super().__init__(settings, storage, engine, ttl=1.0)
        self.redis = redis
        self.wire = wire(settings)
        self._fetched = False

    async def available(self) -> dict[str, Available]:
        if time.monotonic() - self._at <= self.ttl:
            return self._available
        try:
            adverts = await live_workers(self.redis, self.wire)
        except RedisError:
            if self._fetched:  # a request then learns of the outage from the queue (503)
                return self._available
            raise unreachable() from None
        if not adverts:
            # A rolling restart or a Redis blip lapses every lease at once: the versions
            # still exist, no one builds them right now. Was 400 UnknownVersion.
            raise Unavailable(
                "no build worker is running; try again in a moment",
                retry_after=max(1, round(self.settings.worker_lease)),
            )
        versions = await self.storage.run(self.storage.versions)
        self._available = join_adverts(versions, adverts, self.image_name)
        self._at = time.monotonic()
        self._fetched = True
        return self._available


async def live_workers(redis: ArqRedis, wire: Wire) -> list[Advert]:
    """The adverts of live workers; one that is not signed with the cluster's key is
    skipped (and logged): a planted advert could send builds to a queue no one serves."""
    keys = [k async for k in redis.scan_iter(match=f"{WORKER_PREFIX}*", count=200)]
    if not keys:
        return []
    found = []
    for key, value in zip(keys, await redis.mget(keys), strict=True):
        if value:
            try:
                found.append(wire.open_advert(value))
            except Forged as exc:
                log.warning("ignoring worker advert %r: %s", key, exc)
    return found


def join_adverts(
    versions: list[Version], adverts: list[Advert], image_name: Any
) -> dict[str, Available]:
    """Each version's image: the id most live workers have (a tie: the smallest id)."""
    found: dict[str, Available] = {}
    for version in versions:
        ids: Counter[str] = Counter()
        infos: dict[str, ReleaseInfo | None] = {}
        for ad in adverts:
            for image_id, containers in ad.images.items():
                if version.container in containers:
                    ids[image_id] += 1
                    infos[image_id] = release_of(containers[version.container])
        if ids:
            best = sorted(ids.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
            found[version.name] = Available(version, image_name(version), best, infos[best])
    return found

"""The parts of a deployment, made from Settings in one place.

``kiisrv serve`` (core.Kiisrv), ``kiisrv worker`` (cluster/worker.py) and the CLI's
one-shot commands take their parts from here, so what a setting means is decided once:
``KIISRV_QUEUE_URL`` set, builds go through Redis to workers and results through the
cluster's store (``KIISRV_STORE_URL``); unset, they run here and stay in the builds
folder. Nothing is made at import time, and the cluster's modules (Redis, arq,
PostgreSQL) are imported only by a deployment that has a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kiisrv.build.catalog import Catalog
from kiisrv.build.engine import Engine
from kiisrv.build.queue import BuildQueue, LocalQueue
from kiisrv.build.ratelimit import Limiter, RateLimiter
from kiisrv.build.runner import Runner
from kiisrv.settings import Settings
from kiisrv.signing import Signer
from kiisrv.store.results import FolderResults, Results
from kiisrv.store.storage import Storage

if TYPE_CHECKING:
    from arq.connections import ArqRedis
    from redis.asyncio import Redis

    from kiisrv.cluster.worker import WorkerParts


@dataclass
class Server:
    """What an API server runs on: where builds run and where their results are."""

    storage: Storage
    engine: Engine
    catalog: Catalog
    runner: Runner
    results: Results
    queue: BuildQueue
    redis: ArqRedis | None  # the cluster's, which the rate limit shares


# A worker's leftover folders (a kill, a crash) older than this are removed.
WORKER_FOLDER_AGE = 600.0


def engine(settings: Settings) -> Engine:
    return Engine(settings.docker_url, settings.engine_timeout, settings.max_builds)


def server(settings: Settings) -> Server:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    storage = Storage(
        settings.stats_db, settings.config_db, settings.stats_url, settings.stats_timeout
    )
    docker = engine(settings)
    signer = Signer.from_file(settings.signing_key_path)
    runner = Runner(settings, storage, docker, signer)
    if settings.queue_url:  # builds run on `kiisrv worker`s: docs/distributed.md
        from kiisrv.cluster.catalog import WorkerCatalog
        from kiisrv.cluster.keys import connect
        from kiisrv.cluster.queue import RedisQueue
        from kiisrv.cluster.results import ClusterResults, result_store

        redis = connect(settings.queue_url)
        results = ClusterResults(settings, storage, result_store(settings))
        return Server(
            storage,
            docker,
            WorkerCatalog(settings, storage, docker, redis),
            runner,
            results,
            RedisQueue(settings, runner, storage, redis, results),
            redis,
        )
    queue = LocalQueue(
        runner, storage, settings.max_builds, settings.max_queue, settings.max_client_builds
    )
    return Server(
        storage,
        docker,
        Catalog(settings, storage, docker),
        runner,
        FolderResults(settings, storage),
        queue,
        None,
    )


def worker(settings: Settings) -> WorkerParts:
    if not settings.queue_url:
        raise ValueError("kiisrv worker needs KIISRV_QUEUE_URL (e.g. redis://host:6379/0)")
    from kiisrv.cluster.keys import connect
    from kiisrv.cluster.results import result_store
    from kiisrv.cluster.worker import WorkerParts

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    storage = Storage(settings.stats_db, settings.config_db)
    docker = engine(settings)
    return WorkerParts(
        storage,
        docker,
        Catalog(settings, storage, docker, ttl=0.0),
        Runner(settings, storage, docker, Signer.from_file(settings.signing_key_path)),
        FolderResults(settings, storage, max_age=WORKER_FOLDER_AGE),
        connect(settings.queue_url),
        result_store(settings),
    )


def limiter(settings: Settings, client_key: bytes, redis: Redis | None) -> Limiter:
    """The window shared through ``redis`` (the queue's, when there is one), else one here."""
    if redis is not None:
        from kiisrv.cluster.ratelimit import RedisRateLimiter

        return RedisRateLimiter(
            redis, settings.rate_limit, client_key, ipv6_prefix=settings.rate_limit_ipv6_prefix
        )
    return RateLimiter(settings.rate_limit, ipv6_prefix=settings.rate_limit_ipv6_prefix)

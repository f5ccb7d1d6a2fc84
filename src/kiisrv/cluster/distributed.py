"""Builds on many machines: an arq job queue on Redis behind the ``BuildQueue`` seam.

Why arq: it is asyncio-native like the server (no thread per waiting request), a job id
is unique while the job is queued or running (``_job_id`` = the build hash gives one
build per layout cluster-wide), and a job whose worker died is picked up again by
another worker, at most ``max_tries`` times. See docs/distributed.md.

Keys (all in the Redis of ``KIISRV_QUEUE_URL``):

- ``kiisrv:queue:<image id>``: arq's queue of the builds of one controller image; a
  worker listens only on the queues of the images it has, so a build goes only to a
  worker that can run it.
- ``kiisrv:worker:<instance>``: a worker's advertisement (its images and versions),
  expiring after ``KIISRV_WORKER_LEASE`` unless renewed. ``/versions`` is their union.
- ``kiisrv:result:<hash>``: the notice of a finished build (its signature), kept
  ``KIISRV_RESULT_TTL`` seconds (a failure: ``KIISRV_FAILED_RESULT_TTL``);
  ``kiisrv:done:<hash>`` announces it (pub/sub). The zip itself is in the result store
  (results.py), where every API server finds it, not in Redis.
- ``kiisrv:log:<hash>``: a running build's output so far, refreshed by its worker every
  second while it runs (``/builds/<hash>/log`` on any API server).
- arq's own ``arq:in-progress:<hash>`` is renewed by the worker every third of the lease
  and so expires soon after a worker is killed: another worker then takes the build.

Nothing read from Redis is trusted as it is (wire.py): jobs, results and adverts carry
an HMAC with ``KIISRV_QUEUE_KEY``, which Redis never sees, and are validated field by
field; arq's own records are JSON, never pickle. What fails is refused (a job),
deleted (a result) or ignored (an advert), and logged.

An API server keeps a copy of each zip it answered in its own builds folder, with its
job row, so that a cache hit stays a file; what it has not got (a download the load
balancer sent it, the state of a build another server queued) it reads from the store
and Redis. Its Requests rows go to the PostgreSQL all API servers share when
``KIISRV_STATS_URL`` is set (requests_store.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import shutil
import signal
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import anyio.to_thread
from arq import Retry
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.jobs import Job as ArqJob
from arq.jobs import SerializationError
from arq.worker import Worker, func
from redis.exceptions import RedisError, ResponseError

from kiisrv.build.catalog import Catalog
from kiisrv.build.engine import Engine
from kiisrv.build.queue import InFlight, InFlightQueue
from kiisrv.build.runner import Runner
from kiisrv.cluster.turns import RedisTurns
from kiisrv.cluster.wire import Advert, Forged, PlanRecord, Wire, plan_from_record, release_of
from kiisrv.errors import EngineError, KiisrvError, StorageError, Unavailable
from kiisrv.jobs import Job, JobState
from kiisrv.recipe.planner import Plan
from kiisrv.recipe.versions import DEFAULT_VERSIONS, Available, ReleaseInfo, Version
from kiisrv.settings import Settings
from kiisrv.store.artifacts import write_bytes
from kiisrv.store.results import ResultStore, Stored, fresh
from kiisrv.store.retention import prune
from kiisrv.store.storage import Storage, now

log = logging.getLogger("kiisrv.distributed")

BUILD_FUNCTION = "build"
# A worker's leftover folders (a kill, a crash) older than this are removed.
_WORKER_FOLDER_AGE = 600.0
WORKER_PREFIX = "kiisrv:worker:"


def queue_name(image_id: str) -> str:
    return f"kiisrv:queue:{image_id}"


_QUEUE_RE = re.compile(rb"kiisrv:queue:sha256:[0-9a-f]{64}")


def result_key(hash_: str) -> str:
    return f"kiisrv:result:{hash_}"


def done_channel(hash_: str) -> str:
    return f"kiisrv:done:{hash_}"


def log_key(hash_: str) -> str:
    return f"kiisrv:log:{hash_}"


# What of a running build's output goes to Redis each second: its end (the cap of a
# build log is larger, and the whole log comes with the zip).
LIVE_LOG_BYTES = 256 * 1024


def job_serializer(data: dict[str, Any]) -> bytes:
    """arq's job and result records as JSON, never pickle (#14.1).

    arq pickles by default, and unpickling runs code: whoever could write one key in
    Redis ran a command in every worker, which holds the Docker socket. JSON is data
    only; what is not JSON (an exception as a failed result) is stored as its repr.
    """
    return json.dumps(data, separators=(",", ":"), default=repr).encode()


def job_deserializer(raw: bytes) -> dict[str, Any]:
    """A job record, only as JSON: a planted pickle is a record that fails to parse."""
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("not a job record")
    return data


def connect(url: str) -> ArqRedis:
    """A lazy client: nothing is sent before the first command (Redis may be down)."""
    redis: ArqRedis = ArqRedis.from_url(url, socket_connect_timeout=3, socket_timeout=15)
    redis.job_serializer = job_serializer
    redis.job_deserializer = job_deserializer
    return redis


def wire(settings: Settings) -> Wire:
    """The cluster's signatures (wire.py); settings.py makes sure the key is there."""
    if settings.queue_key is None:
        raise ValueError("KIISRV_QUEUE_KEY is needed with KIISRV_QUEUE_URL")
    return Wire(settings.queue_key.get_secret_value())


def result_store(settings: Settings) -> ResultStore:
    """The cluster's result store; settings.py makes sure it is named."""
    if settings.results_url is None:
        raise ValueError("KIISRV_STORE_URL is needed with KIISRV_QUEUE_URL")
    return ResultStore(settings.results_url, wire(settings), settings.stats_timeout)


def _unreachable(settings: Settings) -> Unavailable:
    return Unavailable(
        "the build queue (Redis) cannot be reached; try again in a moment", retry_after=10
    )


# -- the API server's side ---------------------------------------------------------------


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
            raise _unreachable(self.settings) from None
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


class RedisQueue(InFlightQueue):
    """Enqueues builds for ``kiisrv worker``s and waits for their results."""

    def __init__(
        self,
        settings: Settings,
        runner: Runner,
        storage: Storage,
        redis: ArqRedis,
        store: ResultStore,
    ):
        super().__init__(storage, settings.max_queue)
        self.settings = settings
        self.runner = runner
        self.redis = redis
        self.store = store
        self.wire = wire(settings)
        self._queues: dict[str, str] = {}  # hash -> the queue this server put it on
        # A client's builds reach the workers' queue at most its share at a time, for
        # the whole cluster (fairness.py): the workers take them in arrival order.
        self.turns = RedisTurns(
            redis, settings.max_client_builds, lease=max(30.0, 3 * settings.worker_lease)
        )

    async def _waiting(self) -> int:
        """Builds waiting in the whole cluster, not only this server's: KIISRV_MAX_QUEUE
        is the cluster's (N API servers let N x the queue in)."""
        try:
            queues = [
                q
                async for q in self.redis.scan_iter(match=queue_name("*"), count=1000)
                if _QUEUE_RE.fullmatch(q)  # not arq's `<queue>:health-check` strings
            ]
            ids: list[bytes] = []
            for q in queues:
                ids += await self.redis.zrange(q, 0, -1)
            return len(ids) - await self._running(ids)
        except RedisError:  # the build then reports the outage itself (a 503 with its row)
            return len(self._inflight)

    async def _running(self, ids: list[bytes]) -> int:
        """How many of these queued jobs a worker has taken (arq keeps them queued)."""
        if not ids:
            return 0
        return int(await self.redis.exists(*(in_progress_key_prefix + i.decode() for i in ids)))

    async def position(self, hash_: str) -> int | None:
        """Its rank in its image's queue, less the builds running from it."""
        queue = self._queues.get(hash_)
        if queue is None:  # queued by another API server?
            try:
                record = await self._queued_plan(hash_)
            except Unavailable:
                return None
            if record is None:
                return None
            queue = queue_name(record.image_id)
        try:
            ids = await self.redis.zrange(queue, 0, -1)
            if hash_.encode() not in ids or await self.redis.exists(in_progress_key_prefix + hash_):
                return None
            ahead = ids[: ids.index(hash_.encode())]
            return len(ahead) - await self._running(ahead)
        except RedisError:
            return None

    async def live_log(self, hash_: str) -> bytes | None:
        """What the worker running it last put in Redis (it runs on the worker's engine)."""
        try:
            raw = await self.redis.get(log_key(hash_))
        except RedisError:
            return None
        if raw is None:
            return None
        try:
            return self.wire.open_log(hash_, raw)
        except Forged as exc:
            log.warning("ignoring the live log stored for %s: %s", hash_, exc)
            return None

    async def stored(self, hash_: str) -> tuple[Job, bytes] | None:
        found = await self.store.get(hash_)
        return (found.job, found.data) if found else None

    async def _queued_plan(self, hash_: str) -> PlanRecord | None:
        """The signed plan of a build waiting or running in the queue, whoever queued it."""
        try:
            info = await ArqJob(hash_, self.redis, _deserializer=job_deserializer).info()
        except RedisError:
            raise _unreachable(self.settings) from None
        except SerializationError:  # not JSON: planted
            return None
        if info is None or len(info.args) != 2:
            return None
        try:
            return self.wire.open_plan(hash_, info.args[0], info.args[1])
        except Forged:
            return None

    async def elsewhere(self, hash_: str) -> Job | None:
        """A build this server has no row of: another API server queued it (it is
        waiting or running), or a worker finished it (it is in the store)."""
        job = await self.store.job(hash_)
        if job is not None:
            return job
        record = await self._queued_plan(hash_)
        if record is None:
            return None
        job = record.job.to_job()
        try:
            running = await self.redis.exists(in_progress_key_prefix + hash_)
        except RedisError:
            raise _unreachable(self.settings) from None
        job.state = JobState.RUNNING if running else JobState.QUEUED
        return job

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            with contextlib.suppress(RedisError):
                await self.redis.aclose(close_connection_pool=True)
            await self.store.close()

    async def _run(self, plan: Plan, record: InFlight) -> None:
        job = plan.job
        try:
            async with self.turns.turn(plan.client, job.hash):
                remote, data = await self._remote(plan)
            job.state, job.error = remote.state, remote.error
            job.started_at, job.finished_at = remote.started_at, remote.finished_at
            job.duration_ms, job.retry_later = remote.duration_ms, remote.retry_later
            await anyio.to_thread.run_sync(
                write_bytes, self.settings.builds_dir / job.zip_name, data
            )
            await self.storage.run(self.storage.save_job, job)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                job.error = "the server shut down before this build finished"
            elif isinstance(exc, Unavailable):
                job.error, job.retry_later = exc.message, True
            elif isinstance(exc, KiisrvError):
                job.error = exc.message
            else:
                log.exception("build %s crashed", job.hash)
                job.error = f"internal error: {exc}"
            try:
                await self.runner.finish(plan, b"")  # the error zip and the job row
            except Exception as exc2:
                log.exception("could not record build %s", job.hash)
                job.state, job.retry_later = JobState.FAILED, True
                job.error = job.error or f"could not record the build result: {exc2}"
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._inflight.pop(job.hash, None)
            self._queues.pop(job.hash, None)
            if not record.future.done():
                record.future.set_result(job)

    async def _result(self, hash_: str, *, any_firmware: bool) -> tuple[Job, bytes] | None:
        """The build's signed result; a forged one is deleted (and logged), never served."""
        found = await stored_result(self.redis, self.store, hash_, any_firmware=any_firmware)
        return (found.job, found.data) if found else None

    async def _remote(self, plan: Plan) -> tuple[Job, bytes]:
        """The build's result from whichever worker ran it (or runs it now)."""
        hash_ = plan.job.hash
        try:
            found = await self._result(hash_, any_firmware=True)
            if found and not found[0].retry_later:
                return found
            if found:  # a fault (a timeout) is no result: its notice must not end the wait
                await self.redis.delete(result_key(hash_))
            payload, signature = self.wire.seal_plan(plan)
            self._queues[hash_] = queue_name(plan.target.image_id)
            await self.redis.enqueue_job(
                BUILD_FUNCTION,
                payload,
                signature,
                _job_id=hash_,
                _queue_name=queue_name(plan.target.image_id),
            )
        except RedisError:
            raise _unreachable(self.settings) from None
        return await self._wait(hash_)

    async def _wait(self, hash_: str) -> tuple[Job, bytes]:
        s = self.settings
        deadline = time.monotonic() + s.build_timeout * s.build_tries + 4 * s.worker_lease + 60
        failing_since: float | None = None
        while True:
            try:
                async with self.redis.pubsub() as ps:
                    await ps.subscribe(done_channel(hash_))
                    while True:
                        found = await self._result(hash_, any_firmware=False)
                        if found:
                            return found
                        if not await self.redis.exists(job_key_prefix + hash_):
                            found = await self._result(hash_, any_firmware=True)
                            if found:
                                return found
                            raise Unavailable(
                                f"the build was started {s.build_tries} time(s) and no worker "
                                "finished it (workers stopped, killed or without the engine); "
                                "send the request again",
                                retry_after=30,
                            )
                        failing_since = None
                        if time.monotonic() > deadline:
                            raise Unavailable("no worker finished the build in time", 60)
                        await ps.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except RedisError as exc:
                t = time.monotonic()
                failing_since = failing_since or t
                if t - failing_since > 2 * s.worker_lease:
                    raise _unreachable(s) from exc
                await asyncio.sleep(0.5)


# -- the build host's side ---------------------------------------------------------------


class BuildWorker:
    """``kiisrv worker``: takes builds of the images it has and runs them on its engine."""

    def __init__(self, settings: Settings) -> None:
        if not settings.queue_url:
            raise ValueError("kiisrv worker needs KIISRV_QUEUE_URL (e.g. redis://host:6379/0)")
        self.settings = settings
        self.id = settings.instance
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.storage = Storage(settings.stats_db, settings.config_db)
        self.engine = Engine(settings.docker_url, settings.engine_timeout, settings.max_builds)
        self.catalog = Catalog(settings, self.storage, self.engine, ttl=0.0)
        self.runner = Runner(settings, self.storage, self.engine)
        self.redis = connect(settings.queue_url)
        self.wire = wire(settings)
        self.store = result_store(settings)
        self._active: set[str] = set()  # hashes this worker is building
        self._slots = asyncio.Semaphore(settings.max_builds)
        self._claims = asyncio.BoundedSemaphore(settings.max_builds)
        self._queues: dict[str, asyncio.Task[None]] = {}
        self._images: dict[str, str] = {}  # image id -> a local name of it

    async def run(self) -> None:
        await self.storage.run(self.storage.seed_versions, DEFAULT_VERSIONS)
        await self.runner.recover()  # this worker's orphan containers, left by a kill
        log.info("worker %s: engine %s, queue %s", self.id, self.settings.docker_url, "redis")
        folders = asyncio.create_task(self._prune_forever())
        try:
            while True:
                await self._advertise()
                await asyncio.sleep(self.settings.worker_lease / 3)
        finally:
            folders.cancel()
            for task in self._queues.values():
                task.cancel()
            for task in self._queues.values():
                with contextlib.suppress(BaseException):
                    await task
            with contextlib.suppress(RedisError):
                await self.redis.delete(WORKER_PREFIX + self.id)
            with contextlib.suppress(RedisError):
                await self.redis.aclose(close_connection_pool=True)
            await self.store.close()
            await anyio.to_thread.run_sync(self.storage.close)
            self.engine.close()

    async def _prune_forever(self) -> None:
        """What a worker's folders keep once a result is in the store: nothing. A build
        cleans up after itself; this catches what a kill or a crash left (the folders
        of builds not running here and older than ten minutes, and their job rows)."""
        s = self.settings
        while s.prune_interval > 0:
            try:
                busy = set(self._active)
                result = await anyio.to_thread.run_sync(
                    functools.partial(
                        prune,
                        s.config_dir,
                        s.builds_dir,
                        max_age=_WORKER_FOLDER_AGE,
                        max_bytes=s.retention_bytes,
                        in_use=busy,
                    )
                )
                before = now() - timedelta(seconds=_WORKER_FOLDER_AGE)
                await self.storage.run(self.storage.prune_builds, result.hashes, before, busy)
            except Exception:
                log.exception("worker %s: pruning its folders failed", self.id)
            await asyncio.sleep(s.prune_interval)

    async def _advertise(self) -> None:
        listed = True
        try:
            available = await self.catalog.available()
        except KiisrvError as exc:
            log.warning("worker %s: no image list: %s", self.id, exc.message)
            available, listed = {}, False
        images: dict[str, dict[str, Any]] = {}
        for a in available.values():
            images.setdefault(a.image_id, {})[a.version.container] = (
                a.info.as_json() if a.info else None
            )
            self._images[a.image_id] = a.image
        advert = {"id": self.id, "images": images, "max_builds": self.settings.max_builds}
        try:
            await self.redis.set(
                WORKER_PREFIX + self.id,
                self.wire.seal_advert(advert),
                px=int(self.settings.worker_lease * 1000),
            )
        except RedisError as exc:
            log.warning("worker %s: Redis unreachable: %s", self.id, exc)
        for image_id in images:
            if image_id not in self._queues:
                self._queues[image_id] = asyncio.create_task(self._serve(image_id))
        if listed:  # an image removed (or retagged) here: stop taking its builds
            for image_id in set(self._queues) - set(images):
                log.info("worker %s: image %s left; no longer on its queue", self.id, image_id)
                self._queues.pop(image_id).cancel()
                self._images.pop(image_id, None)

    async def _serve(self, image_id: str) -> None:
        """arq's worker loop on one image's queue, started again after a Redis outage."""
        s = self.settings
        while True:
            worker = Worker(
                functions=[
                    func(
                        self._build,
                        name=BUILD_FUNCTION,
                        max_tries=s.build_tries,
                        timeout=s.build_timeout + 120,
                        keep_result=0,
                    )
                ],
                queue_name=queue_name(image_id),
                redis_pool=self.redis,
                job_serializer=job_serializer,
                job_deserializer=job_deserializer,
                max_jobs=s.max_builds,
                poll_delay=s.worker_poll,
                handle_signals=False,
                keep_result=0,
                max_tries=s.build_tries,
                log_results=False,
            )
            # One semaphore for every image's loop: arq takes a job only once it holds a
            # place, so the worker claims no more builds than it can start, whatever the
            # number of images (each loop had max_builds of its own: images x max_builds
            # claimed, the surplus waiting here on a slot while its job timeout ran, and
            # no other worker could take them). arq 0.28 names it ``sem``.
            worker.sem = self._claims
            try:
                await worker.main()
            except asyncio.CancelledError:
                raise
            except RedisError as exc:
                log.warning("worker %s: queue loop stopped (%s); again in 1 s", self.id, exc)
                await asyncio.sleep(1)
            except Exception:  # a bug of ours or arq's: never a queue silently gone
                log.exception(
                    "worker %s: queue loop of %s crashed; again in 1 s", self.id, image_id
                )
                await asyncio.sleep(1)

    async def _hold(self, hash_: str) -> None:
        """Keeps arq's in-progress mark short-lived: it outlives a killed worker briefly."""
        lease = self.settings.worker_lease
        while True:
            with contextlib.suppress(RedisError):
                await self.redis.pexpire(in_progress_key_prefix + hash_, int(lease * 1000))
            await asyncio.sleep(lease / 3)

    async def _build(self, ctx: dict[str, Any], payload: Any, signature: Any = None) -> str:
        hash_ = str(ctx["job_id"])
        try:
            record = self.wire.open_plan(hash_, payload, signature)
        except Forged as exc:
            log.warning("worker %s: refusing job %r: %s", self.id, hash_[:64], exc)
            return "refused"
        done = await stored_result(self.redis, self.store, hash_, any_firmware=True)
        if done and not done.job.retry_later:
            return "shared"  # finished meanwhile (a re-enqueue raced with the result)
        hold = asyncio.create_task(self._hold(hash_))
        pump: asyncio.Task[None] | None = None
        self._active.add(hash_)
        try:
            image = self._images.get(record.image_id)
            if image is None:
                raise Retry(defer=1)  # not ours (any more): let another worker have it
            plan = plan_from_record(record, image)
            job = plan.job
            job.state, job.error, job.retry_later = JobState.QUEUED, None, False
            output = b""

            def running_in(cid: str) -> None:
                nonlocal pump
                pump = asyncio.create_task(self._pump_log(hash_, cid))

            try:
                output = await self.runner.execute(plan, self._slots, running_in)
            except (Unavailable, EngineError) as exc:
                # A fault of this host or its engine (unreachable, an error answer, the
                # image gone), not of the layout: tried again, here or on another worker,
                # at most KIISRV_BUILD_TRIES times, then the request gets a 503. Published
                # as a failed build it was every API server's 422 for the result's TTL.
                log.warning("worker %s: build %s: %s; retrying", self.id, hash_, exc.message)
                await self._discard(plan, output)
                raise Retry(defer=1) from exc
            except KiisrvError as exc:
                job.error = exc.message
            await self.runner.finish(plan, output)
            if job.retry_later and int(ctx.get("job_try") or 1) < self.settings.build_tries:
                # Timed out, or this host could not store the output (its disk): the
                # machine's trouble as likely as the layout's. Tried again, the last
                # try's error is published as what it is, a fault (503, never cached).
                log.warning("worker %s: build %s: %s; retrying", self.id, hash_, job.error)
                await self._discard(plan, b"", finished=True)
                raise Retry(defer=1)
            path = self.settings.builds_dir / job.zip_name
            data = await anyio.to_thread.run_sync(path.read_bytes)
            await self._clean(plan)
            try:
                sign = await self.store.put(job, data)
            except StorageError as exc:  # the store's fault, not the build's: again later
                log.warning("worker %s: build %s: %s; retrying", self.id, hash_, exc.message)
                raise Retry(defer=1) from exc
            if pump is not None:
                pump.cancel()
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(result_key(hash_), sign, px=int(self._ttl(job) * 1000))
                pipe.delete(log_key(hash_))  # the whole log is in the zip now
                pipe.publish(done_channel(hash_), b"1")
                await pipe.execute()
            return job.state.value
        finally:
            self._active.discard(hash_)
            hold.cancel()
            if pump is not None:
                pump.cancel()

    def _ttl(self, job: Job) -> float:
        """A build that ran and failed is kept briefly (the layout may be fixed soon, and a
        failure is cheap to find again); a firmware for the whole result TTL."""
        s = self.settings
        return s.result_ttl if job.state is JobState.SUCCEEDED else min(s.result_ttl, s.failed_ttl)

    async def _discard(self, plan: Plan, output: bytes, finished: bool = False) -> None:
        """Record the try in the worker's own job row, but keep no zip: it is tried again."""
        if not finished:
            await self.runner.finish(plan, output)
        await self._clean(plan)

    async def _clean(self, plan: Plan) -> None:
        """The build's zip and inputs off this worker's disk (the store has the result)."""
        s, job = self.settings, plan.job

        def remove() -> None:
            (s.builds_dir / job.zip_name).unlink(missing_ok=True)
            shutil.rmtree(s.config_dir / job.hash, ignore_errors=True)

        await anyio.to_thread.run_sync(remove)

    async def _pump_log(self, hash_: str, cid: str) -> None:
        """The running build's output to Redis each second, for ``/builds/<hash>/log`` on
        any API server; it expires on its own if this worker dies."""
        ttl = int(max(3.0, 3 * self.settings.worker_lease) * 1000)
        while True:
            await asyncio.sleep(1.0)
            try:
                output = (await self.engine.logs(cid))[-LIVE_LOG_BYTES:]
                await self.redis.set(log_key(hash_), self.wire.seal_log(hash_, output), px=ttl)
            except (KiisrvError, RedisError):
                pass  # finishing, or Redis away: the next second, or the zip, tells


async def notice(redis: ArqRedis, hash_: str) -> bytes | None:
    """The signature a worker left in Redis with a finished build, if it is still there
    (anything else under the key was planted: deleted)."""
    key = result_key(hash_)
    try:
        return await redis.get(key)  # type: ignore[no-any-return]
    except ResponseError:  # not a string: not ours
        log.warning("deleting the result notice for %s: not a notice", hash_)
        await redis.delete(key)
        return None


async def stored_result(
    redis: ArqRedis, store: ResultStore, hash_: str, *, any_firmware: bool
) -> Stored | None:
    """A build's result that answers now (results.fresh), signed by a worker of this
    cluster: a row that fails its signature is deleted by the store, never served.
    ``any_firmware``: also a firmware whose notice is gone (the store keeps results
    longer than Redis); otherwise only a build whose notice is there (the wait's test)."""
    sign = await notice(redis, hash_)
    if sign is None and not any_firmware:
        return None
    return fresh(await store.get(hash_), sign)


def run_worker(settings: Settings) -> None:
    """Until SIGTERM or SIGINT; builds in flight are stopped and go back to the queue."""

    async def main() -> None:
        worker = BuildWorker(settings)
        task = asyncio.create_task(worker.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())

"""``kiisrv worker``: the build host's side of a cluster.

A worker listens on the arq queues of the controller images it has, builds what it
takes on its own engine, puts each finished build in the result store and leaves a
signed notice in Redis (cluster/keys.py). It advertises its images every third of its
lease; a killed worker's builds go back to the queue when their in-progress marks
expire (renewed every third of the lease while it runs them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from arq import Retry
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from arq.worker import Worker, func
from redis.exceptions import RedisError

from kiisrv.build.catalog import Catalog
from kiisrv.build.engine import Engine
from kiisrv.build.outcome import End, end_of, settle
from kiisrv.build.runner import Runner
from kiisrv.cluster.keys import (
    BUILD_FUNCTION,
    LIVE_LOG_BYTES,
    WORKER_PREFIX,
    done_channel,
    job_deserializer,
    job_serializer,
    log_key,
    queue_name,
    result_key,
    wire,
)
from kiisrv.cluster.results import ResultStore, stored_result
from kiisrv.cluster.wire import Forged, plan_from_record
from kiisrv.errors import KiisrvError, StorageError
from kiisrv.jobs import Job, JobState
from kiisrv.recipe.planner import Plan
from kiisrv.recipe.versions import DEFAULT_VERSIONS
from kiisrv.settings import Settings
from kiisrv.store.results import FolderResults
from kiisrv.store.retention import prune_forever
from kiisrv.store.storage import Storage

log = logging.getLogger("kiisrv.distributed")


@dataclass
class WorkerParts:
    """What a build host runs on (assembly.worker makes them from Settings)."""

    storage: Storage
    engine: Engine
    catalog: Catalog
    runner: Runner
    results: FolderResults  # its own folder: what a kill left, kept briefly
    redis: ArqRedis
    store: ResultStore


class BuildWorker:
    """``kiisrv worker``: takes builds of the images it has and runs them on its engine."""

    def __init__(self, settings: Settings, parts: WorkerParts) -> None:
        self.settings = settings
        self.id = settings.instance
        self.storage = parts.storage
        self.engine = parts.engine
        self.catalog = parts.catalog
        self.runner = parts.runner
        self.redis = parts.redis
        self.store = parts.store
        self.folder = parts.results
        self.wire = wire(settings)
        self._active: set[str] = set()  # hashes this worker is building
        self._slots = asyncio.Semaphore(settings.max_builds)
        self._claims = asyncio.BoundedSemaphore(settings.max_builds)
        self._queues: dict[str, asyncio.Task[None]] = {}
        self._images: dict[str, str] = {}  # image id -> a local name of it

    async def run(self) -> None:
        await self.storage.run(self.storage.seed_versions, DEFAULT_VERSIONS)
        await self.runner.recover()  # this worker's orphan containers, left by a kill
        log.info("worker %s: engine %s, queue %s", self.id, self.settings.docker_url, "redis")
        folders = asyncio.create_task(
            prune_forever(self.settings.prune_interval, self._prune, f"worker {self.id}")
        )
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

    async def _prune(self) -> None:
        """What a worker's folders keep once a result is in the store: nothing. A build
        cleans up after itself; this catches what a kill or a crash left (the folders
        of builds not running here and older than ten minutes, and their job rows)."""
        await anyio.to_thread.run_sync(self.folder.prune_files, set(self._active))

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
            except KiisrvError as exc:
                if end_of(exc) is End.FAULT:
                    # This host's or its engine's (unreachable, an error answer, the image
                    # gone), not the layout's: tried again, here or on another worker, at
                    # most KIISRV_BUILD_TRIES times, then the request gets a 503. Published
                    # as a failed build it was every API server's 422 for the result's TTL.
                    log.warning("worker %s: build %s: %s; retrying", self.id, hash_, exc.message)
                    await self._discard(plan, output)
                    raise Retry(defer=1) from exc
                settle(job, exc)
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

"""The API server's side of a cluster: builds enqueued for ``kiisrv worker``s, their
results awaited (docs/distributed.md; the keys: cluster/keys.py).

A build is enqueued with its hash as arq's job id, so one build per layout runs
cluster-wide; its signed plan is what a worker builds (wire.py). A finished build's
zip is in the result store (cluster/results.py), its notice in Redis wakes the servers
waiting for it; this server keeps a copy in its own folder (``Results.keep``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.jobs import Job as ArqJob
from arq.jobs import SerializationError
from redis.exceptions import RedisError

from kiisrv.build.outcome import End, settle
from kiisrv.build.queue import InFlight, InFlightQueue
from kiisrv.build.runner import Runner
from kiisrv.cluster.keys import (
    BUILD_FUNCTION,
    QUEUE_RE,
    done_channel,
    job_deserializer,
    log_key,
    queue_name,
    result_key,
    unreachable,
    wire,
)
from kiisrv.cluster.results import ClusterResults, stored_result
from kiisrv.cluster.turns import RedisTurns
from kiisrv.cluster.wire import Forged, PlanRecord
from kiisrv.errors import Unavailable
from kiisrv.jobs import Job, JobState
from kiisrv.recipe.planner import Plan
from kiisrv.settings import Settings
from kiisrv.store.storage import Storage

log = logging.getLogger("kiisrv.distributed")


class RedisQueue(InFlightQueue):
    """Enqueues builds for ``kiisrv worker``s and waits for their results."""

    def __init__(
        self,
        settings: Settings,
        runner: Runner,
        storage: Storage,
        redis: ArqRedis,
        results: ClusterResults,
    ):
        super().__init__(storage, settings.max_queue)
        self.settings = settings
        self.runner = runner
        self.redis = redis
        self.results = results
        self.store = results.store
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
                if QUEUE_RE.fullmatch(q)  # not arq's `<queue>:health-check` strings
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

    async def _queued_plan(self, hash_: str) -> PlanRecord | None:
        """The signed plan of a build waiting or running in the queue, whoever queued it."""
        try:
            info = await ArqJob(hash_, self.redis, _deserializer=job_deserializer).info()
        except RedisError:
            raise unreachable() from None
        except SerializationError:  # not JSON: planted
            return None
        if info is None or len(info.args) != 2:
            return None
        try:
            return self.wire.open_plan(hash_, info.args[0], info.args[1])
        except Forged:
            return None

    async def find(self, hash_: str) -> Job | None:
        """Also a build another API server queued: waiting or running in Redis."""
        job = self.current(hash_)
        if job is not None:
            return job
        record = await self._queued_plan(hash_)
        if record is None:
            return None
        job = record.job.to_job()
        try:
            running = await self.redis.exists(in_progress_key_prefix + hash_)
        except RedisError:
            raise unreachable() from None
        job.state = JobState.RUNNING if running else JobState.QUEUED
        return job

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            with contextlib.suppress(RedisError):
                await self.redis.aclose(close_connection_pool=True)
            await self.results.close()

    async def _run(self, plan: Plan, record: InFlight) -> None:
        job = plan.job
        try:
            async with self.turns.turn(plan.client, job.hash):
                remote, data = await self._remote(plan)
            job.state, job.error = remote.state, remote.error
            job.started_at, job.finished_at = remote.started_at, remote.finished_at
            job.duration_ms, job.retry_later = remote.duration_ms, remote.retry_later
            await self.results.keep(job, data)
        except (Exception, asyncio.CancelledError) as exc:
            end = settle(job, exc)
            try:
                await self.runner.finish(plan, b"")  # the error zip and the job row
            except Exception as exc2:
                log.exception("could not record build %s", job.hash)
                job.state, job.retry_later = JobState.FAILED, True
                job.error = job.error or f"could not record the build result: {exc2}"
            if end is End.SHUTDOWN:
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
            raise unreachable() from None
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
                    raise unreachable() from exc
                await asyncio.sleep(0.5)

"""Deduplication, admission and slots: which build runs when, and who waits for it.

``BuildQueue`` is the seam for running builds elsewhere (cluster/queue.py: arq on
Redis): the core only submits plans and asks about hashes, so a distributed queue
replaces ``LocalQueue`` without touching the planner or the runner. How a build's end
becomes its job's state is build/outcome.py's, for both.

``LocalQueue`` keeps one in-flight record per hash. Identical plans await the same
future; the build runs in its own task so a client that hangs up does not cancel it.
Distinct builds wait for one of ``max_builds`` slots, served round-robin by client
(``fairness.FairSlots``: one client's flood waits behind others' builds); past
``max_queue`` waiting builds a new one is refused with 503. The job row is written
*before* the record is registered: if that write fails, nothing is left behind that
could make later identical requests wait forever or count against the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Protocol

from kiisrv.build.fairness import FairSlots
from kiisrv.build.outcome import End, settle
from kiisrv.build.runner import Runner
from kiisrv.errors import EngineConflict, EngineNotFound, QueueFull
from kiisrv.jobs import Job, JobState
from kiisrv.recipe.planner import Plan
from kiisrv.store.storage import Storage

log = logging.getLogger("kiisrv.queue")


class BuildQueue(Protocol):
    async def submit(self, plan: Plan) -> Job:
        """Run the plan's build (or join the identical one in flight); the finished job."""
        ...

    def current(self, hash_: str) -> Job | None:
        """The job of a build queued or running, None otherwise."""
        ...

    def in_use(self) -> set[str]:
        """Hashes whose files must not be pruned: queued or running builds."""
        ...

    async def live_log(self, hash_: str) -> bytes | None:
        """The output so far of a running build; None when it is not running."""
        ...

    async def position(self, hash_: str) -> int | None:
        """Builds waiting ahead of a queued one (0: it starts next); None: not queued."""
        ...

    async def find(self, hash_: str) -> Job | None:
        """The job of a build queued or running anywhere this queue reaches (a cluster's
        queue: builds other API servers queued too); None otherwise."""
        ...

    async def close(self) -> None:
        """Stop the builds in flight; each records its own failure."""
        ...


@dataclass
class InFlight:
    job: Job
    future: asyncio.Future[Job]
    container: str | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class InFlightQueue:
    """What every queue does the same way: one record per hash, admission, shutdown.

    The job row is written *before* the record is registered, so a failed write leaves
    nothing behind for identical requests to wait on. Subclasses say how a build runs
    (``_run``, which must settle the record's future) and what counts as waiting.
    """

    def __init__(self, storage: Storage, max_queue: int) -> None:
        self.storage = storage
        self.max_queue = max_queue
        self._inflight: dict[str, InFlight] = {}

    async def submit(self, plan: Plan) -> Job:
        record = self._inflight.get(plan.job.hash)
        if record is None:
            record = await self._admit(plan)
        return await asyncio.shield(record.future)

    async def _waiting(self) -> int:
        return sum(1 for r in self._inflight.values() if r.job.state is JobState.QUEUED)

    async def position(self, hash_: str) -> int | None:
        ahead = 0
        for h, r in self._inflight.items():  # in arrival order, which is the slots' order
            if h == hash_:
                return ahead if r.job.state is JobState.QUEUED else None
            ahead += r.job.state is JobState.QUEUED
        return None

    async def _admit(self, plan: Plan) -> InFlight:
        waiting = await self._waiting()
        if waiting >= self.max_queue:
            raise QueueFull(
                f"{waiting} builds are already waiting; try again in a minute", retry_after=60
            )
        await self.storage.run(self.storage.save_job, plan.job)  # may raise: nothing registered
        existing = self._inflight.get(plan.job.hash)  # an identical request won the race
        if existing is not None:
            return existing
        record = InFlight(plan.job, asyncio.get_running_loop().create_future())
        self._inflight[plan.job.hash] = record
        record.task = asyncio.create_task(self._run(plan, record), name=f"build-{plan.job.hash}")
        return record

    async def _run(self, plan: Plan, record: InFlight) -> None:
        raise NotImplementedError

    def current(self, hash_: str) -> Job | None:
        record = self._inflight.get(hash_)
        return record.job if record else None

    def in_use(self) -> set[str]:
        return set(self._inflight)

    async def find(self, hash_: str) -> Job | None:
        return self.current(hash_)

    async def close(self) -> None:
        tasks = [r.task for r in self._inflight.values() if r.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


class LocalQueue(InFlightQueue):
    """Builds in this process, at most ``max_builds`` at once."""

    def __init__(
        self,
        runner: Runner,
        storage: Storage,
        max_builds: int,
        max_queue: int,
        max_client_builds: int = 1,
    ):
        super().__init__(storage, max_queue)
        self.runner = runner
        # Round-robin by client, each at most its share at once (fairness.py).
        self._slots = FairSlots(max_builds, max_client_builds)

    async def live_log(self, hash_: str) -> bytes | None:
        record = self._inflight.get(hash_)
        if record is None or record.container is None:
            return None
        # Gone, or being removed as the build ends (409 from the engine): not running.
        with contextlib.suppress(EngineNotFound, EngineConflict):
            return await self.runner.engine.logs(record.container)
        return None

    async def _run(self, plan: Plan, record: InFlight) -> None:
        job = plan.job
        output = b""
        try:

            def running_in(cid: str) -> None:
                record.container = cid

            output = await self.runner.execute(plan, self._slots.slot(plan.client), running_in)
        except (Exception, asyncio.CancelledError) as exc:
            if settle(job, exc) is End.SHUTDOWN:
                raise
        finally:
            try:
                await self.runner.finish(plan, output)
            except Exception as exc:  # e.g. the database cannot be written
                log.exception("could not record build %s", job.hash)
                job.state = JobState.FAILED
                job.retry_later = True
                job.error = job.error or f"could not record the build result: {exc}"
            finally:
                self._inflight.pop(job.hash, None)
                if not record.future.done():
                    record.future.set_result(job)

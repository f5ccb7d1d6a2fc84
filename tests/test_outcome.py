"""How a build's end becomes its job's state (build/outcome.py): one rule for the local
queue, the cluster's queue and the worker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from kiisrv.build.outcome import SHUTDOWN_REASON, End, end_of, settle
from kiisrv.build.queue import LocalQueue
from kiisrv.errors import (
    BuildFailed,
    EngineError,
    EngineNotFound,
    EngineUnavailable,
    InvalidLayout,
    KiisrvError,
    StorageError,
    Unavailable,
)
from kiisrv.jobs import Job, JobState
from kiisrv.recipe.kll import BuildParams, KllFile
from kiisrv.recipe.planner import Plan
from kiisrv.recipe.versions import Available, Version
from kiisrv.settings import Settings
from kiisrv.store.storage import Storage

pytestmark = pytest.mark.anyio

HASH = "0123456789abcdef" * 2


@pytest.mark.parametrize(
    ("exc", "end"),
    [
        (asyncio.CancelledError(), End.SHUTDOWN),
        (Unavailable("try later"), End.FAULT),
        (EngineUnavailable("no daemon"), End.FAULT),
        (StorageError("disk full"), End.FAULT),
        (EngineError("the daemon said no"), End.FAULT),
        (EngineNotFound("no such image"), End.FAULT),
        (BuildFailed("the layout"), End.FAILED),
        (InvalidLayout("bad"), End.FAILED),
        (KiisrvError("ours, said"), End.FAILED),
        (RuntimeError("a bug"), End.BUG),
    ],
)
def test_every_end_has_one_class(exc: BaseException, end: End) -> None:
    assert end_of(exc) is end


def test_settle_records_why_on_the_job(caplog: pytest.LogCaptureFixture) -> None:
    job = Job(HASH, f"KType-Mine-{HASH}", "latest", "controller-057")
    assert settle(job, EngineError("the daemon said no")) is End.FAULT
    assert (job.error, job.retry_later) == ("the daemon said no", True)
    job = Job(HASH, f"KType-Mine-{HASH}", "latest", "controller-057")
    assert settle(job, KiisrvError("the build failed")) is End.FAILED
    assert (job.error, job.retry_later) == ("the build failed", False)
    assert settle(job, asyncio.CancelledError()) is End.SHUTDOWN
    assert job.error == SHUTDOWN_REASON
    with caplog.at_level(logging.ERROR, "kiisrv.queue"):
        assert settle(job, RuntimeError("boom")) is End.BUG
    assert job.error == "internal error: boom" and "crashed" in caplog.text


def _plan() -> Plan:
    return Plan(
        job=Job(HASH, f"KType-Mine-{HASH}", "latest", "controller-057"),
        target=Available(Version("latest", "stable", "controller-057", "v0.5.7"), "img", "i", None),
        files=[KllFile("KType-Mine-0.kll", 'U"A" : U"B";\n')],
        params=BuildParams("ktype.bash", False, "KType-Mine-0", "", "Mine"),
        layout_name="KType-Mine.json",
        layout_json=b"{}",
        board="KType",
        variant="Mine",
    )


class _Failing:
    """A runner whose build ends in ``exc`` (what the engine or the container raised);
    ``finish`` records the job as the real runner would."""

    def __init__(self, storage: Storage, exc: BaseException) -> None:
        self.storage = storage
        self.exc = exc

    async def execute(
        self,
        plan: Plan,
        slot: AbstractAsyncContextManager[object],
        on_container: Callable[[str], None],
    ) -> bytes:
        async with slot:
            raise self.exc

    async def finish(self, plan: Plan, output: bytes) -> None:
        job = plan.job
        job.state = JobState.SUCCEEDED if job.error is None else JobState.FAILED
        await self.storage.run(self.storage.save_job, job)


@pytest.mark.parametrize(
    ("exc", "retry_later"),
    [
        # The engine answered with an error (the image gone): the host's fault, a 503 to
        # send again, as a worker treats it; a single server made it the layout's 422.
        (EngineNotFound("no such image: kiisrv-controller-057:latest"), True),
        (EngineUnavailable("the Docker daemon cannot be reached"), True),
        (BuildFailed("the build failed (exit status 1)"), False),
        (RuntimeError("a bug of ours"), False),
    ],
)
async def test_the_local_queue_ends_a_build_by_the_one_rule(
    settings: Settings, exc: BaseException, retry_later: bool
) -> None:
    storage = Storage(settings.stats_db, settings.config_db)
    try:
        runner: Any = _Failing(storage, exc)
        queue = LocalQueue(runner, storage, max_builds=1, max_queue=10)
        job = await queue.submit(_plan())
        assert job.state is JobState.FAILED and job.retry_later is retry_later
        assert job.error and str(exc) in job.error
        saved = await storage.run(storage.load_job, HASH)
        assert saved is not None and saved.state is JobState.FAILED and saved.error == job.error
    finally:
        storage.close()

"""From a build request to a zip: validation, deduplication, queueing, the container.

Identical requests share one build: the first creates a job and a task, the others
await the same future. The build runs in its own task so a client that hangs up does
not cancel it. Distinct builds wait for one of ``max_builds`` slots in arrival order;
past ``max_queue`` waiting builds a new one is refused with 503. A finished success
is found again by its zip on disk, also after a restart; a failure is not kept, so
the next identical request tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread

from kiisrv import kll
from kiisrv.artifacts import log_tail, publish, write_zip
from kiisrv.catalog import Available, Catalog
from kiisrv.containers import WORK_SUBDIR, build_container_spec
from kiisrv.engine import Engine
from kiisrv.errors import (
    EngineNotFound,
    EngineTimeout,
    InvalidLayout,
    KiisrvError,
    NotFound,
    QueueFull,
    Unavailable,
)
from kiisrv.jobs import Job, JobState
from kiisrv.layout import parse_request
from kiisrv.layouts import LayoutStore
from kiisrv.settings import Settings
from kiisrv.storage import RequestRecord, Storage, now

log = logging.getLogger("kiisrv.builder")

RESTART_REASON = "the server restarted before this build finished; send the request again"


@dataclass(frozen=True)
class Client:
    ip: str
    user_agent: str

    @property
    def os(self) -> str:
        ua = self.user_agent.lower()
        if "windows" in ua:
            return "Windows"
        if "mac" in ua:
            return "Mac"
        if "linux" in ua or "x11" in ua:
            return "Linux"
        return "Unknown"

    @property
    def web(self) -> bool:
        return "electron" not in self.user_agent.lower()


@dataclass(frozen=True)
class Outcome:
    job: Job
    cached: bool

    @property
    def success(self) -> bool:
        return self.job.state is JobState.SUCCEEDED

    @property
    def filename(self) -> str:
        return f"./tmp/{self.job.zip_name}"


@dataclass(frozen=True)
class Plan:
    """Everything decided before a build starts; nothing has been written yet."""

    job: Job
    target: Available
    files: list[kll.KllFile]
    params: kll.BuildParams
    layout_name: str
    layout_json: bytes
    board: str
    variant: str


def request_hash(target: Available, config: Any) -> str:
    """Identifies (image, LTS rules, layout), whatever the key order or whitespace.

    Keys are sorted, but the order of ``animations`` changes the KLL, so it is hashed
    as well. The image id is included so a rebuilt controller image rebuilds firmware.
    """
    animations = config.get("animations") if isinstance(config, dict) else None
    material = json.dumps(
        {
            "container": target.version.container,
            "image": target.image_id,
            "lts": target.version.lts,
            "animation_order": list(animations) if isinstance(animations, dict) else [],
            "config": config,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(material.encode()).hexdigest()[:32]


class Builder:
    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        engine: Engine,
        catalog: Catalog,
        layouts: LayoutStore,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.engine = engine
        self.catalog = catalog
        self.layouts = layouts
        self._inflight: dict[str, asyncio.Future[Job]] = {}
        self._jobs: dict[str, Job] = {}
        self._containers: dict[str, str] = {}  # hash -> running container, for live logs
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(max(1, settings.max_builds))

    @property
    def work_dir(self) -> Path:
        return self.settings.builds_dir / WORK_SUBDIR

    # -- life cycle --------------------------------------------------------------------

    async def recover(self) -> None:
        """After a restart: no orphan containers, no half-written work, no limbo rows."""
        for d in (self.settings.config_dir, self.settings.builds_dir, self.work_dir):
            d.mkdir(parents=True, exist_ok=True)
        for leftover in self.work_dir.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)
        failed = self.storage.fail_unfinished(RESTART_REASON)
        if failed:
            log.warning("%d build(s) were cut short by a restart; recorded as failed", failed)
        try:
            orphans = await anyio.to_thread.run_sync(self.engine.containers, self.settings.instance)
        except KiisrvError as exc:
            log.warning("could not look for orphan build containers: %s", exc.message)
            return
        for cid in orphans:
            log.warning("removing orphan build container %s", cid[:12])
            await anyio.to_thread.run_sync(self.engine.remove, cid)

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            # Each task records its own failure; here we only wait for it to end.
            with contextlib.suppress(BaseException):
                await task

    # -- requests ----------------------------------------------------------------------

    def in_use(self) -> set[str]:
        return set(self._jobs)

    def status(self, hash_: str) -> Job | None:
        return self._jobs.get(hash_) or self.storage.load_job(hash_)

    async def log(self, hash_: str) -> bytes:
        """The build's output so far (running) or its build log (finished)."""
        job = self.status(hash_)
        if job is None:
            raise NotFound(f"no build {hash_!r}")
        cid = self._containers.get(hash_)
        if cid is not None:
            with contextlib.suppress(EngineNotFound):
                return await anyio.to_thread.run_sync(self.engine.logs, cid)
        if not job.state.finished:
            return b""  # queued: nothing has run yet
        try:
            with zipfile.ZipFile(self.settings.builds_dir / job.zip_name) as z:
                return z.read("log/build.log")
        except (OSError, KeyError, zipfile.BadZipFile):
            raise NotFound(f"the log of build {hash_} is no longer kept") from None

    async def plan(self, body: Any) -> Plan:
        request = parse_request(body)
        layout = request.config
        kll.build_script(layout)  # UnknownKeyboard before anything else is looked up
        target = await self.catalog.resolve(request.env)
        base = self.layouts.load_base(kll.base_file_name(layout, target.version.lts))
        generated = kll.generate(layout, base, target.version.lts)
        if not generated:
            raise InvalidLayout("matrix: no key has any layer, so there is nothing to build")
        # File names feed DefaultMapOverride, a space-separated list: no spaces there.
        files = [kll.KllFile(kll.sanitise(f.name), f.content) for f in generated]
        board = kll.board_name(layout)
        variant = kll.sanitise(layout.header.Layout)
        hash_ = request_hash(target, body["config"])
        job = Job(
            hash=hash_,
            stem=f"{board}-{variant}-{hash_}",
            version=target.version.name,
            container=target.version.container,
        )
        return Plan(
            job=job,
            target=target,
            files=files,
            params=kll.build_params(layout, files),
            layout_name=f"{board}-{variant}.json",
            layout_json=json.dumps(body["config"], ensure_ascii=False).encode(),
            board=board,
            variant=variant,
        )

    async def build(self, body: Any, client: Client) -> Outcome:
        request_time = now()
        started = time.monotonic()
        plan = await self.plan(body)
        job = plan.job
        cached = False
        future = self._inflight.get(job.hash)
        finished = self.settings.builds_dir / f"{job.stem}.zip"
        if future is None and finished.is_file():
            cached = True
            job = _succeeded(self.storage.load_job(job.hash) or job)
            with contextlib.suppress(OSError):
                finished.touch()  # recently used: kept longest by retention
        else:
            if future is None:
                future = self._start(plan)
            job = await asyncio.shield(future)
        duration = None if cached else int((time.monotonic() - started) * 1000)
        self.storage.record_request(
            RequestRecord(
                ip_addr=client.ip,
                os=client.os,
                web=client.web,
                hash=job.hash,
                board=plan.board,
                variant=plan.variant,
                layers=len(plan.files),
                container=plan.target.version.container,
                success=job.state is JobState.SUCCEEDED,
                request_time=request_time,
                build_duration=duration,
            )
        )
        return Outcome(job, cached)

    def _start(self, plan: Plan) -> asyncio.Future[Job]:
        queued = sum(1 for j in self._jobs.values() if j.state is JobState.QUEUED)
        if queued >= self.settings.max_queue:
            raise QueueFull(
                f"{queued} builds are already waiting; try again in a minute", retry_after=60
            )
        future: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        self._inflight[plan.job.hash] = future
        self._jobs[plan.job.hash] = plan.job
        self.storage.save_job(plan.job)
        task = asyncio.create_task(self._run(plan, future), name=f"build-{plan.job.hash}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return future

    # -- one build ---------------------------------------------------------------------

    async def _run(self, plan: Plan, future: asyncio.Future[Job]) -> None:
        job = plan.job
        output = b""
        try:
            self._write_inputs(plan)
            async with self._slots:
                job.state = JobState.RUNNING
                job.started_at = now()
                self.storage.save_job(job)
                output = await self._run_container(plan)
        except asyncio.CancelledError:
            job.error = "the server shut down before this build finished"
            raise
        except Unavailable as exc:
            job.error = exc.message
            job.retry_later = True
        except KiisrvError as exc:
            job.error = exc.message
        except Exception as exc:  # a bug of ours: report it, never leave waiters hanging
            log.exception("build %s crashed", job.hash)
            job.error = f"internal error: {exc}"
        finally:
            try:
                self._finish(plan, output)
            except Exception as exc:  # e.g. the database cannot be written
                log.exception("could not record build %s", job.hash)
                job.state = JobState.FAILED
                job.retry_later = True
                job.error = job.error or f"could not record the build result: {exc}"
            finally:
                self._inflight.pop(job.hash, None)
                self._jobs.pop(job.hash, None)
                self._containers.pop(job.hash, None)
                if not future.done():
                    future.set_result(job)

    def _write_inputs(self, plan: Plan) -> None:
        config = self.settings.config_dir / plan.job.hash
        shutil.rmtree(config, ignore_errors=True)
        config.mkdir(parents=True)
        for f in plan.files:
            (config / f.name).write_text(f.content, encoding="utf-8")
        (config / plan.layout_name).write_bytes(plan.layout_json)
        work = self.work_dir / plan.job.hash
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        work.chmod(0o777)  # the build may run as another uid than the server

    async def _run_container(self, plan: Plan) -> bytes:
        job = plan.job
        spec = build_container_spec(
            self.settings,
            image=plan.target.image,
            job_hash=job.hash,
            script=plan.params.script,
            zip_name=f"{job.stem}.zip",
            environment=plan.params.environment(),
            suffix=secrets.token_hex(3),
        )
        cid = await anyio.to_thread.run_sync(self.engine.start, spec)
        self._containers[job.hash] = cid
        try:
            try:
                status = await anyio.to_thread.run_sync(
                    self.engine.wait, cid, self.settings.build_timeout
                )
            except EngineTimeout:
                await anyio.to_thread.run_sync(self.engine.kill, cid)
                output = await anyio.to_thread.run_sync(self.engine.logs, cid)
                job.error = (
                    f"the build took longer than {self.settings.build_timeout:g} s and was "
                    f"stopped; end of the log:\n{log_tail(output)}"
                )
                return output
            output = await anyio.to_thread.run_sync(self.engine.logs, cid)
            if status != 0:
                job.error = f"the build failed (exit status {status}); end of the log:\n" + (
                    log_tail(output)
                )
            return output
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.engine.remove, cid)

    def _finish(self, plan: Plan, output: bytes) -> None:
        """Publish the zip the container left, or write an error zip ourselves."""
        job = plan.job
        work = self.work_dir / job.hash
        made = work / f"{job.stem}.zip"
        made_error = work / f"{job.stem}_error.zip"
        try:
            if job.error is None and made.is_file():
                publish(made, self.settings.builds_dir / f"{job.stem}.zip")
                job.state = JobState.SUCCEEDED
            else:
                if job.error is None:
                    job.error = "the build finished without producing a zip\n" + log_tail(output)
                job.state = JobState.FAILED
                dest = self.settings.builds_dir / f"{job.stem}_error.zip"
                if made_error.is_file():
                    publish(made_error, dest)
                else:
                    write_zip(dest, self._error_members(plan, output))
        except OSError as exc:
            log.error("could not publish build %s: %s", job.hash, exc)
            job.state = JobState.FAILED
            job.retry_later = True
            job.error = f"could not store the build result: {exc.strerror or exc}"
        finally:
            shutil.rmtree(work, ignore_errors=True)
        job.finished_at = now()
        if job.started_at:
            job.duration_ms = int((job.finished_at - job.started_at).total_seconds() * 1000)
        self.storage.save_job(job)

    def _error_members(self, plan: Plan, output: bytes) -> dict[str, bytes]:
        members: dict[str, bytes] = {}
        for f in plan.files:
            members[f.name] = f.content.encode()
            members[f"kll/{f.name}"] = f.content.encode()
        members[plan.layout_name] = plan.layout_json
        members["log/build.log"] = output or (plan.job.error or "").encode()
        return members


def _succeeded(job: Job) -> Job:
    job.state = JobState.SUCCEEDED
    return job

"""One build: stage its inputs, run its container, publish what came out.

The container mounts no host folder: its inputs go in as a tar (``buildio.py``) by the
archive API, and its output folder comes out the same way once it has exited, checked
member by member, into ``builds/.work/<hash>``.

The runner knows nothing of other builds: deduplication, admission and slots are the
queue's (``queue.py``). Its file work (rmtree, os.replace, writing zips) runs in worker
threads, never on the event loop, and its Engine calls go through the engine's own
pool. It also settles builds a killed server left behind: a zip the container had
finished is published, anything else gets an error zip saying why, so every filename
the server reports exists and every build has a log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import shutil
import time
import zipfile
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import anyio.to_thread

from kiisrv.build.buildio import MAX_ARCHIVE_BYTES, UnsafeOutput, extract_output, input_archive
from kiisrv.build.containers import IO_DIR, OUT_DIR, WORK_SUBDIR, build_container_spec
from kiisrv.build.engine import Engine
from kiisrv.errors import EngineNotFound, EngineTimeout, KiisrvError, NotFound
from kiisrv.jobs import Job, JobState
from kiisrv.recipe import diagnose, manifest
from kiisrv.recipe.planner import Plan
from kiisrv.settings import Settings
from kiisrv.signing import Signer
from kiisrv.store.artifacts import log_tail, publish, write_zip
from kiisrv.store.storage import Storage, now

log = logging.getLogger("kiisrv.runner")

RESTART_REASON = "the server restarted before this build finished; send the request again"


class Runner:
    def __init__(
        self, settings: Settings, storage: Storage, engine: Engine, signer: Signer | None = None
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.engine = engine
        # Signs each successful zip's manifest (recipe/manifest.py); None: no manifest.
        self.signer = signer

    @property
    def work_dir(self) -> Path:
        return self.settings.builds_dir / WORK_SUBDIR

    # -- one build -------------------------------------------------------------------

    async def stage(self, plan: Plan) -> None:
        await anyio.to_thread.run_sync(self._write_inputs, plan)

    async def run(self, plan: Plan, on_container: Callable[[str], None]) -> bytes:
        """The container's output; sets ``job.error`` when the build did not succeed."""
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
        clock = Phases()
        inputs = await anyio.to_thread.run_sync(
            input_archive, job.hash, _inputs(plan), self.settings.build_user
        )
        clock.mark("inputs")
        steps: dict[str, float] = {}
        cid = await self.engine.start(spec, inputs=inputs, inputs_at=IO_DIR, timings=steps)
        clock.split(steps)
        on_container(cid)
        try:
            try:
                status = await self.engine.wait(cid, self.settings.build_timeout)
                clock.mark("run")
            except EngineTimeout:
                await self.engine.kill(cid)
                output = await self.engine.logs(cid)
                # A fault, not the layout's failure (#15.2): a loaded host is slow for
                # every build. 503 + Retry-After, never kept as this layout's result.
                job.retry_later = True
                job.error = (
                    f"the build took longer than {self.settings.build_timeout:g} s and was "
                    f"stopped; end of the log:\n{log_tail(output)}"
                )
                return output
            output = await self.engine.logs(cid)
            clock.mark("logs")
            refused = await self._collect(cid, plan)
            clock.mark("output")
            if status != 0:
                job.error = f"the build failed (exit status {status}); end of the log:\n" + (
                    log_tail(output)
                )
                said = diagnose.explain(
                    output.decode("utf-8", "replace"), plan.files, _custom(plan)
                )
                if said:
                    job.error = f"{said}.\n\n{job.error}"
            if refused is not None:
                job.error = f"{refused}" + (f"\n\n{job.error}" if job.error else "")
            return output
        finally:
            # Removal must happen even when the build task is cancelled (shutdown).
            await asyncio.shield(self.engine.remove(cid))
            clock.mark("remove")
            log.info("build %s: %s", job.hash[:12], clock)

    async def _collect(self, cid: str, plan: Plan) -> str | None:
        """The build's output folder, out of the stopped container into the work folder
        (``_publish`` takes the zip from there); why it was not, if it was not.

        The archive is the build's: too large, or holding anything but plain files (a
        link to / would have the server write through it), and it is refused whole.
        """
        job = plan.job
        try:
            archive = await self.engine.get_archive(cid, OUT_DIR, MAX_ARCHIVE_BYTES)
            await anyio.to_thread.run_sync(self._extract, archive, self.work_dir / job.hash)
        except EngineNotFound:
            return None  # the build removed its output folder: no zip, said by _publish
        except UnsafeOutput as exc:
            log.warning("build %s: output refused: %s", job.hash, exc)
            return f"the build's output was refused: {exc}"
        except OSError as exc:
            log.error("could not store the output of build %s: %s", job.hash, exc)
            job.retry_later = True
            return f"could not store the build result: {exc.strerror or exc}"
        return None

    async def execute(
        self,
        plan: Plan,
        slot: AbstractAsyncContextManager[object],
        on_container: Callable[[str], None],
    ) -> bytes:
        """Stage the inputs, wait for a slot (held while it runs), run: what every queue
        does to build."""
        await self.stage(plan)
        async with slot:
            job = plan.job
            job.state = JobState.RUNNING
            job.started_at = now()
            await self.storage.run(self.storage.save_job, job)
            return await self.run(plan, on_container)

    async def finish(self, plan: Plan, output: bytes) -> None:
        """Publish the zip the container left, or write an error zip; record the job."""
        await anyio.to_thread.run_sync(self._publish, plan, output)
        job = plan.job
        job.finished_at = now()
        if job.started_at:
            job.duration_ms = int((job.finished_at - job.started_at).total_seconds() * 1000)
        await self.storage.run(self.storage.save_job, job)

    async def read_manifest(self, job: Job) -> tuple[bytes, bytes]:
        """``manifest.json`` and ``manifest.sig`` of a finished build's zip."""
        path = self.settings.builds_dir / job.zip_name

        def read() -> tuple[bytes, bytes]:
            with zipfile.ZipFile(path) as z:
                return z.read(manifest.NAME), z.read(manifest.SIGNATURE)

        try:
            return await anyio.to_thread.run_sync(read)
        except (OSError, KeyError, zipfile.BadZipFile):
            raise NotFound(f"build {job.hash} has no manifest") from None

    async def read_log(self, job: Job) -> bytes:
        """``log/build.log`` out of a finished build's zip."""
        path = self.settings.builds_dir / job.zip_name

        def read() -> bytes:
            with zipfile.ZipFile(path) as z:
                return z.read("log/build.log")

        try:
            return await anyio.to_thread.run_sync(read)
        except (OSError, KeyError, zipfile.BadZipFile):
            raise NotFound(f"the log of build {job.hash} is no longer kept") from None

    # -- after a restart ---------------------------------------------------------------

    async def recover(self) -> None:
        """No orphan containers, no half-written work, no build left without its zip."""
        await anyio.to_thread.run_sync(self._make_dirs)
        jobs = await self.storage.run(self.storage.unfinished_jobs)
        for job in jobs:
            await anyio.to_thread.run_sync(self._settle, job)
            await self.storage.run(self.storage.save_job, job)
        if jobs:
            log.warning("%d build(s) were cut short by a restart; settled", len(jobs))
        await anyio.to_thread.run_sync(self._clear_work)
        try:
            orphans = await self.engine.containers(self.settings.instance)
        except KiisrvError as exc:
            log.warning("could not look for orphan build containers: %s", exc.message)
            return
        for cid in orphans:
            log.warning("removing orphan build container %s", cid[:12])
            await self.engine.remove(cid)

    # -- blocking file work (worker threads) -----------------------------------------

    def _make_dirs(self) -> None:
        for d in (self.settings.config_dir, self.settings.builds_dir, self.work_dir):
            d.mkdir(parents=True, exist_ok=True)

    def _write_inputs(self, plan: Plan) -> None:
        """A record of the inputs (what the error zip of a build cut short by a restart
        holds; pruned with the zips), never mounted: the build gets them by the archive
        API (``run``)."""
        config = self.settings.config_dir / plan.job.hash
        shutil.rmtree(config, ignore_errors=True)
        config.mkdir(parents=True)
        for f in plan.files:
            (config / f.name).write_text(f.content, encoding="utf-8")
        (config / plan.layout_name).write_bytes(plan.layout_json)
        shutil.rmtree(self.work_dir / plan.job.hash, ignore_errors=True)

    def _extract(self, archive: bytes, work: Path) -> None:
        shutil.rmtree(work, ignore_errors=True)
        try:
            extract_output(archive, work)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)  # no half-written zip left to publish
            raise

    def _publish(self, plan: Plan, output: bytes) -> None:
        job = plan.job
        work = self.work_dir / job.hash
        made = work / f"{job.stem}.zip"
        made_error = work / f"{job.stem}_error.zip"
        try:
            if job.error is None and made.is_file():
                if self.signer is not None:
                    add_manifest(made, plan, self.signer)
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
                    write_zip(dest, _error_members(plan, output))
        except OSError as exc:
            log.error("could not publish build %s: %s", job.hash, exc)
            job.state = JobState.FAILED
            job.retry_later = True
            job.error = f"could not store the build result: {exc.strerror or exc}"
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _settle(self, job: Job) -> None:
        """A build a killed server had started: keep its zip, or explain in an error zip."""
        work = self.work_dir / job.hash
        made = work / f"{job.stem}.zip"
        job.finished_at = now()
        try:
            if made.is_file():
                publish(made, self.settings.builds_dir / f"{job.stem}.zip")
                job.state, job.error = JobState.SUCCEEDED, None
                return
            job.state, job.error = JobState.FAILED, RESTART_REASON
            config = self.settings.config_dir / job.hash
            members = {
                **{
                    p.name: p.read_bytes()
                    for p in sorted(config.glob("*"))
                    if p.is_file() and not p.is_symlink()
                },
                "log/build.log": RESTART_REASON.encode() + b"\n",
            }
            write_zip(self.settings.builds_dir / f"{job.stem}_error.zip", members)
            shutil.rmtree(config, ignore_errors=True)
        except OSError as exc:
            log.error("could not settle build %s: %s", job.hash, exc)
            job.state, job.error = JobState.FAILED, RESTART_REASON
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _clear_work(self) -> None:
        for leftover in self.work_dir.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)


def _inputs(plan: Plan) -> dict[str, bytes]:
    """What the build reads from its KLL folder: the .kll files and the layout JSON."""
    return {
        **{f.name: f.content.encode("utf-8") for f in plan.files},
        plan.layout_name: plan.layout_json,
    }


class Phases:
    """Where one build's time went on the server's side (bench/: the fixed cost)."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self._parts: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        t = time.monotonic()
        self._parts.append((name, t - self._last))
        self._last = t

    def split(self, steps: dict[str, float]) -> None:
        """The time since the last mark, as the ``steps`` measured within it."""
        self._parts.extend(steps.items())
        self._last = time.monotonic()

    def __str__(self) -> str:
        return ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in self._parts)


# Zip members kiisrv adds carry this date, not the clock's: two servers' zips of one
# build differ only where the build log and the signature do.
_FIXED_DATE = (1980, 1, 1, 0, 0, 0)


def add_manifest(zip_path: Path, plan: Plan, signer: Signer) -> None:
    """Adds ``manifest.json`` and its signature to the zip the container made (blocking).

    A zip that already holds one (a container that wrote its own) is left without:
    the manifest is the server's word, never the build's."""
    with zipfile.ZipFile(zip_path) as z:
        names = set(z.namelist())
        if manifest.NAME in names or manifest.SIGNATURE in names:
            raise OSError("the build's zip already holds a manifest")
        firmware = {n: z.read(n) for n in manifest.FIRMWARE_FILES if n in names}
        log_text = z.read("log/build.log") if "log/build.log" in names else b""
    built = manifest.build(plan, firmware, build_log=log_text.decode("utf-8", "replace"))
    text = manifest.encode(built)
    signature = json.dumps(signer.sign(text), sort_keys=True, indent=1).encode() + b"\n"
    with zipfile.ZipFile(zip_path, "a", zipfile.ZIP_DEFLATED) as z:
        for name, data in ((manifest.NAME, text), (manifest.SIGNATURE, signature)):
            z.writestr(zipfile.ZipInfo(name, _FIXED_DATE), data, zipfile.ZIP_DEFLATED)


def _error_members(plan: Plan, output: bytes) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    for f in plan.files:
        members[f.name] = f.content.encode()
        members[f"kll/{f.name}"] = f.content.encode()
    members[plan.layout_name] = plan.layout_json
    members["log/build.log"] = output or (plan.job.error or "").encode()
    return members


def _custom(plan: Plan) -> dict[int, str]:
    """The layout's custom KLL by layer number, to place an error inside it."""
    try:
        custom = json.loads(plan.layout_json).get("custom") or {}
        return {int(k): v for k, v in custom.items() if isinstance(v, str)}
    except (ValueError, AttributeError, TypeError):
        return {}

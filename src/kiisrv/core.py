"""The one object a kiisrv server is: built from Settings, owning every part.

Tests and the CLI build it the same way; nothing is created at import time. A build
request goes: ``catalog`` (which image) -> ``planner`` (what to build) -> ``queue``
(when, shared with identical requests) -> ``runner`` (the container). ``build`` is the
path of an HTTP request; ``plan`` and ``queue.submit`` are there for callers without
one (the canary): ``await core.queue.submit(await core.plan(body))`` is a finished job.

A cache hit must be cheap (it is most requests), so the identity of a request body
already seen is remembered by the digest of its bytes: no validation, no KLL, no
database on the way to the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio.to_thread

from kiisrv import assembly, privacy
from kiisrv.clients import client_of
from kiisrv.errors import NotFound, StorageError, Unavailable, UnknownVersion
from kiisrv.jobs import Job, JobState
from kiisrv.recipe.layouts import BaseFile, LayoutStore
from kiisrv.recipe.planner import Plan, Planner
from kiisrv.recipe.versions import DEFAULT_VERSIONS, Available
from kiisrv.settings import Settings
from kiisrv.store.artifacts import hash_of
from kiisrv.store.journal import StatsRecorder
from kiisrv.store.retention import PruneResult, prune_forever
from kiisrv.store.storage import now

log = logging.getLogger("kiisrv")

# An answered zip is kept from the pruner this long, so the client can download it.
ANSWER_GRACE = 15 * 60.0
_MEMO_SIZE = 1024


@dataclass(frozen=True)
class Outcome:
    """A build request's answer, and what its statistics row needs."""

    job: Job
    cached: bool
    board: str
    variant: str
    layers: int
    container: str
    duration_ms: int | None

    @property
    def success(self) -> bool:
        return self.job.state is JobState.SUCCEEDED

    @property
    def filename(self) -> str:
        return f"./tmp/{self.job.zip_name}"


@dataclass(frozen=True)
class _Seen:
    """What a cache hit needs of a request body already planned once."""

    hash: str
    stem: str
    board: str
    variant: str
    layers: int
    base_file: BaseFile | None = None


class Kiisrv:
    def __init__(self, settings: Settings, parts: assembly.Server | None = None) -> None:
        self.settings = settings
        parts = parts or assembly.server(settings)
        self.storage = parts.storage
        self.engine = parts.engine
        self.catalog = parts.catalog
        self.runner = parts.runner
        self.results = parts.results
        self.queue = parts.queue
        self.layouts = LayoutStore(settings.layouts_dir)
        self.planner = Planner(self.layouts)
        self.stats = StatsRecorder(self.storage, settings.data_dir / "requests.journal")
        self.client_key = privacy.load_key_file(settings.client_key_path)
        # With a queue the window is in its Redis, shared by every API server.
        self.limiter = assembly.limiter(settings, self.client_key, parts.redis)
        self._answered: dict[str, float] = {}
        self._seen: OrderedDict[tuple[str, bytes], _Seen] = OrderedDict()
        self._envs: OrderedDict[bytes, str] = OrderedDict()
        self._pruner: asyncio.Task[None] | None = None

    # -- builds ------------------------------------------------------------------------

    async def target(self, body: Any) -> Available:
        """The image a request names; a malformed request is reported before the engine."""
        env = body.get("env", "latest") if isinstance(body, dict) else None
        if not isinstance(env, str):
            self.planner.validate(body)
        try:
            return await self.catalog.resolve(env)  # type: ignore[arg-type]
        except (Unavailable, UnknownVersion):
            self.planner.validate(body)  # a broken layout says so first, as it always did
            raise

    async def plan(self, body: Any) -> Plan:
        return self.planner.plan(body, await self.target(body))

    def pseudonym(self, address: str) -> str:
        """What is kept of a client address (privacy.py)."""
        return privacy.pseudonym(self.client_key, address)

    async def build_raw(
        self, raw: bytes, parse: Callable[[bytes], Any], client: str = ""
    ) -> Outcome:
        """A build request as its bytes. A body seen before and already built is
        answered from its digest alone: parsing a 46 KB layout is most of a cache hit."""
        digest = hashlib.sha256(raw).digest()
        env = self._envs.get(digest)
        if env is not None:
            target = await self.catalog.resolve(env)
            seen = self._memo((target.image_id, digest))
            hit = self._cached(seen, target) if seen is not None else None
            if hit is not None:
                return hit
        return await self.build(parse(raw), raw, client, digest=digest)

    async def build(
        self,
        body: Any,
        raw: bytes | None = None,
        client: str = "",
        digest: bytes | None = None,
    ) -> Outcome:
        """One build request: a cached zip, or the (shared) build's finished job.

        ``client`` (an address) is counted against the rate limit when the request
        would start a build: never for a cache hit or a build already in flight.
        """
        started = time.monotonic()
        target = await self.target(body)
        if raw is not None and digest is None:
            digest = hashlib.sha256(raw).digest()
        key = (target.image_id, digest) if digest is not None else None
        seen = self._memo(key) if key else None
        plan: Plan | None = None
        if seen is None:
            plan = self.planner.plan(body, target)
            seen = _Seen(
                plan.job.hash,
                plan.job.stem,
                plan.board,
                plan.variant,
                plan.layers,
                plan.base_file,
            )
            if key:
                self._remember(key, seen, body.get("env", "latest"))
        hit = self._cached(seen, target)
        if hit is not None:
            return hit
        if plan is None:
            plan = self.planner.plan(body, target)
        if client and self.queue.current(plan.job.hash) is None:
            await self.limiter.take(client)
        if client:  # whose turns it takes (fairness.py)
            prefix = self.settings.rate_limit_ipv6_prefix
            plan = replace(plan, client=client_of(self.client_key, client, prefix))
        job = await self.queue.submit(plan)
        self._answer(job.hash)
        duration = int((time.monotonic() - started) * 1000)
        return self._outcome(job, seen, target, cached=False, duration=duration)

    def _memo(self, key: tuple[str, bytes]) -> _Seen | None:
        """A body planned before, while its base layout file is unchanged.

        One stat, not a load: this is on the path of every cache hit. A changed base
        (``kiisrv layouts fetch``) means another hash, so the body is planned again.
        """
        seen = self._seen.get(key)
        if seen is not None and seen.base_file is not None and not seen.base_file.unchanged():
            del self._seen[key]
            return None
        return seen

    def _cached(self, seen: _Seen, target: Available) -> Outcome | None:
        """The answer for a build finished before (and not being rebuilt), if any."""
        finished = self.settings.builds_dir / f"{seen.stem}.zip"
        if self.queue.current(seen.hash) is not None or not finished.is_file():
            return None
        self.stats.touch(finished)
        self._answer(seen.hash)
        job = Job(
            seen.hash,
            seen.stem,
            target.version.name,
            target.version.container,
            state=JobState.SUCCEEDED,
        )
        return self._outcome(job, seen, target, cached=True, duration=None)

    def _outcome(
        self, job: Job, seen: _Seen, target: Available, *, cached: bool, duration: int | None
    ) -> Outcome:
        return Outcome(
            job, cached, seen.board, seen.variant, seen.layers, target.version.container, duration
        )

    def _remember(self, key: tuple[str, bytes], seen: _Seen, env: Any) -> None:
        self._seen[key] = seen
        if isinstance(env, str):
            self._envs[key[1]] = env  # which version the body asked for
        if len(self._seen) > _MEMO_SIZE:
            self._seen.popitem(last=False)
        while len(self._envs) > _MEMO_SIZE:
            self._envs.popitem(last=False)

    def _answer(self, hash_: str) -> None:
        self._answered[hash_] = time.monotonic() + ANSWER_GRACE

    async def status(self, hash_: str) -> Job | None:
        return (
            self.queue.current(hash_)
            or await self.results.job(hash_)
            or await self.queue.find(hash_)
        )

    async def log(self, hash_: str) -> bytes:
        """The build's output so far (running) or its build log (finished)."""
        job = await self.status(hash_)
        if job is None:
            raise NotFound(f"no build {hash_!r}")
        live = await self.queue.live_log(hash_)
        if live is not None:
            return live
        if not job.state.finished:
            return b""  # queued: nothing has run yet
        with contextlib.suppress(NotFound):
            await self.artifact(job.zip_name)  # a copy here, if the cluster has it
        return await self.runner.read_log(job)

    async def manifest(self, hash_: str) -> tuple[bytes, bytes]:
        """A successful build's ``manifest.json`` and ``manifest.sig``, from its zip."""
        job = await self.status(hash_)
        if job is None or job.state is not JobState.SUCCEEDED:
            raise NotFound(f"no firmware of build {hash_!r}")
        await self.artifact(job.zip_name)  # a copy here, if the cluster has it
        return await self.runner.read_manifest(job)

    async def artifact(self, name: str) -> Path:
        """The file of ``GET /tmp/<name>``: this server's copy, or one the results make
        (a cluster's store: a load balancer sends downloads to any API server). It is
        kept from this server's pruner a while, like an answer."""
        path = await self.results.path(name)
        hash_ = hash_of(name)
        if hash_:
            self._answer(hash_)
        return path

    # -- retention ---------------------------------------------------------------------

    def in_use(self) -> set[str]:
        """Builds in flight, and zips answered a moment ago and perhaps not yet fetched."""
        now = time.monotonic()
        for hash_, until in list(self._answered.items()):
            if until < now:
                self._answered.pop(hash_, None)
        return self.queue.in_use() | set(self._answered)

    def prune(self, dry_run: bool = False) -> PruneResult:
        """Old build outputs and their rows, and statistics rows past their retention."""
        s = self.settings
        if s.requests_retention_days > 0 and not dry_run:
            before = now() - timedelta(days=s.requests_retention_days)
            try:
                gone = self.storage.prune_requests(before)
            except StorageError as exc:  # the statistics database down: prune the files anyway
                log.error("statistics rows not pruned: %s", exc.message)
                gone = 0
            if gone:
                log.info("deleted %d statistics rows older than %s", gone, before.date())
        result = self.results.prune_files(self.in_use(), dry_run)
        if result.rows:
            log.info(
                "deleted %d Builds rows (outputs pruned, or past their retention)", result.rows
            )
        return result

    async def _prune(self) -> None:
        result = await anyio.to_thread.run_sync(self.prune)
        if result.removed:
            log.info("pruned %d builds, %d bytes", result.removed, result.freed_bytes)
        gone = await self.results.prune_shared(self.in_use())
        if gone:
            log.info("pruned %d results from the result store", gone)

    # -- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        await self.storage.run(self.storage.seed_versions, DEFAULT_VERSIONS)
        try:
            hidden = await self.storage.run(
                self.storage.pseudonymise, self.pseudonym, privacy.is_address
            )
        except StorageError as exc:  # a shared statistics database down: serve builds anyway
            log.error("raw client addresses not checked (next start will): %s", exc.message)
            hidden = 0
        if hidden:
            log.info("replaced %d raw client addresses in the statistics by keyed hashes", hidden)
        await self.runner.recover()
        await self.stats.start()
        if self.settings.prune_interval > 0:
            self._pruner = asyncio.create_task(
                prune_forever(self.settings.prune_interval, self._prune, "kiisrv"), name="prune"
            )
        if not await anyio.to_thread.run_sync(self.settings.layouts_dir.is_dir):
            log.warning("layouts folder %s does not exist", self.settings.layouts_dir)
        log.info(
            "kiisrv ready: data in %s, layouts in %s, engine %s (%s)",
            self.settings.data_dir,
            self.settings.layouts_dir,
            self.settings.docker_url,
            "reachable" if await self.engine.ping() else "NOT reachable",
        )

    async def stop(self) -> None:
        """Every part is shut down, whatever the others do."""
        try:
            if self._pruner is not None:
                self._pruner.cancel()
                with contextlib.suppress(BaseException):
                    await self._pruner
            await self.queue.close()  # a cluster's queue closes its results too
        finally:
            try:
                await self.stats.stop()
            finally:
                await anyio.to_thread.run_sync(self.storage.close)
                self.engine.close()

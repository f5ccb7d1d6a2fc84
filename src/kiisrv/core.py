"""The one object a kiisrv server is: built from Settings, owning every part.

Tests and the CLI build it the same way; nothing is created at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import anyio.to_thread

from kiisrv.builder import Builder
from kiisrv.catalog import Catalog
from kiisrv.engine import Engine
from kiisrv.layouts import LayoutStore
from kiisrv.retention import PruneResult, prune
from kiisrv.settings import Settings
from kiisrv.storage import Storage
from kiisrv.versions import DEFAULT_VERSIONS

log = logging.getLogger("kiisrv")


class Kiisrv:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.storage = Storage(settings.stats_db, settings.config_db)
        self.storage.seed_versions(DEFAULT_VERSIONS)
        self.engine = Engine(settings.docker_url, settings.engine_timeout)
        self.layouts = LayoutStore(settings.layouts_dir)
        self.catalog = Catalog(settings, self.storage, self.engine)
        self.builder = Builder(settings, self.storage, self.engine, self.catalog, self.layouts)
        self._pruner: asyncio.Task[None] | None = None

    def prune(self, dry_run: bool = False) -> PruneResult:
        s = self.settings
        return prune(
            s.config_dir,
            s.builds_dir,
            max_age=s.retention_days * 86400,
            max_bytes=s.retention_bytes,
            in_use=self.builder.in_use() | set(self.storage.unfinished()),
            dry_run=dry_run,
        )

    async def _prune_forever(self) -> None:
        while True:
            try:
                result = await anyio.to_thread.run_sync(self.prune)
                if result.removed:
                    log.info("pruned %d builds, %d bytes", result.removed, result.freed_bytes)
            except OSError as exc:
                log.error("pruning failed: %s", exc)
            await asyncio.sleep(self.settings.prune_interval)

    async def start(self) -> None:
        await self.builder.recover()
        if self.settings.prune_interval > 0:
            self._pruner = asyncio.create_task(self._prune_forever(), name="prune")
        if not self.settings.layouts_dir.is_dir():
            log.warning("layouts folder %s does not exist", self.settings.layouts_dir)
        log.info(
            "kiisrv ready: data in %s, layouts in %s, engine %s (%s)",
            self.settings.data_dir,
            self.settings.layouts_dir,
            self.settings.docker_url,
            "reachable" if self.engine.ping() else "NOT reachable",
        )

    async def stop(self) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
        await self.builder.shutdown()
        self.storage.close()

"""The one object a kiisrv server is: built from Settings, owning every part.

Tests and the CLI build it the same way; nothing is created at import time.
"""

from __future__ import annotations

import logging

from kiisrv.builder import Builder
from kiisrv.catalog import Catalog
from kiisrv.engine import Engine
from kiisrv.layouts import LayoutStore
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

    async def start(self) -> None:
        await self.builder.recover()
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
        await self.builder.shutdown()
        self.storage.close()

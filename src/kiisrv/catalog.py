"""Which versions can be built here: the Versions table joined with the local images.

A version is offered only while its controller image is present, so ``docker load``
of a new image makes it appear without a restart. The image list and the Versions
table are cached for a few seconds: a build request (a cache hit above all) should not
cost an Engine call and a database read. Release details are the images' labels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from kiisrv.engine import Engine, ImageInfo
from kiisrv.errors import UnknownVersion
from kiisrv.settings import Settings
from kiisrv.storage import Storage
from kiisrv.versions import ReleaseInfo, Version, release_from_labels


@dataclass(frozen=True)
class Available:
    version: Version
    image: str
    image_id: str
    info: ReleaseInfo | None


class Catalog:
    def __init__(self, settings: Settings, storage: Storage, engine: Engine, ttl: float = 5.0):
        self.settings = settings
        self.storage = storage
        self.engine = engine
        self.ttl = ttl
        self._available: dict[str, Available] = {}
        self._at = -1e9

    def image_name(self, version: Version) -> str:
        return f"{self.settings.image_prefix}{version.container}:{self.settings.image_tag}"

    async def available(self) -> dict[str, Available]:
        if time.monotonic() - self._at > self.ttl:
            images = await self.engine.images()
            versions = await self.storage.run(self.storage.versions)
            self._available = self._join(versions, images)
            self._at = time.monotonic()
        return self._available

    def _join(self, versions: list[Version], images: dict[str, ImageInfo]) -> dict[str, Available]:
        found: dict[str, Available] = {}
        for version in versions:
            image = self.image_name(version)
            if image in images:
                info = images[image]
                found[version.name] = Available(
                    version, image, info.id, release_from_labels(info.labels)
                )
        return found

    async def resolve(self, env: str) -> Available:
        available = await self.available()
        if env not in available:
            offered = ", ".join(available) or "none: no controller image is installed"
            raise UnknownVersion(f"env: version {env!r} is not available here (offered: {offered})")
        return available[env]

"""Which versions can be built here: the Versions table joined with the local images.

A version is offered only while its controller image is present, so ``docker load``
of a new image makes it appear without a restart (the image list is cached for a few
seconds). Release details come from the image itself and are cached by image id.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import anyio.to_thread

from kiisrv.engine import Engine, ImageInfo
from kiisrv.errors import UnknownVersion
from kiisrv.settings import Settings
from kiisrv.storage import Storage
from kiisrv.versions import VERSION_FILE, ReleaseInfo, Version, release_info


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
        self._images: dict[str, ImageInfo] = {}
        self._images_at = -1e9
        self._info: dict[str, ReleaseInfo | None] = {}

    def image_name(self, version: Version) -> str:
        return f"{self.settings.image_prefix}{version.container}:{self.settings.image_tag}"

    async def _local_images(self) -> dict[str, ImageInfo]:
        if time.monotonic() - self._images_at > self.ttl:
            self._images = await anyio.to_thread.run_sync(self.engine.images)
            self._images_at = time.monotonic()
        return self._images

    async def _release(self, image: str, image_id: str) -> ReleaseInfo | None:
        if image_id not in self._info:
            raw = await anyio.to_thread.run_sync(self.engine.read_file, image, VERSION_FILE)
            self._info[image_id] = release_info(raw)
        return self._info[image_id]

    async def available(self) -> dict[str, Available]:
        images = await self._local_images()
        found: dict[str, Available] = {}
        for version in self.storage.versions():
            image = self.image_name(version)
            if image in images:
                image_id = images[image].id
                info = await self._release(image, image_id)
                found[version.name] = Available(version, image, image_id, info)
        return found

    async def resolve(self, env: str) -> Available:
        available = await self.available()
        if env not in available:
            offered = ", ".join(available) or "none: no controller image is installed"
            raise UnknownVersion(f"env: version {env!r} is not available here (offered: {offered})")
        return available[env]

"""Which versions can be built here: the Versions table joined with the local images.

A version is offered only while its controller image is present, so ``docker load``
of a new image makes it appear without a restart. The image list and the Versions
table are cached for a few seconds: a build request (a cache hit above all) should not
cost an Engine call and a database read.

Release details are the image's ``io.kiisrv.release.*`` labels when it has them (no
Engine call beyond the image list). An image built with ``docker compose build`` alone
has none: its ``/controller/kiisrv-version.json`` is then copied out of it once, through
a container created and removed, never started (``Engine.read_file``), and remembered
by image id, in memory and in ``config.db`` (ImageReleases). An image never changes
under its id, so what was read never goes stale; a new build is a new id, read once.
A file that is missing or malformed means no details (null), logged once; an engine
that fails the read is tried again after ``RETRY_AFTER`` seconds, and never fails
the image list: release details are not worth a refused build.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Iterable

from kiisrv.build.buildio import UnsafeOutput, single_file
from kiisrv.build.containers import release_reader_spec
from kiisrv.build.engine import Engine, ImageFile, ImageInfo
from kiisrv.errors import KiisrvError, StorageError, UnknownVersion
from kiisrv.recipe.versions import (
    MAX_RELEASE_FILE,
    RELEASE_FILE,
    Available,
    ReleaseInfo,
    Version,
    release_from_file,
    release_from_labels,
)
from kiisrv.settings import Settings
from kiisrv.store.storage import Storage

log = logging.getLogger("kiisrv.catalog")

# Seconds before a release file the engine failed to give is asked for again.
RETRY_AFTER = 60.0
# The archive of one small file: its tar headers, the file, the end blocks.
_MAX_ARCHIVE = MAX_RELEASE_FILE + 16 * 1024
_UNUSABLE = b""  # stored for a path that is no plain file of at most MAX_RELEASE_FILE
_RELEASE_NAME = RELEASE_FILE.rsplit("/", 1)[1]


class Catalog:
    def __init__(self, settings: Settings, storage: Storage, engine: Engine, ttl: float = 5.0):
        self.settings = settings
        self.storage = storage
        self.engine = engine
        self.ttl = ttl
        self._available: dict[str, Available] = {}
        self._at = -1e9
        # Release details of images without labels, by image id (None: the image has
        # none); the ids the engine failed to read, with when to ask again.
        self._releases: dict[str, ReleaseInfo | None] = {}
        self._failed: dict[str, float] = {}
        self._reading = asyncio.Lock()

    def image_name(self, version: Version) -> str:
        return f"{self.settings.image_prefix}{version.container}:{self.settings.image_tag}"

    async def available(self) -> dict[str, Available]:
        if time.monotonic() - self._at > self.ttl:
            images = await self.engine.images()
            versions = await self.storage.run(self.storage.versions)
            await self._read_releases(
                (self.image_name(v), images[self.image_name(v)])
                for v in versions
                if self.image_name(v) in images
            )
            self._available = self._join(versions, images)
            self._at = time.monotonic()
        return self._available

    def _join(self, versions: list[Version], images: dict[str, ImageInfo]) -> dict[str, Available]:
        found: dict[str, Available] = {}
        for version in versions:
            image = self.image_name(version)
            if image in images:
                info = images[image]
                found[version.name] = Available(version, image, info.id, self.release(info))
        return found

    def release(self, image: ImageInfo) -> ReleaseInfo | None:
        """The image's labels when they give the details, else its file as read."""
        return release_from_labels(image.labels) or self._releases.get(image.id)

    # -- release files of images without labels ------------------------------------------

    async def _read_releases(self, images: Iterable[tuple[str, ImageInfo]]) -> None:
        """Fills ``_releases`` for the images the labels say nothing of: from config.db,
        else from the image itself. One reader at a time: two refreshes never read one
        image twice."""
        wanted = {
            info.id: name
            for name, info in images
            if release_from_labels(info.labels) is None and info.id not in self._releases
        }
        if not wanted:
            return
        async with self._reading:
            now = time.monotonic()
            todo = {
                i: n
                for i, n in wanted.items()
                if i not in self._releases and self._failed.get(i, 0.0) <= now
            }
            if not todo:
                return
            try:
                stored = await self.storage.run(self.storage.image_releases, todo)
            except StorageError as exc:  # then read them again: a few containers
                log.warning("could not look up release files read before: %s", exc.message)
                stored = {}
            for image_id, raw in stored.items():
                self._remember(image_id, todo[image_id], raw)
            for image_id, name in todo.items():
                if image_id not in stored:
                    await self._read_image(image_id, name)

    async def _read_image(self, image_id: str, name: str) -> None:
        """Reads one image's release file, stores and judges it; an engine failure is
        logged and asked again after RETRY_AFTER."""
        spec = release_reader_spec(
            self.settings, image=name, image_id=image_id, suffix=secrets.token_hex(4)
        )
        try:
            read = await self.engine.read_file(spec, RELEASE_FILE, _MAX_ARCHIVE)
        except UnsafeOutput as exc:  # more than any release file: this image's for good
            read, why = ImageFile(image_id, None), str(exc)
            raw: bytes | None = _UNUSABLE
        except KiisrvError as exc:
            self._failed[image_id] = time.monotonic() + RETRY_AFTER
            log.warning(
                "image %s (%s): could not read %s, trying again in %.0f s: %s",
                name,
                image_id[:19],
                RELEASE_FILE,
                RETRY_AFTER,
                exc.message,
            )
            return
        else:
            raw, why = read.archive, ""
            if raw is not None:
                try:
                    raw = single_file(raw, _RELEASE_NAME, max_bytes=MAX_RELEASE_FILE)
                except UnsafeOutput as exc:  # a link, a folder, too large: for good too
                    raw, why = _UNUSABLE, str(exc)
        if read.image_id != image_id:
            # The name moved to another image between the list and the create: what was
            # read is that image's, remembered under its id; the next refresh lists it.
            log.info("image %s changed while its release file was read", name)
            image_id = read.image_id
        self._failed.pop(image_id, None)
        try:
            await self.storage.run(self.storage.save_image_release, image_id, raw)
        except StorageError as exc:  # remembered here all the same
            log.warning("could not store the release file of %s: %s", name, exc.message)
        self._remember(image_id, name, raw, why)

    def _remember(self, image_id: str, name: str, raw: bytes | None, why: str = "") -> None:
        """Judges a release file (as read now, or stored before), once per process."""
        info: ReleaseInfo | None = None
        if raw is None:
            why = "the image has none"
        elif raw == _UNUSABLE:
            why = why or "empty, or no plain file of a release file's size"
        else:
            try:
                info = release_from_file(raw)
            except ValueError as exc:
                why = f"malformed: {exc}"
        if info is None:
            log.warning(
                "image %s (%s) has no release labels and no usable %s (%s): its versions"
                " show null; rebuild it from docker/controller/Dockerfile",
                name,
                image_id[:19],
                RELEASE_FILE,
                why,
            )
        self._releases[image_id] = info

    async def resolve(self, env: str) -> Available:
        available = await self.available()
        if env not in available:
            offered = ", ".join(available) or "none: no controller image is installed"
            raise UnknownVersion(f"env: version {env!r} is not available here (offered: {offered})")
        return available[env]

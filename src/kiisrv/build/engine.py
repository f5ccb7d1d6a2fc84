"""The Docker Engine, through one door.

Every API call goes through ``Engine._call``, which owns the client (created lazily,
so the server starts while the daemon is down, and recreated after it comes back),
the timeout, the log line and the translation of docker/requests exceptions into
kiisrv's own (``errors.py``). Cleanup calls treat 404 and 409 as already done.

The docker SDK blocks, and ``wait`` blocks for a whole build. So the methods are
coroutines that run the SDK on the engine's *own* thread pool (as jupyterhub's
dockerspawner does), sized for every running build plus spare threads: builds can
never take the threads that file downloads, health checks and the database need
(anyio's default pool of 40, which 40 waiting builds used to fill).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import docker
import docker.errors
import requests.exceptions
import urllib3.exceptions
from docker import DockerClient
from docker.types import LogConfig, Mount

from kiisrv.build.buildio import UnsafeOutput
from kiisrv.build.containers import LABEL_INSTANCE, NOT_OURS, ContainerSpec
from kiisrv.errors import (
    EngineConflict,
    EngineError,
    EngineNotFound,
    EngineTimeout,
    EngineUnavailable,
)

log = logging.getLogger("kiisrv.engine")
T = TypeVar("T")


@dataclass(frozen=True)
class ImageInfo:
    id: str
    tags: tuple[str, ...]
    labels: Mapping[str, str] = field(default_factory=dict)


def _is_read_timeout(exc: BaseException) -> bool:
    """requests raises ReadTimeout over TCP, but a wrapped urllib3 error over a unix socket."""
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return True
    return any(isinstance(arg, urllib3.exceptions.ReadTimeoutError) for arg in exc.args)


def _create(c: DockerClient, spec: ContainerSpec) -> str:
    """The container of ``spec``, created (not started): every container kiisrv makes,
    shaped as the socket proxy's create rule expects (``proxy/create.py check_create``)."""
    host_config = c.api.create_host_config(
        mounts=[
            Mount(m.target, m.source, type=m.type, read_only=m.read_only)  # type: ignore[arg-type]
            for m in spec.mounts
        ],
        mem_limit=spec.mem_limit,
        memswap_limit=spec.mem_limit,
        nano_cpus=spec.nano_cpus,
        pids_limit=spec.pids_limit,
        tmpfs=spec.tmpfs,
        network_mode="none" if spec.network_disabled else None,
        read_only=spec.read_only,
        cap_drop=["ALL"],
        # Only a build running as root needs them: /controller is the build uid's.
        cap_add=None if spec.user else ["CHOWN", "DAC_OVERRIDE", "FOWNER"],
        security_opt=["no-new-privileges"],
        log_config=LogConfig(
            type=LogConfig.types.JSON,
            config={"max-size": spec.log_max_size, "max-file": str(spec.log_max_files)},
        ),
    )
    cid: str = c.api.create_container(
        spec.image,
        command=spec.command,
        environment=spec.environment,
        labels=spec.labels,
        name=spec.name,
        user=spec.user,
        host_config=host_config,
        network_disabled=spec.network_disabled,
    )["Id"]
    return cid


@dataclass(frozen=True)
class ImageFile:
    """A file read out of an image: the id of the image the container was really made
    from (its name may have moved meanwhile), and the tar the archive API answered,
    None when the image has no such path."""

    image_id: str
    archive: bytes | None


# Threads beyond one per running build: image lists, logs, starts, removals, pings.
SPARE_THREADS = 8


class Engine:
    def __init__(self, base_url: str, timeout: float, max_builds: int = 1) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._client: DockerClient | None = None
        self._lock = threading.Lock()
        # Calls the engine failed (an error answer, or no answer at all): /metrics.
        self.errors = 0
        self._executor = ThreadPoolExecutor(
            max_workers=max_builds + SPARE_THREADS, thread_name_prefix="kiisrv-engine"
        )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._drop_client()

    def _get_client(self) -> DockerClient:
        with self._lock:
            if self._client is None:
                self._client = DockerClient(
                    base_url=self.base_url,
                    version="auto",
                    timeout=int(self.timeout),
                    max_pool_size=32,
                )
            return self._client

    def _drop_client(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    async def _call(self, what: str, fn: Callable[[DockerClient], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call_blocking, what, fn)

    def _call_blocking(self, what: str, fn: Callable[[DockerClient], T]) -> T:
        start = time.monotonic()
        try:
            result = fn(self._get_client())
        except docker.errors.NotFound as exc:
            raise EngineNotFound(f"{what}: {exc.explanation}") from exc
        except docker.errors.APIError as exc:
            if exc.status_code == 403 and NOT_OURS in str(exc.explanation):
                # The socket proxy's one answer for a container that is not exactly one
                # of ours: for a container kiisrv made, that it is gone.
                raise EngineNotFound(f"{what}: {exc.explanation}") from exc
            if exc.status_code == 409:
                raise EngineConflict(f"{what}: {exc.explanation}") from exc
            log.warning("engine %s failed: %s", what, exc)
            self.errors += 1
            raise EngineError(f"Docker engine error during {what}: {exc.explanation}") from exc
        except (requests.exceptions.ConnectionError, docker.errors.DockerException) as exc:
            if _is_read_timeout(exc):
                raise EngineTimeout(f"{what}: no answer in time") from exc
            self._drop_client()
            self.errors += 1
            log.warning("engine unreachable during %s: %s", what, exc)
            raise EngineUnavailable(
                f"the Docker engine at {self.base_url} cannot be reached ({what})"
            ) from exc
        log.debug("engine %s took %.3fs", what, time.monotonic() - start)
        return result

    # -- queries ---------------------------------------------------------------------

    async def ping(self) -> bool:
        try:
            return bool(await self._call("ping", lambda c: c.ping()))
        except (EngineError, EngineUnavailable):
            return False

    async def images(self) -> dict[str, ImageInfo]:
        """Every local image by each of its ``repo:tag`` names, with its labels."""

        def fetch(c: DockerClient) -> dict[str, ImageInfo]:
            found: dict[str, ImageInfo] = {}
            for raw in c.api.images():
                tags = tuple(t for t in raw.get("RepoTags") or () if t != "<none>:<none>")
                info = ImageInfo(raw["Id"], tags, raw.get("Labels") or {})
                for tag in tags:
                    found[tag] = info
            return found

        return await self._call("list images", fetch)

    async def containers(self, instance: str) -> list[str]:
        """Ids of this server's build containers, running or not."""
        return await self._call(
            "list build containers",
            lambda c: [
                x["Id"]
                for x in c.api.containers(
                    all=True, filters={"label": f"{LABEL_INSTANCE}={instance}"}
                )
            ],
        )

    # -- an image's file ---------------------------------------------------------------

    async def read_file(self, spec: ContainerSpec, path: str, max_bytes: int) -> ImageFile:
        """One file of ``spec.image``, through a container created from it and never
        started (no process of the image runs): the file copied out by the archive API
        as a tar, the container removed whatever happens. UnsafeOutput past
        ``max_bytes``; EngineNotFound when the image or the container went away."""

        def copy(c: DockerClient, cid: str) -> bytes | None:
            try:
                stream, _ = c.api.get_archive(cid, path, chunk_size=64 * 1024)
            except docker.errors.NotFound:
                return None  # the path, or the container: the inspect below tells which
            return _capped(stream, max_bytes, path)

        def run(c: DockerClient) -> ImageFile:
            cid = _create(c, spec)
            try:
                archive = copy(c, cid)
                # After the copy: a container still there had no such path.
                image_id = str(c.api.inspect_container(cid)["Image"])
            finally:
                with contextlib.suppress(docker.errors.DockerException):
                    c.api.remove_container(cid, force=True, v=True)
            return ImageFile(image_id, archive)

        return await self._call(f"read {path} of {spec.image}", run)

    # -- one build -------------------------------------------------------------------

    async def start(
        self,
        spec: ContainerSpec,
        *,
        inputs: bytes,
        inputs_at: str,
        timings: dict[str, float] | None = None,
    ) -> str:
        """Create, upload ``inputs`` (a tar) into ``inputs_at``, start; a container that
        fails any step is removed with its volumes, not left behind. ``timings`` gets
        each step's seconds (create, archive in, start: the bench's phases).

        The inputs go in by the archive API, not a bind mount: no host path is named,
        so none can be swapped for a symlink (``containers.py``).
        """
        took = timings if timings is not None else {}

        def run(c: DockerClient) -> str:
            t = time.monotonic()
            cid = _create(c, spec)
            took["create"], t = time.monotonic() - t, time.monotonic()
            try:
                c.api.put_archive(cid, inputs_at, inputs)
                took["archive in"], t = time.monotonic() - t, time.monotonic()
                c.api.start(cid)
                took["start"] = time.monotonic() - t
            except BaseException:
                with contextlib.suppress(docker.errors.DockerException):
                    c.api.remove_container(cid, force=True, v=True)
                raise
            return cid

        return await self._call(f"start {spec.name}", run)

    async def wait(self, cid: str, timeout: float) -> int:
        """The exit status; EngineTimeout when the build outlives ``timeout``."""

        def run(c: DockerClient) -> int:
            result = c.api.wait(cid, timeout=max(1, int(timeout)))
            return int(result.get("StatusCode", -1))

        return await self._call(f"wait {cid[:12]}", run)

    async def logs(self, cid: str) -> bytes:
        return await self._call(
            f"logs {cid[:12]}", lambda c: c.api.logs(cid, stdout=True, stderr=True)
        )

    async def get_archive(self, cid: str, path: str, max_bytes: int) -> bytes:
        """A folder of a (stopped) container as a tar; UnsafeOutput past ``max_bytes``,
        read no further: the build decided how much it wrote."""

        def run(c: DockerClient) -> bytes:
            stream, _ = c.api.get_archive(cid, path, chunk_size=1024 * 1024)
            return _capped(stream, max_bytes, "the output")

        return await self._call(f"get archive {cid[:12]}", run)

    async def kill(self, cid: str) -> None:
        with contextlib.suppress(EngineNotFound, EngineConflict):
            await self._call(f"kill {cid[:12]}", lambda c: c.api.kill(cid))

    async def remove(self, cid: str) -> None:
        with contextlib.suppress(EngineNotFound, EngineConflict):
            await self._call(
                f"remove {cid[:12]}",
                # With its anonymous volume: the build's inputs and outputs.
                lambda c: c.api.remove_container(cid, force=True, v=True),
            )


def _capped(stream: Iterable[bytes], max_bytes: int, what: str) -> bytes:
    """An archive stream read whole, or UnsafeOutput as soon as it passes ``max_bytes``:
    what a container wrote decides how much there is, not what we read."""
    data = bytearray()
    for chunk in stream:
        data += chunk
        if len(data) > max_bytes:
            raise UnsafeOutput(f"{what} is larger than {max_bytes} bytes")
    return bytes(data)

"""Honest workers (#15): a worker claims only the builds it can start, and stops taking
the builds of an image that left its engine. A real redis-server, real ``kiisrv
worker``/``kiisrv serve`` processes, the real engine, and two controller images with
different ids (the test double, and a copy of it with one more label).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import Iterator
from pathlib import Path

import docker.errors
import httpx
import pytest
from arq.constants import in_progress_key_prefix
from docker import DockerClient

from kiisrv.cluster import keys, wire
from kiisrv.settings import Settings
from tests.helpers import (
    QUEUE_KEY,
    RedisServer,
    ktype,
    request,
    serve,
    work,
)


@pytest.fixture
def two_images(
    docker_settings: Settings, docker_client: DockerClient, controller_image: str
) -> Iterator[tuple[Settings, str, str]]:
    """latest and lts on two image ids, under a prefix of this test's own."""
    prefix = f"{docker_settings.instance}-img-"
    docker_client.images.get(controller_image).tag(f"{prefix}controller-057", "latest")
    dockerfile = f"FROM {controller_image}\nLABEL io.kiisrv.test.copy=lts\n"
    lts, _ = docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), rm=True)
    lts.tag(f"{prefix}controller-050", "latest")
    assert lts.id != controller_image
    try:
        yield docker_settings.replace(image_prefix=prefix), controller_image, str(lts.id)
    finally:
        for ct in docker_client.containers.list(all=True, ignore_removed=True):
            if ct.name.startswith(docker_settings.instance):
                ct.remove(force=True)
        for tag in ("controller-057", "controller-050"):
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(f"{prefix}{tag}:latest")
        with contextlib.suppress(docker.errors.APIError):
            docker_client.images.remove(str(lts.id), force=True)


async def _ready(http: httpx.AsyncClient, *versions: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        offered = (await http.get("/versions")).json()
        if all(v in offered for v in versions):
            return
        assert time.monotonic() < deadline, "the worker never advertised " + ", ".join(versions)
        await asyncio.sleep(0.2)


def test_a_worker_claims_no_more_builds_than_it_can_start(
    two_images: tuple[Settings, str, str],
    queue_env: dict[str, str],
    redis: RedisServer,
    tmp_path: Path,
) -> None:
    """One build slot, two images: the second build stays in the queue, free for any
    other worker, instead of waiting claimed behind the first (with its job timeout
    running). Each image's arq loop had max_builds claims of its own."""
    settings, _, _ = two_images
    env = {**queue_env}
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            work(settings.replace(data_dir=tmp_path / "w", max_builds=1), tmp_path / "w.log", **env)
        )
        api = stack.enter_context(
            serve(settings.replace(data_dir=tmp_path / "a"), tmp_path / "a.log", **env)
        )

        async def scenario() -> tuple[list[int], list[int]]:
            async with httpx.AsyncClient(base_url=api.base, timeout=120) as http:
                await _ready(http, "latest", "lts")
                builds = [
                    asyncio.create_task(
                        http.post(
                            "/", json=request(ktype(custom=f"# KIISRV_TEST_SLEEP=4 {env}"), env)
                        )
                    )
                    for env in ("latest", "lts")
                ]
                r = keys.connect(redis.url)
                claimed: list[int] = []
                for _ in range(60):  # while the first build runs
                    marks = [k async for k in r.scan_iter(match=in_progress_key_prefix + "*")]
                    claimed.append(len(marks))
                    await asyncio.sleep(0.1)
                await r.aclose()
                done = await asyncio.gather(*builds)
                return claimed, [d.status_code for d in done]

        claimed, statuses = asyncio.run(scenario())
    assert statuses == [200, 200]
    assert max(claimed) == 1, claimed


def test_a_worker_stops_taking_the_builds_of_an_image_that_left(
    two_images: tuple[Settings, str, str],
    queue_env: dict[str, str],
    redis: RedisServer,
    tmp_path: Path,
    docker_client: DockerClient,
) -> None:
    settings, latest_id, lts_id = two_images
    log = tmp_path / "w.log"
    env = {**queue_env, "KIISRV_WORKER_LEASE": "2"}
    with work(settings.replace(data_dir=tmp_path / "w"), log, **env):

        async def advertised() -> set[str]:
            r = keys.connect(redis.url)
            try:
                raw = [await r.get(k) async for k in r.scan_iter(match=keys.WORKER_PREFIX + "*")]
            finally:
                await r.aclose()
            return {i for v in raw if v for i in wire.Wire(QUEUE_KEY).open_advert(v).images}

        async def until(check: set[str]) -> set[str]:
            seen: set[str] = set()
            for _ in range(100):
                seen = await advertised()
                if seen == check:
                    break
                await asyncio.sleep(0.1)
            return seen

        assert asyncio.run(until({latest_id, lts_id})) == {latest_id, lts_id}
        docker_client.images.remove(f"{settings.image_prefix}controller-050:latest")
        with contextlib.suppress(docker.errors.ImageNotFound):  # gone with its last tag
            docker_client.images.remove(lts_id, force=True)
        assert asyncio.run(until({latest_id})) == {latest_id}
        deadline = time.monotonic() + 10
        while "left; no longer on its queue" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)

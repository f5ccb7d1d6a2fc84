"""Faults are not results (#15): what a cluster answers when an engine or the workers
fail, with a real redis-server, real ``kiisrv worker``/``kiisrv serve`` processes and
the real engine.

A fault of a host (its engine errs or is gone, its disk is full) is tried again and,
past ``KIISRV_BUILD_TRIES``, answered 503 + ``Retry-After``: never published as a failed
build, which every API server used to answer 422 for the result's TTL. Only a build that
ran and failed is a result, kept ``KIISRV_FAILED_RESULT_TTL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from docker import DockerClient

from kiisrv.cluster import keys
from kiisrv.settings import Settings
from tests.helpers import Events, RedisServer, ktype, request, serve, work


@pytest.fixture
def stack(
    docker_settings: Settings, docker_client: DockerClient, controller_image: str
) -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as s:
        yield s
        s.close()
        for ct in docker_client.containers.list(all=True, ignore_removed=True):
            if ct.name.startswith(docker_settings.instance):
                ct.remove(force=True)


async def _post(base: str, body: dict[str, Any], wait_for_workers: bool = True) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base, timeout=120) as http:
        deadline = time.monotonic() + 30
        while wait_for_workers and "latest" not in (await http.get("/versions")).text:
            assert time.monotonic() < deadline, "no worker advertised latest"
            await asyncio.sleep(0.2)
        return await http.post("/", json=body)


async def _results(url: str) -> list[bytes]:
    redis = keys.connect(url)
    try:
        return [k async for k in redis.scan_iter(match=keys.result_key("*"))]
    finally:
        await redis.aclose()


def test_an_engine_error_is_tried_again_then_503_and_never_cached(
    docker_settings: Settings,
    queue_env: dict[str, str],
    redis: RedisServer,
    stack: contextlib.ExitStack,
    tmp_path: Path,
) -> None:
    """The worker's engine refuses the container (here: a memory limit under the
    engine's minimum, an error answer like any other): 503 with Retry-After after
    KIISRV_BUILD_TRIES tries, no result in Redis, and the worker keeps no error zip."""
    tries = {**queue_env, "KIISRV_BUILD_TRIES": "2"}
    w = docker_settings.replace(data_dir=tmp_path / "w")
    log = tmp_path / "w.log"
    stack.enter_context(work(w, log, KIISRV_BUILD_MEMORY="1k", **tries))
    api = stack.enter_context(
        serve(docker_settings.replace(data_dir=tmp_path / "a"), tmp_path / "a.log", **tries)
    )
    r = asyncio.run(_post(api.base, request(ktype(custom="# engine refuses"))))
    assert r.status_code == 503, r.text
    assert int(r.headers["Retry-After"]) > 0
    assert asyncio.run(_results(redis.url)) == []
    assert log.read_text().count("; retrying") == 2  # tried twice, then given up
    assert not [p for p in (w.builds_dir).glob("*.zip")]


def test_a_build_that_ran_and_failed_is_kept_only_briefly(
    docker_settings: Settings,
    queue_env: dict[str, str],
    redis: RedisServer,
    stack: contextlib.ExitStack,
    tmp_path: Path,
) -> None:
    env = {**queue_env, "KIISRV_FAILED_RESULT_TTL": "30"}
    stack.enter_context(
        work(docker_settings.replace(data_dir=tmp_path / "w"), tmp_path / "w.log", **env)
    )
    api = stack.enter_context(
        serve(docker_settings.replace(data_dir=tmp_path / "a"), tmp_path / "a.log", **env)
    )
    failing = request(ktype(custom="# KIISRV_TEST_FAIL brief"))
    ok = request(ktype(custom="# kept"))

    async def scenario() -> tuple[int, int, int, int]:
        r1 = await _post(api.base, failing)
        r2 = await _post(api.base, ok)
        redis_client = keys.connect(redis.url)
        ttls = []
        for r in (r1, r2):
            hash_ = r.json()["filename"].removesuffix(".zip").removesuffix("_error")[-32:]
            ttls.append(await redis_client.pttl(keys.result_key(hash_)))
        await redis_client.aclose()
        return r1.status_code, r2.status_code, ttls[0], ttls[1]

    failed, succeeded, failed_ttl, ok_ttl = asyncio.run(scenario())
    assert (failed, succeeded) == (422, 200)
    assert 0 < failed_ttl <= 30_000
    assert ok_ttl > 30_000  # KIISRV_RESULT_TTL, an hour


def test_no_live_worker_is_503_with_retry_after_not_400(
    docker_settings: Settings,
    queue_env: dict[str, str],
    redis: RedisServer,
    stack: contextlib.ExitStack,
    tmp_path: Path,
) -> None:
    """Every lease lapsed (a rolling restart of the workers, a Redis blip): the version
    exists, no one can build it right now. The Configurator showed "unknown version"."""
    api = stack.enter_context(
        serve(
            docker_settings.replace(data_dir=tmp_path / "a"),
            tmp_path / "a.log",
            **queue_env,
        )
    )
    r = asyncio.run(_post(api.base, request(ktype()), wait_for_workers=False))
    assert r.status_code == 503, r.text
    assert "no build worker" in r.json()["error"] and int(r.headers["Retry-After"]) > 0


def test_a_build_timeout_is_tried_again_then_503_and_never_cached(
    docker_settings: Settings,
    queue_env: dict[str, str],
    build_containers: Events,
    stack: contextlib.ExitStack,
    tmp_path: Path,
) -> None:
    """A build that outlives KIISRV_BUILD_TIMEOUT says nothing of the layout (a loaded
    host is slow for everyone): tried again, then 503 + Retry-After naming the timeout,
    its log downloadable; the next request builds again. It was published as failed:
    every API server's 422 for the result's TTL."""
    env = {**queue_env, "KIISRV_BUILD_TRIES": "2", "KIISRV_BUILD_TIMEOUT": "3"}
    w = docker_settings.replace(data_dir=tmp_path / "w")
    log = tmp_path / "w.log"
    stack.enter_context(work(w, log, **env))
    api = stack.enter_context(
        serve(docker_settings.replace(data_dir=tmp_path / "a"), tmp_path / "a.log", **env)
    )
    slow = request(ktype(custom="# KIISRV_TEST_SLEEP=30 timeout"))
    first = asyncio.run(_post(api.base, slow))
    assert first.status_code == 503, first.text
    assert int(first.headers["Retry-After"]) > 0 and "longer than 3 s" in first.json()["error"]
    name = first.json()["filename"].removeprefix("./tmp/")
    assert httpx.get(f"{api.base}/tmp/{name}", timeout=30).status_code == 200
    assert log.read_text().count("; retrying") == 1  # tried twice, the second published
    assert len(build_containers.created()) == 2
    again = asyncio.run(_post(api.base, slow))
    assert again.status_code == 503
    assert len(build_containers.created()) == 4  # built again: a fault is not a result

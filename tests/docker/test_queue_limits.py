"""The queue's limit and a build's place in it (#15): ``KIISRV_MAX_QUEUE`` holds for the
whole cluster, and ``/builds/<hash>`` says how many builds start before a queued one.
Real builds (the test double), a real redis-server, real ``kiisrv`` processes.
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

from kiisrv.settings import Settings
from tests.helpers import (
    RedisServer,
    app_client,
    ktype,
    request,
    serve,
    work,
)

TOKEN = "t" * 40


@pytest.fixture
def cleanup(docker_settings: Settings, docker_client: DockerClient) -> Iterator[None]:
    yield
    for ct in docker_client.containers.list(all=True, ignore_removed=True):
        if ct.name.startswith(docker_settings.instance):
            ct.remove(force=True)


def _slow(tag: str, seconds: int = 4) -> dict[str, Any]:
    return request(ktype(custom=f"# KIISRV_TEST_SLEEP={seconds} {tag}"))


async def _hashes(http: httpx.AsyncClient, n: int) -> list[str]:
    """The hashes of the builds in flight, oldest first, from the operator's page."""
    deadline = time.monotonic() + 30
    while True:
        got = await http.get("/status/detail.json", headers={"Authorization": f"Bearer {TOKEN}"})
        active = got.json()["active"]
        if len(active) >= n:
            return [b["hash"] for b in active]
        assert time.monotonic() < deadline, got.text
        await asyncio.sleep(0.1)


@pytest.mark.anyio
async def test_a_queued_build_says_how_many_start_before_it(
    docker_settings: Settings, cleanup: None
) -> None:
    settings = docker_settings.replace(max_builds=1, status_token=TOKEN)
    async with app_client(settings) as http:
        posts = []
        for i in range(3):
            posts.append(asyncio.create_task(http.post("/", json=_slow(f"queued {i}"))))
            await asyncio.sleep(0.3)  # arrival order is the queue's order
        hashes = await _hashes(http, 3)
        positions = {}
        for h in hashes:
            positions[h] = (await http.get(f"/builds/{h}")).json()["queue_position"]
        answers = await asyncio.gather(*posts)
        after = [(await http.get(f"/builds/{h}")).json()["queue_position"] for h in hashes]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert sorted(positions.values(), key=lambda p: -1 if p is None else p) == [None, 0, 1]
    assert after == [None, None, None]  # finished builds wait for nothing


def test_the_queue_limit_holds_for_the_whole_cluster(
    docker_settings: Settings,
    queue_env: dict[str, str],
    redis: RedisServer,
    cleanup: None,
    tmp_path: Path,
) -> None:
    """One worker with one slot, KIISRV_MAX_QUEUE=1, two API servers: with one build
    running and one waiting (sent to server A), a third sent to server B is refused with
    503 + Retry-After. Each server counted only its own waiting builds: N servers let
    N x the queue in."""
    env = {**queue_env, "KIISRV_MAX_QUEUE": "1"}
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            work(
                docker_settings.replace(data_dir=tmp_path / "w", max_builds=1),
                tmp_path / "w.log",
                **env,
            )
        )
        a, b = (
            stack.enter_context(
                serve(docker_settings.replace(data_dir=tmp_path / n), tmp_path / f"{n}.log", **env)
            )
            for n in ("a", "b")
        )

        async def scenario() -> list[int]:
            async with (
                httpx.AsyncClient(base_url=a.base, timeout=120) as ha,
                httpx.AsyncClient(base_url=b.base, timeout=120) as hb,
            ):
                deadline = time.monotonic() + 30
                while "latest" not in (await hb.get("/versions")).json():
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.2)
                running = asyncio.create_task(ha.post("/", json=_slow("running", 6)))
                await asyncio.sleep(1.5)
                waiting = asyncio.create_task(ha.post("/", json=_slow("waiting", 1)))
                await asyncio.sleep(1.0)
                third = await hb.post("/", json=_slow("third", 1))
                assert third.status_code != 503 or int(third.headers["Retry-After"]) > 0
                r1, r2 = await running, await waiting
                return [third.status_code, r1.status_code, r2.status_code]

        statuses = asyncio.run(scenario())
    assert statuses == [503, 200, 200], statuses

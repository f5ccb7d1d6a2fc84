"""Hostile clients on the build side (issue #23), with the test-double image: a layout
whose KLL step never ends, a client flooding the slots, a flood of free cache hits.
The real KLL compiler on the 23-byte layout that hung it: test_real_image.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from kiisrv.settings import Settings
from tests.helpers import Events, app_client, ktype, request, serve

pytestmark = pytest.mark.anyio

A, B = "203.0.113.7", "198.51.100.23"  # app_client's client, and another one


@asynccontextmanager
async def two_clients(
    settings: Settings,
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """One server in process, and two clients it tells apart by address."""
    async with app_client(settings) as a:
        app = a.app  # type: ignore[attr-defined]
        transport = httpx.ASGITransport(app=app, client=(B, 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://kiisrv.test") as b:
            yield a, b


def hanging(tag: str) -> dict[str, object]:
    """A layout whose KLL step would run a minute (the test double sleeps as asked)."""
    return request(ktype(custom=f"# KIISRV_TEST_SLEEP=60 {tag}"))


async def test_a_kll_step_past_its_limit_is_the_layouts_fault_and_frees_the_slot(
    docker_settings: Settings, build_containers: Events
) -> None:
    """Attack: a layout that keeps the KLL compiler busy for the whole build timeout
    (answered 503 "retry", so every retry built it again; a build sent 3 s later waited
    58 s). Expected: 422 within the KLL limit, naming its custom KLL, never retried;
    another client's build meanwhile waits for that one build at most."""
    settings = docker_settings.replace(
        kll_timeout=3, build_timeout=120, max_builds=1, max_client_builds=1
    )
    async with two_clients(settings) as (a, b):
        started = time.monotonic()
        bad = asyncio.create_task(a.post("/", json=hanging("a")))
        await asyncio.sleep(0.5)
        good = await b.post("/", json=request(ktype(layout="Other")))
        waited = time.monotonic() - started
        r = await bad
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert "took longer than 3 s" in error and "custom KLL (Layer 0)" in error, error
        assert "Retry-After" not in r.headers
        assert good.status_code == 200, good.text
        assert waited < 3 + 15, f"the other client's build waited {waited:.1f} s"
        # Not kept as a fault to try again: the same layout is built (and refused) again.
        again = await a.post("/", json=hanging("a"))
        assert again.status_code == 422
    assert build_containers.running() == []


async def test_a_clients_flood_delays_another_client_by_about_one_build(
    docker_settings: Settings, build_containers: Events
) -> None:
    """Attack: one client queues four slow builds, then another client sends one.
    Expected: the other's starts after the first client's first, not after all four
    (round-robin by client, one slot)."""
    settings = docker_settings.replace(max_builds=1, max_client_builds=1)
    finished: dict[str, float] = {}

    async def post(client: httpx.AsyncClient, name: str, seconds: int) -> None:
        body = request(ktype(custom=f"# KIISRV_TEST_SLEEP={seconds} {name}"))
        r = await client.post("/", json=body)
        assert r.status_code == 200, r.text
        finished[name] = time.monotonic()

    async with two_clients(settings) as (a, b):
        flood = [asyncio.create_task(post(a, f"a{i}", 2)) for i in range(4)]
        await asyncio.sleep(0.5)
        await post(b, "b", 0)
        await asyncio.gather(*flood)
    order = sorted(finished, key=finished.__getitem__)
    assert order.index("b") <= 1, order  # after a0 at most


async def test_a_flood_of_cache_hits_does_not_grow_the_data_folder(
    docker_settings: Settings, build_containers: Events, tmp_path: Path
) -> None:
    """Attack: the same built layout POSTed 20,000 times (free: cache hits are not
    rate-limited), each written as a statistics row kept a year (~124 bytes a row).
    Expected: the data folder grows by < 1 MB; /stats still counts every request."""
    settings = docker_settings.replace(rate_limit=10)  # hits never count against it
    body = request(ktype(layout="Flood"))
    with serve(settings, tmp_path / "server.log") as live:
        async with httpx.AsyncClient(base_url=live.base, timeout=60) as client:
            first = await client.post("/", json=body)
            assert first.status_code == 200, first.text
            await client.get("/stats")  # rows written
            before = _size(settings.data_dir)

            async def flood(n: int) -> None:
                for _ in range(n):
                    r = await client.post("/", json=body)
                    assert r.status_code == 200

            await asyncio.gather(*(flood(2500) for _ in range(8)))
            stats = (await client.get("/stats.json")).json()
            grown = _size(settings.data_dir) - before  # while it runs: WAL files too
    print(f"20,000 cache hits grew the data folder by {grown} bytes (from {before})")
    assert stats["builds"] == 20_001
    assert stats["users"] == 1
    assert grown < 1024 * 1024, grown


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())

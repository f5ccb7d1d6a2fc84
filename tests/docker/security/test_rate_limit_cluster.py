"""The rate limit holds across API servers that share one Redis (#14).

Real parts: a redis-server of the test's own, one ``kiisrv worker`` on the test engine,
two ``kiisrv serve`` processes on that Redis, real HTTP. Both servers trust 127.0.0.1 as
their proxy, so ``X-Forwarded-For`` names the client, as behind a load balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kiisrv import privacy
from kiisrv.settings import Settings
from tests.helpers import (
    Events,
    RedisServer,
    ktype,
    redis_contents,
    request,
    serve,
    work,
)

LIMIT = 2
CLIENT = "198.51.100.23"
CLIENT_V6 = "2001:db8:77:1::5"


@pytest.fixture
def two_servers(
    docker_settings: Settings,
    build_containers: Events,
    redis: RedisServer,
    queue_env: dict[str, str],
    tmp_path: Path,
) -> Iterator[list[str]]:
    """A worker and two API servers on one Redis, with one client key between them
    (docs/distributed.md: the operator copies ``<data>/client-key``)."""
    base = docker_settings.replace(rate_limit=LIMIT)
    queue = {**queue_env, "KIISRV_TRUSTED_PROXIES": "127.0.0.1"}
    api = [
        base.replace(data_dir=tmp_path / name, instance=f"{base.instance}-{name}")
        for name in ("api1", "api2")
    ]
    for s in api:
        s.data_dir.mkdir(parents=True)
    privacy.load_key(api[0].data_dir)
    shutil.copy(api[0].data_dir / privacy.KEY_FILE, api[1].data_dir / privacy.KEY_FILE)
    with contextlib.ExitStack() as stack:
        worker = base.replace(data_dir=tmp_path / "worker")  # its builds carry base.instance
        stack.enter_context(work(worker, tmp_path / "worker.log", **queue))
        bases = [
            str(stack.enter_context(serve(s, tmp_path / f"{s.instance}.log", **queue)).base)
            for s in api
        ]
        yield bases


async def _versions_ready(base: str, timeout: float = 30) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = await http.get("/versions")
            if r.status_code == 200 and "latest" in r.json():
                return
            await asyncio.sleep(0.2)
    raise AssertionError(f"{base}/versions never offered latest")


def test_new_builds_sent_to_two_api_servers_share_one_budget(
    two_servers: list[str], redis: RedisServer
) -> None:
    """Attack: a client spreads its new builds over the API servers behind a load
    balancer, each of which kept its own window (N servers: N x the limit). Refusal:
    past KIISRV_RATE_LIMIT new builds in total, whichever server gets them, 429 with a
    Retry-After within the minute. Redis keeps only pseudonyms: neither the client's
    address nor its IPv6 /64 appears in any key or value."""

    async def scenario() -> tuple[list[httpx.Response], httpx.Response, bytes]:
        await asyncio.gather(*(_versions_ready(b) for b in two_servers))
        clients = [httpx.AsyncClient(base_url=b, timeout=120) for b in two_servers]
        try:
            answers = []
            for i in range(2 * LIMIT):  # alternately to each server, a new build each time
                body = request(ktype(custom=f"# cluster limit {i}"))
                headers = {"X-Forwarded-For": CLIENT}
                answers.append(await clients[i % 2].post("/", json=body, headers=headers))
            other = await clients[1].post(
                "/",
                json=request(ktype(custom="# cluster limit v6")),
                headers={"X-Forwarded-For": CLIENT_V6},
            )
            return answers, other, await redis_contents(redis.url)
        finally:
            for c in clients:
                await c.aclose()

    answers, other, stored = asyncio.run(scenario())
    statuses = [r.status_code for r in answers]
    assert statuses == [200] * LIMIT + [429] * LIMIT, [r.text for r in answers]
    for refused in answers[LIMIT:]:
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert "too many new builds" in refused.json()["error"]
    assert other.status_code == 200, other.text  # another client: its own budget
    assert b"ratelimit" in stored  # the shared window is there...
    for raw in (CLIENT, CLIENT_V6, "2001:db8:77:1::/64", "2001:db8:77:1:"):
        assert raw.encode() not in stored, f"Redis holds the client address {raw}"

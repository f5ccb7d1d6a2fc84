"""Builds on two engines through one Redis: real redis-server, real dockerds, real HTTP.

The second engine is KIISRV_TEST_DOCKER_HOST_2 (.ci/run starts one); the test double
image is loaded into it from the first. Each test starts its own redis-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import sqlite3
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import psycopg
import pytest
from docker import DockerClient
from redis.asyncio import Redis

from kiisrv import signing
from kiisrv.build.containers import LABEL_INSTANCE
from kiisrv.settings import Settings
from kiisrv.tools import verify
from tests.helpers import (
    DOCKER_HOST_2,
    TEST_CONTAINERS,
    TEST_IMAGE_PREFIX,
    TEST_PREFIX,
    Events,
    RedisServer,
    eventually,
    ktype,
    request,
    serve,
    skip_or_fail,
    work,
)


@pytest.fixture(scope="module")
def engine2(docker_client: DockerClient, controller_image: str) -> Iterator[DockerClient]:
    """The second build host's engine, holding the test double image too."""
    if not DOCKER_HOST_2:
        skip_or_fail("KIISRV_TEST_DOCKER_HOST_2 is unset: no second Docker engine (.ci/run)")
    try:
        client = docker.DockerClient(base_url=DOCKER_HOST_2, version="auto", timeout=120)
        client.ping()
    except docker.errors.DockerException as exc:
        skip_or_fail(f"the second engine {DOCKER_HOST_2} does not answer: {exc}")
    try:
        have = client.images.get(controller_image).id
    except docker.errors.ImageNotFound:
        have = None
    if have != controller_image:
        data = b"".join(docker_client.images.get(controller_image).save(named=False))
        client.images.load(data)
    image = client.images.get(controller_image)
    for container in TEST_CONTAINERS:
        image.tag(f"{TEST_IMAGE_PREFIX}{container}", "latest")
    yield client
    for c in client.containers.list(ignore_removed=True, all=True):
        if c.name.startswith(TEST_PREFIX):
            c.remove(force=True)
    client.close()


class Cluster:
    """Workers (one per engine) and API servers on one Redis."""

    def __init__(
        self, base: Settings, tmp: Path, redis: RedisServer, env: dict[str, str], stack: Any
    ) -> None:
        self.base = base
        self.env = env  # the queue and the result store (conftest.queue_env)
        self.tmp = tmp
        self.redis = redis
        self.stack = stack
        self.workers: dict[str, Any] = {}
        self.servers: list[Any] = []
        self.server_settings: list[Settings] = []
        self.bases: list[str] = []
        self.stats_url: str | None = None  # set: API servers share this statistics database

    def worker_settings(self, name: str, docker_url: str, max_builds: int = 2) -> Settings:
        return self.base.replace(
            data_dir=self.tmp / name,
            instance=f"{self.base.instance}-{name}",
            docker_url=docker_url,
            max_builds=max_builds,
        )

    def start_worker(self, s: Settings, **env: str) -> Any:
        log = self.tmp / f"{s.instance}.log"
        proc = self.stack.enter_context(work(s, log, **{**self.env, **env}))
        self.workers[s.instance] = proc
        return proc

    def start_server(self, name: str, **env: str) -> str:
        s = self.base.replace(data_dir=self.tmp / name, instance=f"{self.base.instance}-{name}")
        if self.stats_url:
            env = {"KIISRV_STATS_URL": self.stats_url, **env}
        live = self.stack.enter_context(serve(s, self.tmp / f"{name}.log", **{**self.env, **env}))
        self.server_settings.append(s)
        self.bases.append(str(live.base))
        return str(live.base)

    def rows(self) -> int:
        """Requests counted by all API servers (``/stats`` writes the pending ones first)."""
        for base in self.bases:
            assert httpx.get(f"{base}/stats", timeout=30).status_code == 200
        if self.stats_url:
            with psycopg.connect(self.stats_url) as conn:
                row = conn.execute("SELECT COALESCE(SUM(n), 0) FROM Requests").fetchone()
                assert row is not None
                return int(row[0])
        total = 0
        for s in self.server_settings:
            with sqlite3.connect(s.stats_db) as db:
                total += db.execute("SELECT COALESCE(SUM(n), 0) FROM Requests").fetchone()[0]
        return total

    def stats_builds(self) -> list[int]:
        """The request count each API server's ``/stats.json`` reports (after a flush of all)."""
        for base in self.bases:  # each /stats writes that server's pending rows
            assert httpx.get(f"{base}/stats", timeout=30).status_code == 200
        return [int(httpx.get(f"{b}/stats.json", timeout=30).json()["builds"]) for b in self.bases]


def _cluster(
    docker_settings: Settings,
    engines: list[DockerClient],
    redis: RedisServer,
    env: dict[str, str],
    tmp_path: Path,
) -> Iterator[Cluster]:
    with contextlib.ExitStack() as stack:
        c = Cluster(docker_settings, tmp_path, redis, env, stack)
        yield c
        stack.close()
        for client in engines:
            for ct in client.containers.list(
                ignore_removed=True, all=True, filters={"label": f"{LABEL_INSTANCE}"}
            ):
                if ct.name.startswith(docker_settings.instance):
                    ct.remove(force=True)


@pytest.fixture
def cluster(
    docker_settings: Settings,
    engine2: DockerClient,
    redis: RedisServer,
    queue_env: dict[str, str],
    tmp_path: Path,
    docker_client: DockerClient,
) -> Iterator[Cluster]:
    yield from _cluster(docker_settings, [docker_client, engine2], redis, queue_env, tmp_path)


@pytest.fixture
def cluster1(
    docker_settings: Settings,
    redis: RedisServer,
    queue_env: dict[str, str],
    tmp_path: Path,
    docker_client: DockerClient,
) -> Iterator[Cluster]:
    """A cluster on the first engine alone (no second engine needed)."""
    yield from _cluster(docker_settings, [docker_client], redis, queue_env, tmp_path)


async def _versions_ready(base: str, timeout: float = 30) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = await http.get("/versions")
            if r.status_code == 200 and "latest" in r.json():
                return
            await asyncio.sleep(0.2)
    raise AssertionError(f"{base}/versions never offered latest")


async def _adverts(url: str) -> list[bytes]:
    redis = Redis.from_url(url)
    try:
        return [k async for k in redis.scan_iter(match="kiisrv:worker:*")]
    finally:
        await redis.aclose()


def _created(events: list[Events]) -> list[int]:
    return [len(e.created()) for e in events]


def test_builds_spread_over_two_engines_and_identical_ones_run_once(
    cluster: Cluster, docker_client: DockerClient, engine2: DockerClient, stats_url: str
) -> None:
    cluster.stats_url = stats_url  # the statistics of both API servers in one PostgreSQL
    w1 = cluster.worker_settings("w1", cluster.base.docker_url)
    w2 = cluster.worker_settings("w2", str(DOCKER_HOST_2))
    cluster.start_worker(w1)
    cluster.start_worker(w2)
    servers = [cluster.start_server("api1"), cluster.start_server("api2")]
    events = [Events(docker_client, w1.instance), Events(engine2, w2.instance)]

    async def scenario() -> tuple[list[httpx.Response], list[httpx.Response], bytes]:
        await asyncio.gather(*(_versions_ready(b) for b in servers))
        clients = [httpx.AsyncClient(base_url=b, timeout=120) for b in servers]
        try:
            distinct = [
                request(ktype(custom=f"# KIISRV_TEST_SLEEP=1 spread {i}")) for i in range(10)
            ]
            first = await asyncio.gather(
                *(clients[i % 2].post("/", json=d) for i, d in enumerate(distinct))
            )
            same = request(ktype(custom="# KIISRV_TEST_SLEEP=2 identical"))
            second = await asyncio.gather(*(clients[i % 2].post("/", json=same) for i in range(30)))
            # The other API server serves the zip too: it came through Redis.
            name = second[0].json()["filename"].removeprefix("./tmp/")
            zips = [(await c.get(f"/tmp/{name}")).content for c in clients]
            assert zips[0] == zips[1]
            versions = [(await c.get("/versions")).json() for c in clients]
            assert versions[0] == versions[1] and "lts" in versions[0]
            # Signed by the worker that built it, with the key every server publishes.
            keys = {(await c.get("/signing-key")).json()["key"] for c in clients}
            assert len(keys) == 1
            members = verify.read_zip_bytes(zips[0])
            assert verify.check(members, signing.public_key(keys.pop()))[0] is None
            return first, second, zips[0]
        finally:
            for c in clients:
                await c.aclose()

    first, second, zip_bytes = asyncio.run(scenario())
    assert [r.status_code for r in first] == [200] * 10, [r.text for r in first]
    assert [r.status_code for r in second] == [200] * 30, [r.text for r in second]
    assert len({r.json()["filename"] for r in first}) == 10
    assert len({r.json()["filename"] for r in second}) == 1
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as z:
        assert any(n.endswith(".dfu.bin") or n.endswith(".bin") for n in z.namelist())
    created = _created(events)
    assert sum(created) == 10 + 1, created
    assert all(n >= 1 for n in created), f"builds did not spread over both engines: {created}"
    assert cluster.rows() == 10 + 30  # rows written = requests sent, all in PostgreSQL
    assert cluster.stats_builds() == [10 + 30, 10 + 30]  # and each /stats counts them all


def test_two_api_servers_write_their_statistics_to_one_postgres(
    cluster1: Cluster, stats_url: str
) -> None:
    """KIISRV_STATS_URL: requests answered by either API server are counted by both."""
    cluster1.stats_url = stats_url
    cluster1.start_worker(cluster1.worker_settings("w1", cluster1.base.docker_url))
    servers = [cluster1.start_server("api1"), cluster1.start_server("api2")]

    async def scenario() -> list[httpx.Response]:
        await asyncio.gather(*(_versions_ready(b) for b in servers))
        clients = [httpx.AsyncClient(base_url=b, timeout=120) for b in servers]
        try:
            bodies = [request(ktype(custom=f"# stats {i % 3}")) for i in range(9)]
            return list(
                await asyncio.gather(
                    *(clients[i % 2].post("/", json=b) for i, b in enumerate(bodies))
                )
            )
        finally:
            for c in clients:
                await c.aclose()

    answers = asyncio.run(scenario())
    assert [r.status_code for r in answers] == [200] * 9, [r.text for r in answers]
    assert cluster1.rows() == 9
    assert cluster1.stats_builds() == [9, 9]
    for s in cluster1.server_settings:  # nothing of it in the servers' own SQLite
        with sqlite3.connect(s.stats_db) as db:
            assert db.execute("SELECT COUNT(*) FROM Requests").fetchone() == (0,)


def test_a_worker_killed_mid_build_the_build_finishes_on_the_other(
    cluster: Cluster, docker_client: DockerClient, engine2: DockerClient
) -> None:
    w1 = cluster.worker_settings("w1", cluster.base.docker_url, max_builds=1)
    w2 = cluster.worker_settings("w2", str(DOCKER_HOST_2), max_builds=1)
    lease = {"KIISRV_WORKER_LEASE": "2"}
    procs = {w1.instance: cluster.start_worker(w1, **lease), w2.instance: None}
    base = cluster.start_server("api1", **lease)
    clients = {w1.instance: docker_client, w2.instance: engine2}

    async def scenario() -> httpx.Response:
        await _versions_ready(base)
        procs[w2.instance] = cluster.start_worker(w2, **lease)
        async with httpx.AsyncClient(base_url=base, timeout=120) as http:
            body = request(ktype(custom="# KIISRV_TEST_SLEEP=5 killed"))
            answer = asyncio.create_task(http.post("/", json=body))
            victim = None
            deadline = time.monotonic() + 30
            while victim is None and time.monotonic() < deadline:
                for instance, client in clients.items():
                    if client.containers.list(
                        ignore_removed=True, filters={"label": f"{LABEL_INSTANCE}={instance}"}
                    ):
                        victim = instance
                await asyncio.sleep(0.1)
            assert victim is not None, "no build container started"
            os.kill(procs[victim].pid, signal.SIGKILL)  # type: ignore[union-attr]
            procs[victim].wait()  # type: ignore[union-attr]
            response = await answer
            # Restarted, the killed worker removes the container it left behind.
            s = w1 if victim == w1.instance else w2
            cluster.start_worker(s, **lease)
            for _ in range(100):
                left = clients[victim].containers.list(
                    ignore_removed=True, all=True, filters={"label": f"{LABEL_INSTANCE}={victim}"}
                )
                if not left:
                    break
                await asyncio.sleep(0.1)
            assert not left, f"orphan containers of {victim} were not removed"
            return response

    response = asyncio.run(scenario())
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True
    assert cluster.rows() == 1


def test_redis_down_is_503_with_retry_after_then_recovers(
    cluster: Cluster, docker_client: DockerClient
) -> None:
    w1 = cluster.worker_settings("w1", cluster.base.docker_url)
    cluster.start_worker(w1, KIISRV_WORKER_LEASE="2")
    base = cluster.start_server("api1", KIISRV_WORKER_LEASE="2")

    async def scenario() -> list[httpx.Response]:
        await _versions_ready(base)
        async with httpx.AsyncClient(base_url=base, timeout=120) as http:
            ok = await http.post("/", json=request(ktype(custom="# before")))
            cluster.redis.stop()
            down = await http.post("/", json=request(ktype(custom="# during")))
            cluster.redis.start()
            # Back when the worker has advertised again (/versions alone may answer from
            # the adverts the API server read before the outage).
            await eventually(lambda: _adverts(cluster.redis.url), timeout=30)
            await _versions_ready(base)
            after = await http.post("/", json=request(ktype(custom="# after")))
            return [ok, down, after]

    ok, down, after = asyncio.run(scenario())
    assert ok.status_code == 200, ok.text
    assert down.status_code == 503, down.text
    assert "Redis" in down.json()["error"]
    assert int(down.headers["retry-after"]) > 0
    assert after.status_code == 200, after.text
    assert cluster.rows() == 3

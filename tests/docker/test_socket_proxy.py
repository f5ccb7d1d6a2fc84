"""The socket proxy passes what builds need and refuses the rest (403)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from docker import DockerClient

from kiisrv.engine import Engine
from kiisrv.settings import Settings
from tests.helpers import (
    REPO,
    TEST_IMAGE_PREFIX,
    Events,
    app_client,
    free_port,
    ktype,
    request,
    wait_for_http,
)


@pytest.fixture(scope="module")
def proxy(docker_client: DockerClient) -> Iterator[str]:
    image, _ = docker_client.images.build(
        path=str(REPO),
        dockerfile="docker/socket-proxy/Dockerfile",
        tag="kiisrvtest-socket-proxy:latest",
        rm=True,
    )
    port = free_port()
    container = docker_client.containers.run(
        image.id,
        detach=True,
        name=f"kiisrvtest-proxy-{port}",
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}},
        ports={"2375/tcp": ("127.0.0.1", port)},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_for_http(f"{base}/_ping"), container.logs().decode(errors="replace")
        yield base
    finally:
        container.remove(force=True)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/info"),
        ("GET", "/v1.41/volumes"),
        ("POST", "/v1.41/images/create?fromImage=alpine"),
        ("POST", "/v1.41/build"),
        ("POST", "/v1.41/containers/abc/exec"),
        ("POST", "/v1.41/containers/abc/update"),
        ("DELETE", "/v1.41/images/debian:bookworm-slim"),
        ("POST", "/v1.41/networks/create"),
        ("GET", "/v1.41/swarm"),
        ("GET", "/v1.41/containers/json/../../info"),
        ("GET", "/v1.41/containers/abc/archive?path=/controller"),
    ],
)
def test_refused(proxy: str, method: str, path: str) -> None:
    r = httpx.request(method, f"{proxy}{path}", timeout=10)
    assert r.status_code == 403, (method, path, r.status_code)


def test_the_engine_class_works_through_it(proxy: str, controller_image: str) -> None:
    async def check() -> None:
        engine = Engine(proxy.replace("http://", "tcp://"), timeout=30)
        assert await engine.ping()
        images = await engine.images()
        image = images[f"{TEST_IMAGE_PREFIX}controller-057:latest"]
        assert image.labels["io.kiisrv.release.tag"] == "v0.0.0-test"  # no archive call
        assert isinstance(await engine.containers("kiisrvtest-none"), list)
        engine.close()

    asyncio.run(check())


def test_a_build_through_the_proxy(
    proxy: str, docker_settings: Settings, build_containers: Events
) -> None:
    async def build() -> int:
        async with app_client(
            docker_settings.replace(docker_url=proxy.replace("http://", "tcp://"))
        ) as client:
            r = await client.post("/", json=request(ktype()))
            return r.status_code
        return 0

    assert asyncio.run(build()) == 200

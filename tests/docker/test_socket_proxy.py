"""The socket proxy (``kiisrv socket-proxy``) passes the calls builds need and refuses
the rest (403); the attacks on its create rule are in security/test_engine_proxy.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kiisrv.build.engine import Engine
from kiisrv.settings import Settings
from tests.helpers import TEST_IMAGE_PREFIX, Events, socket_proxy


@pytest.fixture
def proxy(docker_settings: Settings, build_containers: Events, tmp_path: Path) -> Iterator[str]:
    with socket_proxy(docker_settings, tmp_path / "proxy.log") as url:
        yield url.replace("tcp://", "http://")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/info"),
        ("POST", "/v1.41/volumes/create"),
        ("DELETE", "/v1.41/volumes/kiisrv-ccache"),  # no volume call at all
        ("GET", "/v1.41/volumes"),
        ("POST", "/v1.41/images/create?fromImage=alpine"),
        ("POST", "/v1.41/build"),
        ("POST", "/v1.41/containers/abc/exec"),
        ("POST", "/v1.41/containers/abc/update"),
        ("DELETE", "/v1.41/images/debian:bookworm-slim"),
        ("POST", "/v1.41/networks/create"),
        ("GET", "/v1.41/swarm"),
        ("GET", "/v1.41/containers/json/../../info"),
        # Archive calls pass on kiisrv's own containers only (security/test_engine_proxy.py).
        ("PUT", "/v1.41/containers/abc/archive/x?path=/controller"),
        ("POST", "/v1.41/containers/abc/archive?path=/controller"),
    ],
)
def test_refused(proxy: str, method: str, path: str) -> None:
    r = httpx.request(method, f"{proxy}{path}", timeout=10)
    assert r.status_code == 403, (method, path, r.status_code)
    assert r.json()["message"].startswith("refused by kiisrv socket proxy: ")


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

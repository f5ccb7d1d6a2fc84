"""Fixtures for the suite that runs against a real Docker daemon.

Every test here is marked ``docker``. Without a daemon the suite is skipped with the
reason, unless KIISRV_REQUIRE_DOCKER=1 (CI), where a missing daemon is a failure.
The test controller image is built from the product's own Dockerfile (target
``test-double``), once per session; Docker's layer cache makes a rebuild cheap.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest
from docker import DockerClient

from kiisrv.containers import LABEL_INSTANCE
from kiisrv.settings import Settings
from tests.conftest import _client
from tests.helpers import REPO, TEST_IMAGE_PREFIX, TEST_PREFIX

TEST_CONTAINERS = ("controller-057", "controller-050")
EXTRA_CA = os.environ.get("KIISRV_TEST_EXTRA_CA")  # a CA bundle the image build must trust


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[DockerClient]:
    try:
        client = docker.DockerClient(version="auto", timeout=120)
        client.ping()
    except docker.errors.DockerException as exc:
        if os.environ.get("KIISRV_REQUIRE_DOCKER") == "1":
            pytest.fail(f"KIISRV_REQUIRE_DOCKER=1 but no Docker daemon answers: {exc}")
        pytest.skip(f"no Docker daemon answers ({exc}); start dockerd to run these tests")
    _remove_leftovers(client)
    yield client
    _remove_leftovers(client)
    client.close()


def _remove_leftovers(client: DockerClient) -> None:
    for c in client.containers.list(all=True):
        if c.name.startswith(TEST_PREFIX):
            c.remove(force=True)


def build_test_image(client: DockerClient, context: Path) -> str:
    """The test double, from a copy of the build context (plus an extra CA when given)."""
    shutil.copytree(REPO / "docker", context / "docker")
    shutil.copytree(
        REPO / "tests" / "controller-double", context / "tests" / "controller-double", symlinks=True
    )
    if EXTRA_CA:
        shutil.copy(EXTRA_CA, context / "docker" / "extra-ca" / "extra.crt")
    image, _ = client.images.build(
        path=str(context),
        dockerfile="docker/controller/Dockerfile",
        target="test-double",
        buildargs={"TOOLCHAIN_PACKAGES": ""},
        tag=f"{TEST_IMAGE_PREFIX}{TEST_CONTAINERS[0]}:latest",
        rm=True,
        forcerm=True,
    )
    for container in TEST_CONTAINERS[1:]:
        image.tag(f"{TEST_IMAGE_PREFIX}{container}", "latest")
    return str(image.id)


@pytest.fixture(scope="session")
def controller_image(docker_client: DockerClient, tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_test_image(docker_client, tmp_path_factory.mktemp("context"))


@pytest.fixture
def docker_settings(settings: Settings, controller_image: str) -> Settings:
    return replace(
        settings,
        docker_url=os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"),
        image_prefix=TEST_IMAGE_PREFIX,
        ccache_volume=f"{settings.instance}-ccache",
        build_memory="256m",
    )


@pytest.fixture
def build_containers(docker_client: DockerClient, docker_settings: Settings) -> Iterator[Events]:
    """Watches this test's build containers; dumps their logs if the test fails."""
    events = Events(docker_client, docker_settings.instance)
    yield events
    for c in docker_client.containers.list(
        all=True, filters={"label": f"{LABEL_INSTANCE}={docker_settings.instance}"}
    ):
        print(f"--- leftover container {c.name} ---\n{c.logs().decode(errors='replace')}")
        c.remove(force=True)
    with contextlib.suppress(docker.errors.NotFound):
        docker_client.volumes.get(docker_settings.ccache_volume).remove(force=True)


class Events:
    def __init__(self, client: DockerClient, instance: str) -> None:
        self.client = client
        self.instance = instance
        self.since = time.time() - 1

    def created(self) -> list[dict[str, Any]]:
        """Build containers of this instance created since the fixture started."""
        stream = self.client.events(
            since=int(self.since),
            until=int(time.time()) + 1,
            decode=True,
            filters={
                "type": "container",
                "event": "create",
                "label": f"{LABEL_INSTANCE}={self.instance}",
            },
        )
        return list(stream)

    def running(self) -> list[Any]:
        return self.client.containers.list(
            all=True, filters={"label": f"{LABEL_INSTANCE}={self.instance}"}
        )


@pytest.fixture
async def dclient(
    docker_settings: Settings, build_containers: Events
) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(docker_settings):
        yield c

"""Fixtures for the suite that runs against a real Docker daemon.

Every test here is marked ``docker``. Without a daemon the suite is skipped with the
reason, unless KIISRV_REQUIRE_DOCKER=1 (CI), where a missing daemon is a failure.
The test controller image is built from the product's own Dockerfile (target
``test-double``), once per session; Docker's layer cache makes a rebuild cheap.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import docker.errors
import httpx
import pytest
from docker import DockerClient

from kiisrv.build.containers import LABEL_INSTANCE
from kiisrv.settings import Settings
from tests.helpers import (
    TEST_IMAGE_PREFIX,
    TEST_PREFIX,
    Events,
    PostgresServer,
    RedisServer,
    app_client,
    build_test_image,
)


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
    for c in client.containers.list(ignore_removed=True, all=True):
        if c.name.startswith(TEST_PREFIX):
            c.remove(force=True)


@pytest.fixture(scope="session")
def controller_image(docker_client: DockerClient, tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_test_image(docker_client, tmp_path_factory.mktemp("context"))


@pytest.fixture
def docker_settings(settings: Settings, controller_image: str) -> Settings:
    return settings.replace(
        docker_url=os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"),
        image_prefix=TEST_IMAGE_PREFIX,
        build_memory="256m",
    )


@pytest.fixture
def build_containers(docker_client: DockerClient, docker_settings: Settings) -> Iterator[Events]:
    """Watches this test's build containers; dumps their logs if the test fails."""
    events = Events(docker_client, docker_settings.instance)
    yield events
    for c in docker_client.containers.list(
        ignore_removed=True,
        all=True,
        filters={"label": f"{LABEL_INSTANCE}={docker_settings.instance}"},
    ):
        print(f"--- leftover container {c.name} ---\n{c.logs().decode(errors='replace')}")
        c.remove(force=True)


@pytest.fixture
async def dclient(
    docker_settings: Settings, build_containers: Events
) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(docker_settings) as c:
        yield c


@pytest.fixture
def store_url(postgres: PostgresServer) -> str:
    """KIISRV_STORE_URL of a new, empty database: the cluster's result store."""
    return postgres.create_database(f"kiisrv_store_{secrets.token_hex(6)}")


@pytest.fixture
def queue_env(redis: RedisServer, store_url: str, tmp_path: Path) -> dict[str, str]:
    """What makes ``kiisrv serve`` and ``kiisrv worker`` one cluster: its Redis queue, its
    result store and its signing key (the queue key is in every test environment,
    tests/helpers.py)."""
    return {
        "KIISRV_QUEUE_URL": redis.url,
        "KIISRV_STORE_URL": store_url,
        "KIISRV_SIGNING_KEY_FILE": str(tmp_path / "cluster-signing-key"),
    }

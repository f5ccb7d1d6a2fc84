from __future__ import annotations

import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from kiisrv.settings import Settings
from tests.helpers import (
    FIXTURE_LAYOUTS,
    REDIS_SERVER,
    TEST_IMAGE_PREFIX,
    TEST_PREFIX,
    PostgresServer,
    RedisServer,
    app_client,
    postgres_server,
    skip_or_fail,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A server with its own data folder, the test layouts and no reachable engine."""
    layouts = tmp_path / "layouts"  # a plain folder, whatever the repo's git state
    shutil.copytree(FIXTURE_LAYOUTS, layouts)
    return Settings(
        data_dir=tmp_path / "data",
        layouts_dir=layouts,
        docker_url="unix:///nonexistent/docker.sock",
        instance=f"{TEST_PREFIX}{secrets.token_hex(4)}",
        image_prefix=TEST_IMAGE_PREFIX,
        max_builds=2,
        engine_timeout=10,
        rate_limit=0,  # the tests send many builds from one address; test_rate_limit sets it
        max_client_builds=64,  # ... at once, too; test_hostile_builds sets it
        max_client_connections=1000,  # ... on many connections; test_hostile_http sets it
    )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(settings) as c:
        yield c


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for the session (initdb takes seconds); a database per test."""
    with postgres_server() as server:
        yield server


@pytest.fixture
def stats_url(postgres: PostgresServer) -> str:
    """KIISRV_STATS_URL of a new, empty database."""
    return postgres.create_database(f"kiisrv_{secrets.token_hex(6)}")


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own (Debian's package): queue, rate limit, clusters."""
    if not Path(REDIS_SERVER).is_file():
        skip_or_fail(f"redis-server is not installed ({REDIS_SERVER})")
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()

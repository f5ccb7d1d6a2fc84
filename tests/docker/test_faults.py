"""Faults: the engine away and back, a build container killed, a full disk."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from docker import DockerClient

from kiisrv.settings import Settings
from tests.helpers import Events, app_client, ktype, request

pytestmark = pytest.mark.anyio
REAL_SOCKET = Path(
    os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock").removeprefix("unix://")
)


async def test_engine_away_at_start_then_back(
    docker_settings: Settings, build_containers: Events, tmp_path: Path
) -> None:
    link = tmp_path / "engine" / "docker.sock"
    link.parent.mkdir()
    async with app_client(docker_settings.replace(docker_url=f"unix://{link}")) as client:
        r = await client.get("/versions")
        assert r.status_code == 503 and "cannot be reached" in r.json()["error"]
        assert (await client.post("/", json=request(ktype()))).status_code == 503
        link.symlink_to(REAL_SOCKET)  # the daemon "comes back"
        assert "latest" in (await client.get("/versions")).json()
        assert (await client.post("/", json=request(ktype()))).status_code == 200
        link.unlink()  # and goes away again
        await asyncio.sleep(5.5)  # the image list is cached for 5 s
        r = await client.post("/", json=request(ktype(custom="# other")))
        assert r.status_code == 503
        assert (await client.get("/healthz")).json()["engine"] is False


async def test_a_killed_build_container_is_a_failed_build(
    dclient: httpx.AsyncClient, docker_client: DockerClient, build_containers: Events
) -> None:
    task = asyncio.create_task(
        dclient.post("/", json=request(ktype(custom="# KIISRV_TEST_SLEEP=60")))
    )
    running = []
    for _ in range(100):
        running = [c for c in build_containers.running() if c.status == "running"]
        if running:
            break
        await asyncio.sleep(0.1)
    assert running, "the build container never started"
    running[0].kill()
    r = await asyncio.wait_for(task, 30)
    assert r.status_code == 422
    assert "exit status 137" in r.json()["error"]
    assert build_containers.running() == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_full_disk_is_a_clear_error_and_leaves_no_cache_entry(
    docker_settings: Settings, small_disk: Path, build_containers: Events
) -> None:
    settings = docker_settings.replace(data_dir=small_disk / "data")
    async with app_client(settings) as client:
        filler = small_disk / "filler"
        free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        filler.write_bytes(b"\0" * (free - 600 * 1024))  # leave ~600 KiB
        big = request(ktype(custom="# KIISRV_TEST_OUTPUT_KB=2048"))
        r = await client.post("/", json=big)
        assert r.status_code in (422, 503), r.text
        assert "space" in r.json()["error"].lower() or "could not write" in r.json()["error"]
        builds = settings.builds_dir
        assert not [
            p.name for p in builds.iterdir() if p.name.endswith(".zip") and "_error" not in p.name
        ]
        assert not [p for p in builds.rglob("*") if ".partial" in p.name or ".tmp-" in p.name]
        filler.unlink()
        again = await client.post("/", json=big)
        assert again.status_code == 200, again.text

"""The build core against real Docker (issue #8): no hang, no leak, no starvation, no
blocking on the loop, nothing pruned under a client, names the client can read."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
import zipfile
from typing import Any

import anyio.to_thread
import httpx
import pytest

from kiisrv.errors import StorageError
from kiisrv.settings import Settings
from kiisrv.store.storage import Storage
from tests.helpers import (
    CLIENT_FILENAME_RE,
    TEST_IMAGE_PREFIX,
    Events,
    app_client,
    download,
    eventually,
    header,
    key,
    ktype,
    on_loop,
    request,
)

pytestmark = pytest.mark.anyio


async def test_a_failed_job_write_leaves_no_phantom(
    docker_settings: Settings, build_containers: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#8.1: the first save fails: 503, then the same request builds, and the queue is free."""
    save = Storage.save_job
    failures = 1

    def failing_once(self: Storage, job: Any) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise StorageError("the server cannot use its database: database is locked")
        save(self, job)

    monkeypatch.setattr(Storage, "save_job", failing_once)
    async with app_client(docker_settings.replace(max_queue=1, max_builds=1)) as client:
        body = request(ktype(custom="# phantom"))
        first = await client.post("/", json=body)
        assert first.status_code == 503, first.text
        again = await asyncio.wait_for(client.post("/", json=body), 60)
        assert again.status_code == 200, again.text
        other = await asyncio.wait_for(client.post("/", json=request(ktype())), 60)
        assert other.status_code == 200, other.text


async def test_a_container_that_cannot_start_is_removed(
    docker_settings: Settings, build_containers: Events
) -> None:
    """#8.2: create succeeds, start fails (here: no such user): no container is left."""
    async with app_client(docker_settings.replace(build_user="kiisrv-no-such-user")) as client:
        for i in range(2):
            r = await client.post("/", json=request(ktype(custom=f"# start fails {i}")))
            assert r.status_code >= 400
        assert len(build_containers.created()) == 2
        assert build_containers.running() == []


async def test_running_builds_cannot_starve_health_and_downloads(
    docker_settings: Settings, build_containers: Events
) -> None:
    """#8.3: with as many builds waiting as anyio has worker threads, the server answers.

    anyio's default pool is cut to 2 threads to stand for its 40 with 40 builds.
    """
    limiter = anyio.to_thread.current_default_thread_limiter()
    limiter.total_tokens = 2
    try:
        async with app_client(docker_settings.replace(max_builds=3)) as client:
            (docker_settings.builds_dir / "Some-File-0.zip").write_bytes(b"PK")
            builds = [
                asyncio.create_task(
                    client.post("/", json=request(ktype(custom=f"# KIISRV_TEST_SLEEP=6 #{i}")))
                )
                for i in range(3)
            ]

            async def running() -> int:
                return len([c for c in build_containers.running() if c.status == "running"])

            await eventually(running, lambda n: n == 3, timeout=30)
            start = time.monotonic()
            health = await client.get("/healthz")
            file = await client.get("/tmp/Some-File-0.zip")
            versions = await client.get("/versions")
            elapsed = time.monotonic() - start
            assert health.status_code == file.status_code == versions.status_code == 200
            assert elapsed < 2, f"took {elapsed:.1f} s while builds ran"
            assert [r.status_code for r in await asyncio.gather(*builds)] == [200] * 3
    finally:
        limiter.total_tokens = 40


async def test_the_build_path_keeps_blocking_work_off_the_loop(
    docker_settings: Settings, build_containers: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#8.4: SQLite, rmtree, replace and zip writing never run on the event loop."""
    seen: list[str] = []
    lock, rmtree, replace, writestr = (
        Storage._lock,
        shutil.rmtree,
        os.replace,
        zipfile.ZipFile.writestr,
    )

    def spy(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if on_loop():
                seen.append(name)
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(Storage, "_lock", spy("sqlite", lock))
    monkeypatch.setattr(shutil, "rmtree", spy("rmtree", rmtree))
    monkeypatch.setattr(os, "replace", spy("replace", replace))
    monkeypatch.setattr(zipfile.ZipFile, "writestr", spy("zip", writestr))
    async with app_client(docker_settings.replace(build_timeout=3)) as client:
        ok = await client.post("/", json=request(ktype()))
        assert ok.status_code == 200
        assert (await client.post("/", json=request(ktype()))).status_code == 200  # cached
        slow = await client.post("/", json=request(ktype(custom="# KIISRV_TEST_SLEEP=30")))
        assert slow.status_code == 503  # timed out: the server writes the error zip
        hash_ = re.match(CLIENT_FILENAME_RE, ok.json()["filename"]).group(3)  # type: ignore[union-attr]
        assert (await client.get(f"/builds/{hash_}")).status_code == 200
        assert (await client.get(f"/builds/{hash_}/log")).status_code == 200
        assert (await client.get("/stats")).text.startswith("Builds: 3")
    assert seen == []


async def test_an_answered_zip_is_not_pruned_before_the_download(
    docker_settings: Settings, build_containers: Events
) -> None:
    """#8.6: a cache hit (after a restart) protects its zip from the pruner for a while."""
    settings = docker_settings.replace(retention_bytes=0, prune_interval=0)
    body = request(ktype())
    async with app_client(settings) as client:
        built = await client.post("/", json=body)
        assert built.status_code == 200
        await download(client, built.json()["filename"])
    async with app_client(settings) as client:
        hit = await client.post("/", json=body)
        assert hit.json() == built.json()
        server = client.app.state.kiisrv  # type: ignore[attr-defined]
        await anyio.to_thread.run_sync(server.prune)
        await download(client, hit.json()["filename"])
    assert len(build_containers.created()) == 1


async def test_a_dash_in_the_layout_name_still_parses_as_the_board(
    dclient: httpx.AsyncClient,
) -> None:
    """#8.9: MDErgo1 with Layout "My-Ergo": the client reads board MDErgo1, both halves."""
    config = {
        "header": header(name="MDErgo1", layout="My-Ergo"),
        "matrix": [key("0x01", "ESC"), key("0x02", "A", "1"), key("0x03", "B")],
    }
    r = await dclient.post("/", json=request(config))
    assert r.status_code == 200, r.text
    m = re.match(CLIENT_FILENAME_RE, r.json()["filename"])
    assert m is not None
    assert (m.group(1), m.group(2)) == ("MDErgo1", "My_Ergo")
    names = set((await download(dclient, r.json()["filename"])).namelist())
    assert {"left_kiibohd.dfu.bin", "right_kiibohd.dfu.bin"} <= names
    assert {"MDErgo1-My-Ergo-0.kll", "MDErgo1-My-Ergo-1.kll"} <= names  # KLL names unchanged


async def test_release_details_come_from_image_labels_without_a_container(
    dclient: httpx.AsyncClient, build_containers: Events, controller_image: str
) -> None:
    """#8.11: /versions reads labels; no container is created to read a file."""
    versions = (await dclient.get("/versions")).json()
    assert versions["latest"]["commit"] >= 1
    assert versions["latest"]["date"] == "2019-08-01 12:00:00 -0700"
    assert re.fullmatch(r"[0-9a-f]{40}", versions["latest"]["hash"])
    assert versions["lts"]["notes"].endswith("/v0.0.0-test")
    for container in ("controller-057", "controller-050"):
        image = f"{TEST_IMAGE_PREFIX}{container}:latest"
        readers = [
            e
            for e in build_containers.created(image=image)
            if "io.kiisrv.instance" not in e["Actor"]["Attributes"]  # not a build
        ]
        assert readers == [], "a container was made to read the image"

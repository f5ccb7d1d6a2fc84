"""Builds in real containers from the test controller image, through the real app."""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
import sqlite3
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from docker import DockerClient

from kiisrv import privacy
from kiisrv.build.containers import LABEL_INSTANCE
from kiisrv.jobs import Job, JobState
from kiisrv.settings import Settings
from kiisrv.store.storage import Storage
from tests.helpers import (
    CLIENT_FILENAME_RE,
    TEST_IMAGE_PREFIX,
    Events,
    app_client,
    eventually,
    ktype,
    mdergo1,
    request,
)

pytestmark = pytest.mark.anyio


async def download(client: httpx.AsyncClient, filename: str) -> zipfile.ZipFile:
    m = re.match(CLIENT_FILENAME_RE, filename)
    assert m, f"{filename} does not match the Configurator's pattern"
    r = await client.get(f"/tmp/{filename.rsplit('/', 1)[1]}")
    assert r.status_code == 200, r.text
    return zipfile.ZipFile(io.BytesIO(r.content))


def requests_rows(settings: Settings) -> list[tuple[Any, ...]]:
    with sqlite3.connect(settings.stats_db) as db:
        return db.execute(
            "SELECT ip_addr, os, web, board, variant, layers, container, success, build_duration"
            " FROM Requests ORDER BY id"
        ).fetchall()


async def test_a_build_end_to_end(
    dclient: httpx.AsyncClient, docker_settings: Settings, build_containers: Events
) -> None:
    config = ktype()
    config["macros"] = {"0": [{"name": "kept"}]}  # unknown to the model: must survive
    config["matrix"][0]["board"] = "left"
    r = await dclient.post(
        "/download.php",
        json=request(config),
        headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Electron/9 Kiibohd Configurator"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True
    assert body["filename"].startswith("./tmp/KType-Mine-") and body["filename"].endswith(".zip")
    z = await download(dclient, body["filename"])
    names = set(z.namelist())
    assert {
        "kiibohd.dfu.bin",
        "KType-Mine-0.kll",
        "KType-Mine-1.kll",
        "kll.json",
        "kll/KType-Mine-0.kll",
        "log/build.log",
        "log/generatedKeymap.h",
        "log/kll_defs.h",
        "KType-Mine.json",
    } <= names
    assert z.read("kiibohd.dfu.bin").startswith(b"KIISRV TEST DOUBLE FIRMWARE")
    assert json.loads(z.read("KType-Mine.json")) == config
    log = z.read("log/build.log")
    assert log.startswith(b" ========== STARTING BUILD ========== \n @@@@@ Script=k-type.bash")
    assert b"@@@@@ Maps=stdFuncMap layer-0|layer-1" in log  # the request's maps, renamed
    assert b"@@@@@ Build=warm from /warm/k-type/" in log  # the image's warm tree
    assert b"kll (test double): maps layer-0 layer-1" in log
    assert b"configuring" not in log  # ninja alone: no configure step
    assert "compile_commands.json" not in names
    assert b"uid 1000, gid 1000, root filesystem writable" in z.read("log/build.log")
    # No cache kept or shared: its own folder only (security/test_ccache.py).
    assert b"ccache disabled" in log
    assert b"mounts: /mnt/kiisrv \n" in log
    assert z.read("KType-Mine-0.kll").startswith(b'Name = "KType";')
    assert len(build_containers.created()) == 1
    assert build_containers.running() == []  # removed after the build
    await dclient.get("/stats")  # rows are written in batches; /stats flushes them
    rows = requests_rows(docker_settings)
    kept = privacy.pseudonym(privacy.load_key(docker_settings.data_dir), "203.0.113.7")
    assert rows[0][:8] == (kept, "Linux", 0, "KType", "Mine", 2, "controller-057", 1)
    assert rows[0][8] is not None
    hash_ = re.match(CLIENT_FILENAME_RE, body["filename"]).group(3)  # type: ignore[union-attr]
    status = (await dclient.get(f"/builds/{hash_}")).json()
    assert status["state"] == "succeeded" and status["filename"] == body["filename"]

    # Same layout, other key order and whitespace: the finished build is reused.
    reordered = json.dumps(
        {"env": "latest", "config": dict(reversed(list(config.items())))}, indent=3
    )
    again = await dclient.post("/", content=reordered, headers={"Content-Type": "application/json"})
    assert again.json() == body
    assert len(build_containers.created()) == 1
    await dclient.get("/stats")
    assert requests_rows(docker_settings)[1][8] is None  # a reused result has no duration


async def test_a_failed_build_answers_422_with_the_log_and_is_not_cached(
    dclient: httpx.AsyncClient, build_containers: Events
) -> None:
    failing = request(ktype(custom="# KIISRV_TEST_FAIL"))
    r = await dclient.post("/", json=failing)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["success"] is False
    assert body["filename"].endswith("_error.zip")
    assert "exit status 1" in body["error"]
    assert "failing as asked" in body["error"]
    z = await download(dclient, body["filename"])
    assert "kiibohd.dfu.bin" not in z.namelist()
    assert b"failing as asked" in z.read("log/build.log")
    assert "KType-Mine-0.kll" in z.namelist()
    again = await dclient.post("/", json=failing)
    assert again.status_code == 422
    assert len(build_containers.created()) == 2  # a failure is tried again


async def test_split_board_builds_both_halves(dclient: httpx.AsyncClient) -> None:
    r = await dclient.post("/", json=request(mdergo1()))
    assert r.status_code == 200, r.text
    z = await download(dclient, r.json()["filename"])
    names = set(z.namelist())
    assert {
        "left_kiibohd.dfu.bin",
        "right_kiibohd.dfu.bin",
        "left_kll.json",
        "right_kll.json",
        "MDErgo1-Split-0.kll",
        "MDErgo1-Split-1.kll",
    } <= names
    log = z.read("log/build.log")
    assert b"Build=warm from /warm/ergodox-l/" in log
    assert b"Build=warm from /warm/ergodox-r/" in log
    assert b"ergodox-l.bash (test double): uid" in log
    assert b"ergodox-r.bash (test double): uid" in log
    assert z.read("left_kiibohd.dfu.bin") == z.read("right_kiibohd.dfu.bin")


async def test_lts_uses_the_lts_image_and_rules(
    dclient: httpx.AsyncClient, build_containers: Events
) -> None:
    config = ktype()
    config["matrix"][0]["layers"]["1"] = {"key": "#:ledControl( 0, 15 )"}
    config["animations"] = {"a": {"settings": "loop", "frames": ["P[1](1,1,1)"]}}
    lts = await dclient.post("/", json=request(config, env="lts"))
    latest = await dclient.post("/", json=request(config, env="latest"))
    assert lts.status_code == latest.status_code == 200
    assert lts.json()["filename"] != latest.json()["filename"]
    z = await download(dclient, lts.json()["filename"])
    assert b'U"ESC" : ledControl( 0, 15 );' in z.read("KType-Mine-1.kll")  # mode 0-8 kept
    assert b"A[a]" not in z.read("KType-Mine-0.kll")
    images = sorted(e["Actor"]["Attributes"]["image"] for e in build_containers.created())
    assert images == [
        f"{TEST_IMAGE_PREFIX}controller-050:latest",
        f"{TEST_IMAGE_PREFIX}controller-057:latest",
    ]


async def test_unknown_version_is_a_400_naming_what_is_offered(dclient: httpx.AsyncClient) -> None:
    r = await dclient.post("/", json=request(ktype(), env="v9.9.9"))
    assert r.status_code == 400
    assert "v9.9.9" in r.json()["error"] and "latest" in r.json()["error"]
    versions = (await dclient.get("/versions")).json()
    assert set(versions) == {"latest", "nightly", "v0.5.7", "lts", "v0.5.0"}
    assert versions["latest"]["commit"] >= 1
    assert versions["latest"]["date"] == "2019-08-01 12:00:00 -0700"
    assert re.fullmatch(r"[0-9a-f]{40}", versions["latest"]["hash"])


async def test_concurrent_identical_requests_share_one_container(
    dclient: httpx.AsyncClient, build_containers: Events
) -> None:
    body = request(ktype(custom="# KIISRV_TEST_SLEEP=2"))
    answers = await asyncio.gather(*(dclient.post("/", json=body) for _ in range(25)))
    assert {a.status_code for a in answers} == {200}
    assert len({a.json()["filename"] for a in answers}) == 1
    assert len(build_containers.created()) == 1


async def test_timeout_kills_the_build_and_reports_it(
    docker_settings: Settings, build_containers: Events
) -> None:
    """A timeout is a fault, not the layout's failure (#15.2): a loaded host is slow for
    every build, so 503 + Retry-After (it was 422, "fix your layout"), the log kept."""
    async with app_client(docker_settings.replace(build_timeout=4)) as client:
        start = time.monotonic()
        r = await client.post("/", json=request(ktype(custom="# KIISRV_TEST_SLEEP=120")))
        assert time.monotonic() - start < 60
        assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0
        assert "longer than 4 s" in r.json()["error"]
        # ninja shows a step's output when it ends: the log so far ends at the build step.
        assert "@@@@@ Build=warm" in r.json()["error"]
        z = await download(client, r.json()["filename"])
        assert b"@@@@@ Build=warm" in z.read("log/build.log")
        assert build_containers.running() == []


async def test_queue_limit_answers_503_with_retry_after(
    docker_settings: Settings, build_containers: Events
) -> None:
    async with app_client(docker_settings.replace(max_builds=1, max_queue=1)) as client:
        slow = [request(ktype(custom=f"# KIISRV_TEST_SLEEP=3 #{i}")) for i in range(3)]
        first = asyncio.create_task(client.post("/", json=slow[0]))
        await asyncio.sleep(0.5)
        second = asyncio.create_task(client.post("/", json=slow[1]))
        await asyncio.sleep(0.5)
        third = await client.post("/", json=slow[2])
        assert third.status_code == 503
        assert third.headers["retry-after"] == "60"
        assert "waiting" in third.json()["error"]
        assert (await first).status_code == 200
        assert (await second).status_code == 200


async def test_status_and_log_while_running(dclient: httpx.AsyncClient) -> None:
    body = request(ktype(custom="# KIISRV_TEST_SLEEP=3"))
    task = asyncio.create_task(dclient.post("/", json=body))
    server = dclient.app.state.kiisrv  # type: ignore[attr-defined]
    hash_ = (await server.plan(body)).job.hash

    async def state() -> str:
        r = await dclient.get(f"/builds/{hash_}")
        return str(r.json()["state"]) if r.status_code == 200 else "unknown"

    assert await eventually(state, lambda s: s == "running") == "running"
    live = ""
    for _ in range(50):
        live = (await dclient.get(f"/builds/{hash_}/log")).text
        if "@@@@@ Build=warm" in live:
            break
        await asyncio.sleep(0.1)
    assert "@@@@@ Build=warm" in live and "Build Completed" not in live  # output so far
    assert (await task).status_code == 200
    assert (await dclient.get(f"/builds/{hash_}")).json()["state"] == "succeeded"
    final = (await dclient.get(f"/builds/{hash_}/log")).text
    assert "Build Completed [OK]" in final
    assert (await dclient.get("/builds/" + "0" * 32 + "/log")).status_code == 404


async def test_restart_removes_orphans_and_fails_unfinished_builds(
    docker_settings: Settings, docker_client: DockerClient, build_containers: Events
) -> None:
    orphan = docker_client.containers.create(
        f"{docker_settings.image_prefix}controller-057:latest",
        entrypoint=["sleep", "300"],
        name=f"{docker_settings.instance}-build-orphan",
        labels={LABEL_INSTANCE: docker_settings.instance},
    )
    orphan.start()
    docker_settings.data_dir.mkdir(parents=True)
    storage = Storage(docker_settings.stats_db, docker_settings.config_db)
    storage.save_job(
        Job("f" * 32, "KType-Mine-" + "f" * 32, "latest", "controller-057", state=JobState.RUNNING)
    )
    storage.close()
    work = docker_settings.builds_dir / ".work" / ("f" * 32)
    work.mkdir(parents=True)
    (work / "half-written.zip").write_bytes(b"PK\x03")
    async with app_client(docker_settings) as client:
        assert build_containers.running() == []
        assert not work.exists()
        status = (await client.get("/builds/" + "f" * 32)).json()
        assert status["state"] == "failed"
        assert "restarted" in status["error"]


async def test_read_only_root_when_asked(docker_settings: Settings) -> None:
    async with app_client(docker_settings.replace(build_read_only=True, build_user="")) as client:
        r = await client.post("/", json=request(ktype()))
        assert r.status_code == 200, r.text
        z = await download(client, r.json()["filename"])
        assert b"uid 0, gid 0, root filesystem read-only" in z.read("log/build.log")


async def test_a_compiler_error_names_the_layer_and_key(dclient: httpx.AsyncClient) -> None:
    config = ktype()
    config["matrix"][0]["layers"]["1"] = {"key": "NOTAKEY"}
    r = await dclient.post("/", json=request(config))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error.startswith("Layer 1, key ESC: 'NOTAKEY' is not a USB HID key name.\n\n")
    assert "end of the log:" in error  # the log tail follows the sentence


async def test_a_zip_cached_by_an_older_recipe_or_base_is_rebuilt_not_served(
    docker_settings: Settings,
    build_containers: Events,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Zips made before a fix sit in every deployment's cache: the build hash covers the
    recipe version and the base layout's content, so neither is served stale."""
    from kiisrv.recipe import planner

    layouts = tmp_path / "fetched-layouts"
    shutil.copytree(docker_settings.layouts_dir, layouts)
    settings = docker_settings.replace(layouts_dir=layouts)
    body = request(ktype())

    monkeypatch.setattr(planner, "RECIPE_VERSION", planner.RECIPE_VERSION - 1)
    async with app_client(settings) as client:  # a server of the older recipe
        old = (await client.post("/", json=body)).json()
        assert old["success"] is True, old
        again = (await client.post("/", json=body)).json()
        assert again["filename"] == old["filename"]  # its own zip is a cache hit
    monkeypatch.undo()

    async with app_client(settings) as client:  # restarted with this recipe
        new = (await client.post("/", json=body)).json()
        assert new["success"] is True, new
        assert new["filename"] != old["filename"]
        assert len(build_containers.created()) == 2  # built again, not served from the cache

        # `kiisrv layouts fetch` changes a base file under a running server.
        base = layouts / "KType-TestBase.json"
        doc = json.loads(base.read_text())
        doc["matrix"][1]["layers"]["0"]["key"] = "W"
        base.write_text(json.dumps(doc))
        after = (await client.post("/", json=body)).json()
        assert after["success"] is True, after
        assert after["filename"] not in (old["filename"], new["filename"])
        z = await download(client, after["filename"])
        assert 'U"W" : U"Q";' in z.read("KType-Mine-0.kll").decode()

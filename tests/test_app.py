"""The HTTP app without Docker: error shape, validation, file serving, engine down."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import httpx
import pytest

from kiisrv.settings import Settings
from tests.helpers import FIXTURE_LAYOUTS, app_client, ktype, request

pytestmark = pytest.mark.anyio


def assert_error(r: httpx.Response, status: int, *needles: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert isinstance(body["error"], str) and body["error"]
    for needle in needles:
        assert needle in body["error"], body["error"]


def nothing_written(settings: Settings) -> None:
    assert not any(settings.config_dir.iterdir())
    assert [p.name for p in settings.builds_dir.iterdir()] == [".work"]
    with sqlite3.connect(settings.stats_db) as db:
        assert db.execute("SELECT COUNT(*) FROM Requests").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM Builds").fetchone() == (0,)


async def test_error_shape_is_locked(client: httpx.AsyncClient) -> None:
    r = await client.post("/", content=b"{nope")
    assert r.status_code == 400
    assert set(r.json()) == {"error"}
    assert r.json()["error"].startswith("the body is not valid JSON")


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"[]", 400, "JSON object"),
        (b"\xff\xfe", 400, "not valid JSON"),
        (json.dumps({"env": "latest"}).encode(), 400, "config"),
        (
            json.dumps(request({**ktype(), "header": {"Name": "KType"}})).encode(),
            400,
            "config.header.Layout",
        ),
        (
            json.dumps(request(ktype(name="Fokal"))).encode(),
            400,
            "no build script for keyboard 'Fokal'",
        ),
        (json.dumps(request(ktype(base="../../etc/passwd"))).encode(), 400, "config.header.Base"),
    ],
)
async def test_bad_builds_get_4xx_and_change_nothing(
    client: httpx.AsyncClient, settings: Settings, body: bytes, status: int, needle: str
) -> None:
    for path in ("/", "/download.php", "/some/other/path"):
        assert_error(await client.post(path, content=body), status, needle)
    nothing_written(settings)


async def test_body_over_the_limit_is_413(tmp_path: Path, settings: Settings) -> None:
    async with app_client(settings.replace(max_body_bytes=1000)) as client:
        assert_error(await client.post("/", content=b" " * 2000), 413, "larger than 1000")

        async def chunks():  # no content-length: counted while streaming
            for _ in range(3):
                yield b" " * 600

        assert_error(await client.post("/", content=chunks()), 413)


async def test_engine_down_is_a_503_with_retry_after(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    r = await client.get("/versions")
    assert_error(r, 503, "cannot be reached")
    assert r.headers["retry-after"]
    assert_error(await client.post("/", json=request(ktype())), 503, "cannot be reached")
    nothing_written(settings)
    health = await client.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok", "engine": False}


async def test_layouts_and_aliases(client: httpx.AsyncClient) -> None:
    r = await client.get("/layouts/KType-TestBase.json")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.content == (FIXTURE_LAYOUTS / "KType-TestBase.json").read_bytes()
    alias = await client.get("/layouts/K-Type-TestBase.json")
    assert alias.content == r.content
    assert (await client.get("/layouts/KType-TestBase.json?rev=HEAD")).content == r.content
    assert_error(
        await client.get("/layouts/KType-TestBase.json?rev=abc123"), 404, "not a git checkout"
    )
    assert_error(await client.get("/layouts/Nope.json"), 404, "no layout")


@pytest.mark.parametrize(
    "path",
    [
        "/layouts/..%2Fconftest.py",
        "/layouts/..%2F..%2Fpyproject.toml",
        "/layouts/%2Fetc%2Fpasswd",
        "/layouts/%2e%2e%2fstats.db",
        "/layouts/..\\..\\x.json",
        "/layouts/.hidden.json",
        "/tmp/..%2Fstats.db",
        "/tmp/%2e%2e%2fstats.db",
        "/tmp/%2Fetc%2Fpasswd",
        "/tmp/.work",
        "/tmp/nothing.zip",
    ],
)
async def test_no_path_leads_out_of_the_folders(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(path)
    assert_error(r, 404)
    assert b"root:" not in r.content and b"SQLite" not in r.content


async def test_symlinks_out_of_the_folders_are_not_followed(
    tmp_path: Path, settings: Settings
) -> None:
    layouts = tmp_path / "evil-layouts"
    shutil.copytree(FIXTURE_LAYOUTS, layouts)
    secret = tmp_path / "secret.json"
    secret.write_text('{"secret": true}')
    (layouts / "Evil.json").symlink_to(secret)
    (layouts / "Good-Alias.json").symlink_to("KType-TestBase.json")
    async with app_client(settings.replace(layouts_dir=layouts)) as client:
        assert_error(await client.get("/layouts/Evil.json"), 404)
        assert (await client.get("/layouts/Good-Alias.json")).status_code == 200
        (settings.builds_dir / "Evil.zip").symlink_to(secret)
        (settings.builds_dir / "Fine.zip").write_bytes(b"PK")
        assert_error(await client.get("/tmp/Evil.zip"), 404)
        r = await client.get("/tmp/Fine.zip")
        assert r.status_code == 200 and r.content == b"PK"


async def test_a_zip_pruned_while_it_is_being_served_is_a_404(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """Retention may remove a zip between the lookup of ``GET /tmp/<name>`` and its
    read (the pruner runs on its own thread): the client is told it is gone (404), not
    a 500."""
    (settings.builds_dir / "Gone.zip").write_bytes(b"PK")
    server = client.app.state.kiisrv  # type: ignore[attr-defined]
    looked_up = server.artifact

    async def then_pruned(name: str) -> Path:
        path: Path = await looked_up(name)
        path.unlink()
        return path

    server.artifact = then_pruned
    assert_error(await client.get("/tmp/Gone.zip"), 404)


async def test_layout_revisions_from_a_git_checkout(tmp_path: Path, settings: Settings) -> None:
    repo = tmp_path / "repo"
    layouts = repo / "layouts"
    shutil.copytree(FIXTURE_LAYOUTS, layouts)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(repo), *args], check=True, env=env, capture_output=True)

    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "one")
    old = (layouts / "KType-TestBase.json").read_bytes()
    (layouts / "KType-TestBase.json").write_text('{"changed": true}')
    git("commit", "-qam", "two")
    async with app_client(settings.replace(layouts_dir=layouts)) as client:
        assert (await client.get("/layouts/KType-TestBase.json")).json() == {"changed": True}
        assert (await client.get("/layouts/KType-TestBase.json?rev=HEAD~1")).content == old
        assert (await client.get("/layouts/K-Type-TestBase.json?rev=HEAD~1")).content == old
        assert_error(await client.get("/layouts/KType-TestBase.json?rev=nope"), 404)
        assert_error(await client.get("/layouts/KType-TestBase.json?rev=--output=x"), 404)


async def test_stats_and_unknown_routes(client: httpx.AsyncClient) -> None:
    r = await client.get("/stats")
    assert r.status_code == 200 and r.text.startswith("Builds: 0 (0 unique)")
    assert_error(await client.get("/nowhere"), 404)
    assert_error(await client.get("/builds/0123"), 404)
    assert_error(await client.delete("/stats"), 405)


async def test_openapi_describes_the_configurator_routes(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    for path in ("/", "/download.php", "/versions", "/layouts/{name}", "/tmp/{name}", "/stats"):
        assert path in schema["paths"]
    assert "BuildRequest" in schema["components"]["schemas"]
    assert "Header" in schema["components"]["schemas"]

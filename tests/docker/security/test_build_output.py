"""Attacks through a build's own files: what it hands back, and where they live.

Build containers mount no host folder; their inputs go in and their outputs come out
through the Engine API's archive calls. A build runs a client's layout through a
compiler, so its output folder is hostile: the server takes plain files from it and
refuses anything else, writing nothing outside its work folder.
"""

from __future__ import annotations

import pytest

from kiisrv.settings import Settings
from tests.helpers import Events, app_client, download, ktype, request

pytestmark = pytest.mark.anyio


async def test_a_build_that_leaves_a_symlink_to_root_in_its_output_is_refused(
    docker_settings: Settings, build_containers: Events
) -> None:
    """Attack: the build leaves ``escape.zip -> /`` beside its zip, for the server to
    write through or serve. Refused: the whole output, the build fails with the reason,
    and no link lands anywhere in the server's data folder."""
    async with app_client(docker_settings) as client:
        r = await client.post("/", json=request(ktype(custom="# KIISRV_TEST_OUT_LINK")))
        assert r.status_code == 422, r.text
        assert "output was refused" in r.json()["error"]
        assert "escape.zip" in r.json()["error"]
        z = await download(client, r.json()["filename"])
        assert "left a symlink" in z.read("log/build.log").decode()
    data = docker_settings.data_dir
    assert [p for p in data.rglob("*") if p.is_symlink()] == []
    assert not (docker_settings.builds_dir / ".work").exists() or not any(
        (docker_settings.builds_dir / ".work").iterdir()
    )
    assert build_containers.running() == []


async def test_a_build_as_uid_1000_with_a_read_only_root_gets_its_files(
    docker_settings: Settings, build_containers: Events
) -> None:
    """The hardened shape (KIISRV_BUILD_READ_ONLY=1, the image's build uid): its inputs
    arrive and its zip comes back, though no folder of the server is mounted."""
    settings = docker_settings.replace(build_read_only=True)
    assert settings.build_user == "1000:1000"
    async with app_client(settings) as client:
        r = await client.post("/", json=request(ktype()))
        assert r.status_code == 200, r.text
        z = await download(client, r.json()["filename"])
        assert b"uid 1000, gid 1000, root filesystem read-only" in z.read("log/build.log")
        assert any(n.endswith(".kll") for n in z.namelist())
    assert build_containers.running() == []

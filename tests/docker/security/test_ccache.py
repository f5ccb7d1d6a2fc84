"""Attacks through a compile cache, on the real engine with the test-double image.

Every build used to mount one ccache volume writable: a request could leave objects
there that the next user's build (same headers, other layout) links into its
firmware. Later a shared cache that only stock builds wrote was still what a
compromised server would poison first, and per-client caches still kept what one
build wrote for the next. Now no build keeps or shares a cache: a build mounts its
own folder only (an anonymous volume, removed with it) and runs with ccache off; the
image's warm trees are what makes it fast (docs/controller-images.md).

The test double's firmware step says whether ccache is on and which volumes it sees
mounted; the engine's volumes are then looked at from outside.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import zipfile
from typing import Any

import docker.errors
import httpx
import pytest
from docker import DockerClient

from kiisrv.settings import Settings
from tests.helpers import Events, ktype, request

pytestmark = pytest.mark.anyio

_MOUNTS = re.compile(rb"\(test double\): mounts: ([^\n]*)")


def _stock(settings: Settings) -> dict[str, Any]:
    """A stock layout of the server's layouts folder, exactly as a client downloads it."""
    doc: dict[str, Any] = json.loads((settings.layouts_dir / "KType-TestBase.json").read_bytes())
    return doc


def _one_key_changed(settings: Settings) -> dict[str, Any]:
    doc = copy.deepcopy(_stock(settings))
    doc["matrix"][1]["layers"]["0"]["key"] = "Z"
    return doc


async def _build_log(client: httpx.AsyncClient, config: dict[str, Any]) -> bytes:
    r = await client.post("/", json=request(config))
    assert r.status_code == 200, r.text
    filename = r.json()["filename"].rsplit("/", 1)[1]
    z = zipfile.ZipFile(io.BytesIO((await client.get(f"/tmp/{filename}")).content))
    assert z.read("kiibohd.dfu.bin").startswith(b"KIISRV TEST DOUBLE FIRMWARE")
    return z.read("log/build.log")


async def test_a_build_mounts_its_own_folder_only_and_keeps_no_cache(
    dclient: httpx.AsyncClient,
    docker_settings: Settings,
    docker_client: DockerClient,
    build_containers: Events,
) -> None:
    """Attack: a build (its layout's code running in the compiler) writes objects where
    another client's build, or its own client's next one, will find them. Nothing to
    write to: a user's layout, the stock layout and a one-key edit of it alike see their
    own folder and no other volume, with ccache off; the shared volume of an older
    release, left on the engine, is not mounted; no build leaves a volume behind."""
    old_shared = f"{docker_settings.instance}-ccache"
    docker_client.volumes.create(old_shared)  # a deployment from before
    try:
        for layout in (ktype(), _stock(docker_settings), _one_key_changed(docker_settings)):
            log = await _build_log(dclient, layout)
            (mounts,) = _MOUNTS.findall(log)
            assert mounts.split() == [b"/mnt/kiisrv"], log.decode(errors="replace")
            assert b"ccache disabled" in log and b"ccache on" not in log
            assert b" @@@@@ Ccache=disabled" in log
        left = {
            v.name
            for v in docker_client.volumes.list()
            if v.name.startswith(docker_settings.instance)
        }
        assert left == {old_shared}
        assert len(build_containers.created()) == 3 and build_containers.running() == []
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.volumes.get(old_shared).remove(force=True)

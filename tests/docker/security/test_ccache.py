"""Attacks through the ccaches, on the real engine with the test-double image.

Every build used to mount one ccache volume writable: a request could leave objects
there that the next user's build (same headers, other layout) links into its
firmware, and later a shared cache that stock builds wrote was what a compromised
server would poison first. Now no cache is shared between clients: each client's
builds write a ccache volume of their own, so a user's repeated edits hit each other's
objects; no other client's build mounts it.

The test double's firmware step looks up and stores one object per generated header as
ccache would, and says which volumes it sees mounted. The volumes are then looked at
from outside.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import secrets
import time
import zipfile
from typing import Any

import docker.errors
import httpx
import pytest
from docker import DockerClient

from kiisrv import ccache, retention
from kiisrv.engine import Engine
from kiisrv.settings import Settings
from tests.helpers import TEST_PREFIX, Events, ktype, request

pytestmark = pytest.mark.anyio

# The test double's lines (tests/controller-double/Keyboards/stand-in-firmware.sh): one
# object per generated header, named by its content, looked up and stored as ccache would.
_MARK = rb"(\.kiisrv-test-double-(?:defs|keymap)-[0-9a-f]+)"
_LOOKUP = re.compile(rb"ccache (kll_defs\.h|generatedKeymap\.h) (hit local|miss) " + _MARK)
_MOUNTS = re.compile(rb"\(test double\): mounts: ([^\n]*)")


def _lookups(log: bytes) -> dict[str, tuple[str, str]]:
    """What each header's object did: ``{"kll_defs.h": ("hit local", mark)}``."""
    return {m[1].decode(): (m[2].decode(), m[3].decode()) for m in _LOOKUP.finditer(log)}


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


def _in_volume(docker_client: DockerClient, image: str, volume: str) -> set[str]:
    """A ccache volume's entries, seen from a container."""
    out = docker_client.containers.run(
        image,
        entrypoint=["ls", "-A", "/mnt/ccache"],
        volumes={volume: {"bind": "/mnt/ccache", "mode": "ro"}},
        name=f"{TEST_PREFIX}ccache-ls-{secrets.token_hex(3)}",
        network_disabled=True,
        remove=True,
    )
    return set(out.decode().split())


async def test_a_build_mounts_its_own_folder_and_its_clients_ccache_only(
    dclient: httpx.AsyncClient,
    docker_settings: Settings,
    docker_client: DockerClient,
    build_containers: Events,
) -> None:
    """Attack: a build (its layout's code running in the compiler) writes objects where
    another client's build, or every build, will find them. Nothing to write to: the
    build sees its own folder and its client's ccache, and no other volume; the stock
    layout's build is no different; the old shared volume, if it exists, is not mounted."""
    docker_client.volumes.create(docker_settings.ccache_volume)  # a deployment from before
    for layout in (ktype(), _stock(docker_settings), _one_key_changed(docker_settings)):
        log = await _build_log(dclient, layout)
        (mounts,) = _MOUNTS.findall(log)
        assert mounts.split() == [b"/mnt/ccache", b"/mnt/kiisrv"], log.decode(errors="replace")
        assert b"ccache disabled" not in log and b"building without ccache" not in log
    assert docker_settings.ccache_volume not in _client_volumes(docker_client, docker_settings)


def _client_volumes(docker_client: DockerClient, settings: Settings) -> set[str]:
    prefix = f"{settings.ccache_volume}-c"
    return {
        v.name
        for v in docker_client.volumes.list(filters={"name": prefix})
        if v.name.startswith(prefix)
    }


async def test_a_clients_edits_hit_its_own_ccache_and_no_other_client_reads_it(
    dclient: httpx.AsyncClient,
    docker_settings: Settings,
    docker_client: DockerClient,
    controller_image: str,
    build_containers: Events,
) -> None:
    """A user editing a layout over and over stays fast: the second edit hits what the
    first left in that client's own ccache (in the double, the kll_defs.h object: a
    one-key change keeps the counts). Attack: client A plants objects for client B.
    Expected: B's build misses them (B has a cache of its own), B's volume never holds
    A's objects, and neither volume name holds an address."""
    app = dclient.app  # type: ignore[attr-defined]
    b_address = "198.51.100.23"
    first = copy.deepcopy(_stock(docker_settings))
    first["matrix"][1]["layers"]["0"]["key"] = "Y"
    second = _one_key_changed(docker_settings)
    third = copy.deepcopy(_stock(docker_settings))
    third["matrix"][2]["layers"]["0"]["key"] = "X"

    log = await _build_log(dclient, first)  # client A: 203.0.113.7 (helpers.app_client)
    a_first = _lookups(log)
    assert a_first["kll_defs.h"][0] == "miss", log.decode(errors="replace")
    (a_volume,) = _client_volumes(docker_client, docker_settings)
    assert {mark for _, mark in a_first.values()} <= _in_volume(
        docker_client, controller_image, a_volume
    )

    log = await _build_log(dclient, second)
    assert _lookups(log)["kll_defs.h"] == ("hit local", a_first["kll_defs.h"][1]), log.decode(
        errors="replace"
    )
    assert _lookups(log)["generatedKeymap.h"][0] == "miss"

    transport = httpx.ASGITransport(app=app, client=(b_address, 1234))
    async with httpx.AsyncClient(transport=transport, base_url="http://kiisrv.test") as b:
        log = await _build_log(b, third)
    assert _lookups(log)["kll_defs.h"] == ("miss", a_first["kll_defs.h"][1]), log.decode(
        errors="replace"
    )
    volumes = _client_volumes(docker_client, docker_settings)
    (b_volume,) = volumes - {a_volume}
    a_marks = _in_volume(docker_client, controller_image, a_volume)
    b_marks = _in_volume(docker_client, controller_image, b_volume)
    assert a_first["generatedKeymap.h"][1] in a_marks
    assert a_first["generatedKeymap.h"][1] not in b_marks
    listed = " ".join(v.name for v in docker_client.volumes.list())
    for address in ("203.0.113.7", b_address):
        assert address not in listed and address.replace(".", "-") not in listed


async def test_the_same_layout_from_two_clients_is_one_build(
    dclient: httpx.AsyncClient,
    docker_settings: Settings,
    build_containers: Events,
) -> None:
    """The client is not part of the build's hash: the second client gets the first's zip."""
    app = dclient.app  # type: ignore[attr-defined]
    layout = _one_key_changed(docker_settings)
    first = await dclient.post("/", json=request(layout))
    transport = httpx.ASGITransport(app=app, client=("198.51.100.24", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://kiisrv.test") as b:
        second = await b.post("/", json=request(layout))
    assert first.json()["filename"] == second.json()["filename"]
    assert len(build_containers.created()) == 1


async def test_the_pruner_removes_client_volumes_unused_for_days_and_keeps_recent_ones(
    docker_settings: Settings, docker_client: DockerClient, build_containers: Events
) -> None:
    """Per-client volumes pile up: one unused for longer than KIISRV_CCACHE_CLIENT_DAYS
    goes, a recent one stays, and so does every other volume."""
    settings = docker_settings.replace(ccache_client_days=14)
    old, recent, unrecorded = (
        ccache.client_volume(settings, secrets.token_hex(10)) for _ in range(3)
    )
    for name in (old, recent, unrecorded, settings.ccache_volume):
        docker_client.volumes.create(name)
    other = docker_client.volumes.create(f"{TEST_PREFIX}not-a-ccache-{secrets.token_hex(3)}")
    try:
        ccache.record_use(settings, old.removeprefix(ccache.client_volume_prefix(settings)))
        ccache.record_use(settings, recent.removeprefix(ccache.client_volume_prefix(settings)))
        stale = time.time() - 20 * 86400
        os.utime(ccache.uses_dir(settings) / old, (stale, stale))
        engine = Engine(settings.docker_url, settings.engine_timeout)
        try:
            removed = await retention.prune_ccache_volumes(settings, engine)
        finally:
            engine.close()
        assert removed == [old]
        left = {v.name for v in docker_client.volumes.list()}
        assert old not in left
        assert {recent, unrecorded, settings.ccache_volume, other.name} <= left
        assert not (ccache.uses_dir(settings) / old).exists()

        capped = settings.replace(ccache_clients=1)  # the oldest go past the cap
        engine = Engine(settings.docker_url, settings.engine_timeout)
        try:
            assert len(await retention.prune_ccache_volumes(capped, engine)) == 1
        finally:
            engine.close()
        assert len(_client_volumes(docker_client, settings)) == 1
    finally:
        for name in (recent, unrecorded, other.name):
            with contextlib.suppress(docker.errors.NotFound):
                docker_client.volumes.get(name).remove(force=True)

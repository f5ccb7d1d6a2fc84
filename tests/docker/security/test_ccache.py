"""Attacks through the ccaches, on the real engine with the test-double image.

Every build used to mount the one ccache volume writable: a request could leave
objects there that the next user's build (same headers, other layout) links into its
firmware. Now only builds whose inputs the server chose (a stock layout, unmodified)
may write it; every other build mounts it read-only, as ccache's secondary storage,
and still reads its hits. Each client's builds write a ccache volume of their own, so
a user's repeated edits hit each other's objects; no other client's build reads it.

The test double's firmware step looks up and stores one object per generated header
as ccache would, and plays the attacker: on a read-only secondary storage it writes
anyway, by hand (ccache would obey ``|read-only``), and says whether it could. The
volumes are then looked at from outside.
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
_WROTE = re.compile(rb"ccache remote writable: wrote " + _MARK)
_REFUSED = re.compile(
    rb"ccache remote read-only \((\d+) entries\): writing " + _MARK + rb" was refused"
)
_LOOKUP = re.compile(
    rb"ccache (kll_defs\.h|generatedKeymap\.h) (hit local|hit remote|miss) " + _MARK
)


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


def _in_volume(
    docker_client: DockerClient, settings: Settings, image: str, volume: str | None = None
) -> set[str]:
    """A ccache volume's entries (the shared one by default), seen from a container."""
    out = docker_client.containers.run(
        image,
        entrypoint=["ls", "-A", "/mnt/ccache"],
        volumes={volume or settings.ccache_volume: {"bind": "/mnt/ccache", "mode": "ro"}},
        name=f"{TEST_PREFIX}ccache-ls-{secrets.token_hex(3)}",
        network_disabled=True,
        remove=True,
    )
    return set(out.decode().split())


async def test_a_request_build_cannot_write_into_the_shared_ccache(
    dclient: httpx.AsyncClient,
    docker_settings: Settings,
    docker_client: DockerClient,
    controller_image: str,
    build_containers: Events,
) -> None:
    """Attack: a user's build (not a stock layout) writes a file into the shared ccache,
    by hand, on a volume this very build creates. Expected: the write is refused by the
    read-only mount, the file is absent afterwards, and the build still succeeds with
    ccache on (its own cache, not disabled). A stock build after it can still seed the
    volume: created under a read-only mount, it keeps the image's mode."""
    log = await _build_log(dclient, ktype())
    refused = [m[2].decode() for m in _REFUSED.finditer(log)]
    assert len(refused) == 2, log.decode(errors="replace")  # kll_defs.h's and the keymap's
    assert b"ccache disabled" not in log and b"building without ccache" not in log
    assert b"was written into it" not in log
    assert not set(refused) & _in_volume(docker_client, docker_settings, controller_image)

    log = await _build_log(dclient, _stock(docker_settings))
    wrote = {m[1].decode() for m in _WROTE.finditer(log)}
    assert len(wrote) == 2, log.decode(errors="replace")
    assert wrote <= _in_volume(docker_client, docker_settings, controller_image)


async def test_a_stock_build_seeds_the_ccache_and_request_builds_read_it(
    dclient: httpx.AsyncClient,
    docker_settings: Settings,
    docker_client: DockerClient,
    controller_image: str,
    build_containers: Events,
) -> None:
    """Attack: the stock layout with one key changed, after the stock layout was built:
    its objects would land where the stock build's are. Expected: it hits what the stock
    build wrote (ccache's secondary storage), its own write there is refused, and the
    shared volume holds the stock build's objects only."""
    log = await _build_log(dclient, _stock(docker_settings))
    seeded = {m[1].decode() for m in _WROTE.finditer(log)}
    assert len(seeded) == 2, log.decode(errors="replace")

    log = await _build_log(dclient, _one_key_changed(docker_settings))
    looked = _lookups(log)
    assert looked["kll_defs.h"][0] == "hit remote", log.decode(errors="replace")
    assert looked["generatedKeymap.h"][0] == "miss"
    refused = [m for m in _REFUSED.finditer(log)]
    assert refused and all(int(m[1]) >= 2 for m in refused)  # the stock objects are readable
    # Still the fast path: the ccache settings are not part of the configure a warm
    # tree is keyed on (warmtree.IGNORED_ENV).
    assert b"@@@@@ Build=warm from /warm/k-type/" in log, log.decode(errors="replace")
    planted = {m[2].decode() for m in refused}
    assert planted - seeded
    assert _in_volume(docker_client, docker_settings, controller_image) & planted <= seeded


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
    Expected: B's build misses them (B has a cache of its own, A cannot write the shared
    one), B's volume never holds A's objects, and neither volume name holds an address."""
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
        docker_client, docker_settings, controller_image, a_volume
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
    a_marks = _in_volume(docker_client, docker_settings, controller_image, a_volume)
    b_marks = _in_volume(docker_client, docker_settings, controller_image, b_volume)
    assert a_first["generatedKeymap.h"][1] in a_marks
    assert a_first["generatedKeymap.h"][1] not in b_marks
    assert not {m for m in _in_volume(docker_client, docker_settings, controller_image)} & (
        a_marks | b_marks
    )
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
    goes, a recent one stays, and so do the shared volume and every other volume."""
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

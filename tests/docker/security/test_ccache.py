"""Attacks through the shared ccache, on the real engine with the test-double image.

Every build used to mount the one ccache volume writable: a request could leave
objects there that the next user's build (same headers, other layout) links into its
firmware. Now only builds whose inputs the server chose (a stock layout, unmodified)
may write it; every other build mounts it read-only, and still reads its hits.

The test double's firmware step plays the attacker: with ``CCACHE_READONLY=1`` it
writes a file into ``$CCACHE_DIR`` anyway, by hand (not through ccache, which would
obey the variable), and says whether it could. The volume is then looked at from
outside.
"""

from __future__ import annotations

import copy
import io
import json
import re
import secrets
import zipfile
from typing import Any

import httpx
import pytest
from docker import DockerClient

from kiisrv.settings import Settings
from tests.helpers import TEST_PREFIX, Events, ktype, request

pytestmark = pytest.mark.anyio

_WROTE = re.compile(rb"ccache writable: wrote (\.kiisrv-test-double-[0-9a-f]+)")
_REFUSED = re.compile(
    rb"ccache read-only \((\d+) entries\): writing (\.kiisrv-test-double-[0-9a-f]+) was refused"
)


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


def _in_volume(docker_client: DockerClient, settings: Settings, image: str) -> set[str]:
    """The ccache volume's entries, seen from a container of its own."""
    out = docker_client.containers.run(
        image,
        entrypoint=["ls", "-A", "/mnt/ccache"],
        volumes={settings.ccache_volume: {"bind": "/mnt/ccache", "mode": "ro"}},
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
    ccache on (read-only, not disabled). A stock build after it can still seed the
    volume: created under a read-only mount, it keeps the image's mode."""
    log = await _build_log(dclient, ktype())
    refused = _REFUSED.search(log)
    assert refused, log.decode(errors="replace")
    assert b"ccache disabled" not in log and b"building without ccache" not in log
    assert b"was written into it" not in log
    assert refused[2].decode() not in _in_volume(docker_client, docker_settings, controller_image)

    log = await _build_log(dclient, _stock(docker_settings))
    wrote = _WROTE.search(log)
    assert wrote, log.decode(errors="replace")
    assert wrote[1].decode() in _in_volume(docker_client, docker_settings, controller_image)


async def test_a_stock_build_seeds_the_ccache_and_request_builds_read_it(
    dclient: httpx.AsyncClient,
    docker_settings: Settings,
    docker_client: DockerClient,
    controller_image: str,
    build_containers: Events,
) -> None:
    """Attack: the stock layout with one key changed, after the stock layout was built:
    its objects would land where the stock build's are. Expected: it reads what the
    stock build wrote (the entry is visible to it), its own write is refused, and the
    volume holds the stock build's file only."""
    log = await _build_log(dclient, _stock(docker_settings))
    wrote = _WROTE.search(log)
    assert wrote, log.decode(errors="replace")
    seeded = wrote[1].decode()

    log = await _build_log(dclient, _one_key_changed(docker_settings))
    refused = _REFUSED.search(log)
    assert refused, log.decode(errors="replace")
    assert int(refused[1]) >= 1  # the stock build's entries are readable
    # Still the fast path: the read-only ccache's settings are not part of the
    # configure a warm tree is keyed on (warmtree.IGNORED_ENV).
    assert b"@@@@@ Build=warm from /warm/k-type/" in log, log.decode(errors="replace")
    planted = refused[2].decode()
    assert planted != seeded
    entries = _in_volume(docker_client, docker_settings, controller_image)
    assert seeded in entries and planted not in entries

"""Attacks on the socket proxy's decisions themselves, as a compromised server (holding
only the proxy's port) would make them against the real ``kiisrv socket-proxy`` on a
real engine, beside a neighbour it must never reach.

The neighbour is what an operator really runs beside kiisrv: a container with a
secret in its environment and a host folder bind-mounted. Each test fails on the
proxy that checked one object and forwarded the caller's string (``ea73653``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest
from docker import DockerClient

from kiisrv.build.containers import LABEL_INSTANCE, LABEL_MANAGED
from kiisrv.settings import Settings
from tests.helpers import TEST_IMAGE_PREFIX, TEST_PREFIX, Events, socket_proxy

REFUSED = "refused by kiisrv socket proxy"
API = "/v1.41"
IMAGE = f"{TEST_IMAGE_PREFIX}controller-057:latest"


@pytest.fixture
def proxy(docker_settings: Settings, build_containers: Events, tmp_path: Path) -> Iterator[str]:
    with socket_proxy(
        docker_settings, tmp_path / "proxy.log", KIISRV_PROXY_BODY_TIMEOUT="2"
    ) as url:
        yield url.replace("tcp://", "http://")


@pytest.fixture
def neighbour(docker_client: DockerClient, tmp_path: Path) -> Iterator[Any]:
    """A stopped container that is not kiisrv's, with a host folder bind-mounted and a
    secret in its environment: starting it writes into the host folder as root."""
    folder = tmp_path / "neighbour-host-folder"
    folder.mkdir()
    (folder / "secret.txt").write_text("the neighbour's host file\n")
    container = docker_client.containers.create(
        "debian:bookworm-slim",
        ["sh", "-c", "id > /host/started"],
        name=f"{TEST_PREFIX}neighbour-{secrets.token_hex(4)}",
        environment={"REDIS_PASSWORD": "s3cret-" + secrets.token_hex(8)},
        volumes={str(folder): {"bind": "/host", "mode": "rw"}},
        network_mode="none",
    )
    container.folder = folder
    yield container
    container.remove(force=True)


def _untouched(neighbour: Any) -> None:
    """The neighbour never ran and its host folder holds what it held."""
    assert sorted(p.name for p in neighbour.folder.iterdir()) == ["secret.txt"]
    assert (neighbour.folder / "secret.txt").read_text() == "the neighbour's host file\n"
    neighbour.reload()
    assert neighbour.attrs["State"]["StartedAt"].startswith("0001-01-01"), "it was started"


def _unique_prefix(docker_client: DockerClient, ident: str) -> str:
    """The shortest prefix (6+ characters) of ``ident`` no other container's id has."""
    others = [c.id for c in docker_client.containers.list(all=True) if c.id != ident]
    for n in range(6, 64):
        if not any(o.startswith(ident[:n]) for o in others):
            return ident[:n]
    return ident


def _decoy(docker_client: DockerClient, settings: Settings, name: str) -> str:
    """A container of this deployment's named ``name``: made beside the proxy (whose
    own name rule refuses such a name: test_names_that_shadow_ids_are_refused), so the
    binding is tested on its own."""
    return str(
        docker_client.api.create_container(
            IMAGE,
            command=["true"],
            name=name,
            user=settings.build_user,
            labels={LABEL_MANAGED: "1", LABEL_INSTANCE: settings.instance},
            host_config=docker_client.api.create_host_config(network_mode="none"),
        )["Id"]
    )


def _tar(name: str, data: bytes) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o4755  # a setuid file, if it ever landed on the host
        t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_a_call_checked_on_our_container_never_lands_on_the_neighbour(
    proxy: str, docker_client: DockerClient, docker_settings: Settings, neighbour: Any
) -> None:
    """Attack: name a container of ours after the neighbour's id prefix, then delete it
    while 30 calls on that name are in flight. dockerd resolves a name that is gone as
    an id prefix: every call checked against our container would act on the neighbour
    (inspect its secret, start it, copy files into and out of its host folder).
    Refused in effect: every call goes to the id the check read; the neighbour never
    runs, its folder is untouched and no answer carries its secret. 20 rounds."""
    prefix = _unique_prefix(docker_client, neighbour.id)
    secret = neighbour.attrs["Config"]["Env"][0].split("=", 1)[1]
    planted = _tar("planted", b"#!/bin/sh\nid\n")
    answers: list[bytes] = []

    async def calls(client: httpx.AsyncClient) -> None:
        base = f"{API}/containers/{prefix}"
        attempts = [
            ("GET", f"{base}/json", None, {}),
            ("GET", f"{base}/logs", None, {"stdout": "1", "stderr": "1"}),
            ("POST", f"{base}/start", None, {}),
            ("POST", f"{base}/kill", None, {}),
            ("GET", f"{base}/archive", None, {"path": "/host/secret.txt"}),
            ("PUT", f"{base}/archive", planted, {"path": "/host"}),
        ]
        batch = [random.choice(attempts) for _ in range(29)]
        batch.insert(random.randrange(30), ("DELETE", base, None, {"force": "1"}))

        async def one(method: str, path: str, body: bytes | None, query: dict[str, str]) -> None:
            with contextlib.suppress(httpx.HTTPError):
                r = await client.request(method, path, content=body, params=query)
                answers.append(r.content)

        await asyncio.gather(*(one(*call) for call in batch))

    async def rounds() -> None:
        async with httpx.AsyncClient(base_url=proxy, timeout=30) as client:
            for _ in range(20):
                decoy = await asyncio.to_thread(_decoy, docker_client, docker_settings, prefix)
                await calls(client)
                with contextlib.suppress(docker.errors.NotFound):  # by id: the name may be gone
                    await asyncio.to_thread(docker_client.api.remove_container, decoy, force=True)

    asyncio.run(rounds())
    _untouched(neighbour)
    assert not [a for a in answers if secret.encode() in a or b"neighbour's host file" in a]


def test_names_that_shadow_ids_are_refused(proxy: str, docker_settings: Settings) -> None:
    """Attack: create a container named like an id (or another deployment's container).
    Refused: a container of kiisrv's is named ``<instance>-...``."""
    body = _build_body(docker_settings)
    for name in ["abcdef012345", f"{TEST_PREFIX}other-x", docker_settings.instance, ""]:
        r = httpx.post(f"{proxy}{API}/containers/create", params={"name": name}, json=body)
        assert r.status_code == 403, (name, r.text)
    r = httpx.post(f"{proxy}{API}/containers/create", json=body)  # no name at all
    assert r.status_code == 403


def test_the_proxy_is_no_oracle_of_other_containers(
    proxy: str, docker_client: DockerClient, neighbour: Any
) -> None:
    """Attack: tell apart "exists", "ambiguous prefix" and "missing" to enumerate every id
    on the host (505 requests did, through 500 / 403 / 404). Refused: one answer for
    all, whatever the reference."""
    prefix = _unique_prefix(docker_client, neighbour.id)
    references = [
        neighbour.id,
        neighbour.name,
        prefix,
        neighbour.id[:1],  # most likely ambiguous
        "0123456789abcdef0123",  # most likely missing
        "no-such-container",
    ]
    seen = set()
    for ref in references:
        r = httpx.get(f"{proxy}{API}/containers/{ref}/json")
        seen.add((r.status_code, r.content))
    assert len(seen) == 1, seen
    ((status, content),) = seen
    assert status == 403 and REFUSED.encode() in content


def _build_body(settings: Settings, **host: Any) -> dict[str, Any]:
    """A create body as kiisrv's builds send it (the Docker SDK's shape)."""
    return {
        "Image": IMAGE,
        "User": settings.build_user,
        "Cmd": ["true"],
        "Labels": {LABEL_MANAGED: "1", LABEL_INSTANCE: settings.instance},
        "NetworkDisabled": True,
        "HostConfig": {
            "Memory": 256 * 1024**2,
            "MemorySwap": 256 * 1024**2,
            "PidsLimit": 64,
            "NetworkMode": "none",
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "2"}},
            "Tmpfs": {"/tmp": "exec,mode=1777,size=64m"},
            **host,
        },
    }


def _create(proxy: str, settings: Settings, body: object) -> httpx.Response:
    name = f"{settings.instance}-attack-{secrets.token_hex(4)}"
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{proxy}{API}/containers/create",
        params={"name": name},
        content=raw,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )


def _ours(docker_client: DockerClient, settings: Settings) -> list[Any]:
    return docker_client.containers.list(
        all=True, filters={"label": f"{LABEL_INSTANCE}={settings.instance}"}
    )


def test_the_baseline_body_passes(
    proxy: str, docker_client: DockerClient, docker_settings: Settings
) -> None:
    """Not an attack: the body every case below changes in one place is created."""
    r = _create(proxy, docker_settings, _build_body(docker_settings))
    assert r.status_code == 201, r.text
    docker_client.api.remove_container(r.json()["Id"], force=True)


@pytest.mark.parametrize(
    ("attack", "host"),
    [
        ("memory without a ceiling", {"Memory": 2**62, "MemorySwap": 2**62}),
        ("unlimited swap", {"MemorySwap": -1}),
        ("more swap than memory", {"MemorySwap": 2 * 256 * 1024**2}),
        ("pids without a ceiling", {"PidsLimit": 2**63 - 1}),
        ("an unlimited tmpfs", {"Tmpfs": {"/tmp": "size=0,exec"}}),
        ("a tmpfs without a size", {"Tmpfs": {"/tmp": "exec"}}),
        ("a huge tmpfs", {"Tmpfs": {"/tmp": "size=1000g"}}),
        ("a writable /proc/sys", {"Tmpfs": {"/proc/sys": "rw"}}),
        ("a tmpfs with a device option", {"Tmpfs": {"/tmp": "size=1m,dev,suid"}}),
        ("CapDrop as a string", {"CapDrop": "NOTALL"}),
        ("CapDrop of one capability too", {"CapDrop": ["ALL", "CHOWN"]}),
        (
            "a log without a ceiling",
            {"LogConfig": {"Type": "json-file", "Config": {"max-size": "10g"}}},
        ),
        ("SecurityOpt of objects", {"SecurityOpt": [{}]}),
        ("Memory as a string", {"Memory": "2g", "MemorySwap": "2g"}),
        ("Memory as a boolean", {"Memory": True, "MemorySwap": True}),
    ],
)
def test_ceilings_and_types_hold(
    proxy: str,
    docker_client: DockerClient,
    docker_settings: Settings,
    attack: str,
    host: dict[str, Any],
) -> None:
    """Attack: a container that takes the host's memory, processes, disk or logs
    (each was created, 201), or a value of a type the rule did not expect (a 500).
    Refused: 403, nothing created."""
    r = _create(proxy, docker_settings, _build_body(docker_settings, **host))
    assert r.status_code == 403, (attack, r.status_code, r.text)
    assert REFUSED in r.json()["message"]
    assert _ours(docker_client, docker_settings) == []


@pytest.mark.parametrize(
    ("attack", "query"),
    [
        ("a link removed instead", {"link": "1"}),
        ("an unknown parameter", {"x": "1"}),
    ],
)
def test_unknown_query_parameters_are_refused(
    proxy: str,
    docker_client: DockerClient,
    docker_settings: Settings,
    attack: str,
    query: dict[str, str],
) -> None:
    r = _create(proxy, docker_settings, _build_body(docker_settings))
    ident = r.json()["Id"]
    try:
        d = httpx.delete(f"{proxy}{API}/containers/{ident}", params=query)
        assert d.status_code == 403, (attack, d.text)
        s = httpx.post(f"{proxy}{API}/containers/{ident}/start", params={"detachKeys": "ctrl-x"})
        assert s.status_code == 403
        c = httpx.post(
            f"{proxy}{API}/containers/create",
            params={"name": f"{docker_settings.instance}-x", "platform": "linux/arm64"},
            json=_build_body(docker_settings),
        )
        assert c.status_code == 403
    finally:
        docker_client.api.remove_container(ident, force=True)


def test_malformed_input_is_a_4xx_never_a_500(
    proxy: str, docker_client: DockerClient, docker_settings: Settings
) -> None:
    """Attack: bodies and paths the rule's code did not expect (each a 500, or a hang).
    Refused: 400 or 403, promptly; nothing created."""
    deep = b"[" * 50_000 + b"]" * 50_000
    assert _create(proxy, docker_settings, deep).status_code in (400, 403)
    assert _create(proxy, docker_settings, b"{not json").status_code in (400, 403)
    assert _create(proxy, docker_settings, [1, 2]).status_code == 403
    r = httpx.get(f"{proxy}{API}/containers/json%0a")
    assert r.status_code == 403
    r = httpx.get(f"{proxy}{API}/_ping%0a")
    assert r.status_code == 403
    assert _ours(docker_client, docker_settings) == []


def test_a_body_shorter_than_announced_is_cut_off(proxy: str, docker_settings: Settings) -> None:
    """Attack: announce a longer Content-Length than is sent and hold the connection
    (it hung with no timeout). Refused: 400 within KIISRV_PROXY_BODY_TIMEOUT (2 s here)."""
    import socket

    host, port = proxy.removeprefix("http://").split(":")
    body = json.dumps(_build_body(docker_settings)).encode()
    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(
            f"POST {API}/containers/create?name={docker_settings.instance}-slow HTTP/1.1\r\n"
            f"Host: x\r\nContent-Type: application/json\r\nContent-Length: {len(body) + 100}"
            "\r\n\r\n".encode()
            + body
        )
        started = time.monotonic()
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert time.monotonic() - started < 10


def test_engine_errors_say_only_their_status(
    proxy: str, docker_client: DockerClient, docker_settings: Settings
) -> None:
    """Attack: read the engine's error texts, which name what else is on the host (a
    missing image, a volume's user). Refused in effect: status and a fixed message."""
    body = _build_body(docker_settings)
    body["Image"] = f"{TEST_IMAGE_PREFIX}controller-999:latest"
    r = _create(proxy, docker_settings, body)
    assert r.status_code == 404
    assert r.json() == {"message": "the Docker engine found no such object"}


def test_only_controller_images_are_seen(proxy: str) -> None:
    """Attack: list and inspect every image on the host. Refused: the list holds the
    controller images only, under their controller names, and no other can be inspected."""
    listed = httpx.get(f"{proxy}{API}/images/json").json()
    tags = {t for image in listed for t in image["RepoTags"]}
    assert IMAGE in tags
    assert all(t.startswith(f"{TEST_IMAGE_PREFIX}controller-") for t in tags), tags
    assert httpx.get(f"{proxy}{API}/images/{IMAGE}/json").status_code == 200
    for other in ["debian:bookworm-slim", "debian", f"{TEST_IMAGE_PREFIX}controller-057:other"]:
        r = httpx.get(f"{proxy}{API}/images/{other}/json")
        assert r.status_code == 403, other


# -- volumes: none but a build's own -------------------------------------------------


@pytest.fixture
def volumes(docker_client: DockerClient) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for name in made:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.volumes.get(name).remove(force=True)


@pytest.mark.parametrize(
    ("what", "made"),
    [
        ("nobody's yet (dockerd would create it)", None),
        ("made outside kiisrv, no labels", {}),
        (
            "labelled as this deployment's",
            {"labels": {LABEL_MANAGED: "1", LABEL_INSTANCE: "(ours)"}},
        ),
        (
            "a bind of a host folder",
            {
                "driver_opts": {"type": "none", "o": "bind", "device": "/tmp"},
                "labels": {LABEL_MANAGED: "1", LABEL_INSTANCE: "(ours)"},
            },
        ),
    ],
)
def test_no_named_volume_is_mounted_created_listed_or_removed(
    proxy: str,
    docker_client: DockerClient,
    docker_settings: Settings,
    volumes: list[str],
    what: str,
    made: dict[str, Any] | None,
) -> None:
    """Attack: mount a volume by name (writable or not), create one with this
    deployment's labels or a host folder behind it, list the host's volumes, delete one.
    Refused, every one: 403, nothing created, nothing removed. A build mounts its own
    folder only, an anonymous volume, so kiisrv never names a volume."""
    name = f"{docker_settings.instance}-ccache-{secrets.token_hex(4)}"
    volumes.append(name)
    if made is not None:
        made = json.loads(json.dumps(made).replace("(ours)", docker_settings.instance))
        docker_client.volumes.create(name, **made)
    for read_only in (False, True):
        body = _build_body(
            docker_settings,
            Mounts=[{"Type": "volume", "Source": name, "Target": "/mnt/x", "ReadOnly": read_only}],
        )
        r = _create(proxy, docker_settings, body)
        assert r.status_code == 403, (what, r.text)
    labels = {LABEL_MANAGED: "1", LABEL_INSTANCE: docker_settings.instance}
    other = f"{name}-new"
    volumes.append(other)
    for call in (
        httpx.post(f"{proxy}{API}/volumes/create", json={"Name": other, "Labels": labels}),
        httpx.get(f"{proxy}{API}/volumes"),
        httpx.get(f"{proxy}{API}/volumes/{name}"),
        httpx.delete(f"{proxy}{API}/volumes/{name}"),
    ):
        assert call.status_code == 403, (what, call.request.url, call.text)
    left = {v.name for v in docker_client.volumes.list()}
    assert (name in left) == (made is not None) and other not in left
    assert _ours(docker_client, docker_settings) == []

"""Attacks on the host through the socket proxy, as a compromised server would make them.

The real ``kiisrv socket-proxy`` runs on the real engine socket; each attack is sent
with the Docker SDK, as kiisrv's own calls are. A refusal is a 403 whose message
starts "refused by kiisrv socket proxy", and the engine never sees the call: no
container is created, the foreign container is untouched.
"""

from __future__ import annotations

import asyncio
import io
import secrets
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from docker import DockerClient
from docker.types import Mount

from kiisrv.build.containers import LABEL_INSTANCE, LABEL_MANAGED
from kiisrv.settings import Settings
from tests.helpers import (
    TEST_IMAGE_PREFIX,
    TEST_PREFIX,
    Events,
    app_client,
    ktype,
    request,
    socket_proxy,
)

REFUSED = "refused by kiisrv socket proxy"


@pytest.fixture
def proxy(docker_settings: Settings, build_containers: Events, tmp_path: Path) -> Iterator[str]:
    with socket_proxy(docker_settings, tmp_path / "proxy.log") as url:
        yield url


@pytest.fixture
def through(proxy: str) -> Iterator[DockerClient]:
    """A Docker client whose engine is the proxy."""
    client = docker.DockerClient(base_url=proxy, version="auto", timeout=60)
    yield client
    client.close()


def create(
    client: DockerClient, settings: Settings, mounts: list[Mount] | None = None, **change: Any
) -> str:
    """Create a container shaped as Engine.start shapes a build, with ``change`` applied
    (host config keys, or image/user/labels); the name it was asked under."""
    name = f"{settings.instance}-attack-{secrets.token_hex(4)}"
    config = {
        "image": f"{TEST_IMAGE_PREFIX}controller-057:latest",
        "user": settings.build_user,
        "labels": {LABEL_MANAGED: "1", LABEL_INSTANCE: settings.instance},
    }
    host: dict[str, Any] = {
        "mounts": mounts or [],
        "mem_limit": "256m",
        "memswap_limit": "256m",
        "pids_limit": 64,
        "network_mode": "none",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "log_config": {"type": "json-file", "config": {"max-size": "1m"}},
    }
    for key, value in change.items():
        (config if key in config else host)[key] = value
    client.api.create_container(
        command=["true"],
        name=name,
        host_config=client.api.create_host_config(**host),
        **config,
    )
    return name


def assert_refused(exc: docker.errors.APIError) -> None:
    assert exc.status_code == 403, exc
    assert REFUSED in str(exc.explanation), exc.explanation


def test_a_build_shaped_container_passes(
    through: DockerClient, docker_client: DockerClient, docker_settings: Settings
) -> None:
    """Not an attack: the baseline every attack below changes in one place is accepted,
    so their refusals are for that one change."""
    name = create(through, docker_settings)
    through.api.remove_container(name, force=True)


@pytest.mark.parametrize(
    ("attack", "change"),
    [
        ("privileged container", {"privileged": True}),
        ("host root by Binds", {"binds": ["/:/host"]}),
        ("host network", {"network_mode": "host"}),
        ("host pid namespace", {"pid_mode": "host"}),
        ("CAP_SYS_ADMIN", {"cap_add": ["SYS_ADMIN"]}),
        ("a host device", {"devices": ["/dev/kmsg:/dev/kmsg:rwm"]}),
        ("no seccomp", {"security_opt": ["no-new-privileges", "seccomp=unconfined"]}),
        ("root user", {"user": "0:0"}),
        ("an image of the attacker's choice", {"image": "debian:bookworm-slim"}),
        ("a container outside kiisrv's labels", {"labels": {}}),
        ("unlimited log on the host's disk", {"log_config": {"type": "json-file"}}),
    ],
)
def test_dangerous_create_refused(
    through: DockerClient,
    docker_client: DockerClient,
    docker_settings: Settings,
    attack: str,
    change: dict[str, Any],
) -> None:
    """Attack: create a container that is root on the host (or escapes the build limits).
    Refused: 403 from the proxy, and the engine creates nothing."""
    with pytest.raises(docker.errors.APIError) as refused:
        create(through, docker_settings, **change)
    assert_refused(refused.value)
    assert docker_client.containers.list(all=True, filters={"name": f"{TEST_PREFIX}attack-"}) == []


def test_bind_mount_of_host_root_refused(
    through: DockerClient, docker_client: DockerClient, docker_settings: Settings
) -> None:
    """Attack: the host's / by a Mounts bind (the API kiisrv itself uses for its folders).
    Refused: 403, nothing created."""
    with pytest.raises(docker.errors.APIError) as refused:
        create(through, docker_settings, mounts=[Mount("/host", "/", type="bind")])
    assert_refused(refused.value)
    assert docker_client.containers.list(all=True, filters={"name": f"{TEST_PREFIX}attack-"}) == []


@pytest.mark.parametrize("where", ["config", "builds/.work"])
def test_a_symlink_to_the_host_root_below_the_data_folder_is_refused(
    through: DockerClient, docker_client: DockerClient, docker_settings: Settings, where: str
) -> None:
    """Attack: the server can write in its data folder, so it replaces a build's folder
    by a symlink to / and asks for a bind mount of it: the path text is below the data
    folder, but dockerd follows the link on the host. Refused: every bind mount is,
    whatever its path (builds get their files through the archive API)."""
    link = docker_settings.data_dir / where / secrets.token_hex(16)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to("/")
    with pytest.raises(docker.errors.APIError) as refused:
        create(through, docker_settings, mounts=[Mount("/mnt/builds", str(link), type="bind")])
    assert_refused(refused.value)
    assert docker_client.containers.list(all=True, filters={"name": f"{TEST_PREFIX}attack-"}) == []


@pytest.mark.parametrize("where", ["config/h", "builds/.work/h", "/tmp"])
def test_no_bind_mount_passes(
    through: DockerClient, docker_client: DockerClient, docker_settings: Settings, where: str
) -> None:
    """Attack: any host folder, even a plain one where kiisrv used to mount its own.
    Refused: 403, nothing created."""
    source = docker_settings.data_dir / where
    source.mkdir(parents=True, exist_ok=True)
    with pytest.raises(docker.errors.APIError) as refused:
        create(through, docker_settings, mounts=[Mount("/mnt/x", str(source), type="bind")])
    assert_refused(refused.value)
    with pytest.raises(docker.errors.APIError) as refused:
        create(through, docker_settings, binds=[f"{source}:/mnt/x"])
    assert_refused(refused.value)
    assert docker_client.containers.list(all=True, filters={"name": f"{TEST_PREFIX}attack-"}) == []


def _tar(name: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo(name)
        info.size = 3
        t.addfile(info, io.BytesIO(b"hi\n"))
    return buf.getvalue()


def test_a_build_container_gets_its_files_through_the_archive_api(
    through: DockerClient, docker_settings: Settings
) -> None:
    """Not an attack: an anonymous volume, and files in and out of kiisrv's own
    container, are what every build now does instead of bind mounts."""
    name = create(through, docker_settings, mounts=[Mount("/mnt/io", None, type="volume")])
    try:
        assert through.api.put_archive(name, "/mnt/io", _tar("in.kll"))
        stream, _ = through.api.get_archive(name, "/mnt/io/in.kll")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as t:
            member = t.extractfile("in.kll")
            assert member is not None and member.read() == b"hi\n"
    finally:
        through.api.remove_container(name, force=True, v=True)


@pytest.fixture
def foreign(docker_client: DockerClient) -> Iterator[Any]:
    """A neighbour on the same engine (say, Redis) with a secret in its environment."""
    container = docker_client.containers.run(
        "debian:bookworm-slim",
        ["sleep", "300"],
        name=f"{TEST_PREFIX}foreign-{secrets.token_hex(4)}",
        environment={"REDIS_PASSWORD": "s3cret-" + secrets.token_hex(8)},
        detach=True,
        network_mode="none",
    )
    yield container
    container.remove(force=True)


@pytest.mark.parametrize(
    ("attack", "call"),
    [
        ("inspect (its env holds the password)", lambda api, c: api.inspect_container(c)),
        ("read its logs", lambda api, c: api.logs(c)),
        ("kill it", lambda api, c: api.kill(c)),
        ("remove it", lambda api, c: api.remove_container(c, force=True)),
        ("wait on it", lambda api, c: api.wait(c, timeout=5)),
        ("start it", lambda api, c: api.start(c)),
        ("plant a file in it", lambda api, c: api.put_archive(c, "/tmp", _tar("planted"))),
        ("copy its files out", lambda api, c: b"".join(api.get_archive(c, "/etc/hostname")[0])),
    ],
)
def test_foreign_container_untouchable(
    through: DockerClient, foreign: Any, attack: str, call: Any
) -> None:
    """Attack: act on a container that is not one of kiisrv's builds.
    Refused: 403 for the id and for the name; the container runs on, its secret unread."""
    for ref in (foreign.id, foreign.name):
        with pytest.raises(docker.errors.APIError) as refused:
            call(through.api, ref)
        assert_refused(refused.value)
        assert "s3cret" not in str(refused.value.explanation)
    foreign.reload()
    assert foreign.status == "running"


def test_another_deployments_build_container_untouchable(
    through: DockerClient, docker_client: DockerClient
) -> None:
    """Attack: kill the build of another kiisrv instance on the same engine (its label
    says managed, but not ours). Refused: 403."""
    other = docker_client.containers.create(
        "debian:bookworm-slim",
        ["true"],
        name=f"{TEST_PREFIX}other-{secrets.token_hex(4)}",
        labels={LABEL_MANAGED: "1", LABEL_INSTANCE: "someone-else"},
    )
    try:
        with pytest.raises(docker.errors.APIError) as refused:
            through.api.remove_container(other.id, force=True)
        assert_refused(refused.value)
    finally:
        other.remove(force=True)


def test_container_list_shows_no_foreign_container(
    through: DockerClient, foreign: Any, docker_settings: Settings
) -> None:
    """Attack: list every container (names, images, labels of the neighbours).
    Refused in effect: the list holds kiisrv's build containers only."""
    mine = create(through, docker_settings)
    try:
        listed = {c["Names"][0].lstrip("/") for c in through.api.containers(all=True)}
        assert mine in listed and foreign.name not in listed
        assert all(
            n.startswith(docker_settings.instance + "-")
            for n in listed
            if n.startswith(TEST_PREFIX)
        )
    finally:
        through.api.remove_container(mine, force=True)


def test_a_real_build_through_the_proxy(
    proxy: str, docker_settings: Settings, build_containers: Events
) -> None:
    """Not an attack: with every rule above, a build still runs, and its zip is served."""

    async def build() -> tuple[int, int]:
        async with app_client(docker_settings.replace(docker_url=proxy)) as client:
            r = await client.post("/", json=request(ktype()))
            name = r.json()["filename"].rsplit("/", 1)[1]
            return r.status_code, (await client.get(f"/tmp/{name}")).status_code

    assert asyncio.run(build()) == (200, 200)
    assert len(build_containers.created()) == 1


def test_no_volume_can_be_listed_removed_or_mounted(
    through: DockerClient, docker_client: DockerClient, docker_settings: Settings
) -> None:
    """Attack: list the host's volumes, remove the old shared ccache or a neighbour's
    volume, mount either. Refused: kiisrv needs no volume call at all (a build's folder
    is an anonymous volume, removed with its container)."""
    shared = docker_client.volumes.create(f"{docker_settings.instance}-ccache")
    neighbour = docker_client.volumes.create(f"{TEST_PREFIX}neighbour-{secrets.token_hex(3)}")
    try:
        with pytest.raises(docker.errors.APIError) as refused:
            through.api.volumes()
        assert_refused(refused.value)
        for name in (shared.name, neighbour.name):
            with pytest.raises(docker.errors.APIError) as refused:
                through.api.remove_volume(name)
            assert_refused(refused.value)
            with pytest.raises(docker.errors.APIError) as refused:
                create(through, docker_settings, mounts=[Mount("/mnt/x", name, type="volume")])
            assert_refused(refused.value)
        left = {v.name for v in docker_client.volumes.list()}
        assert {shared.name, neighbour.name} <= left
    finally:
        neighbour.remove(force=True)
        shared.remove(force=True)

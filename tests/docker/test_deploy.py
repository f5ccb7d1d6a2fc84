"""The containerised deployment, end to end, as an offline host would run it.

Builds the server image and the test controller image, moves them the way a host
without GitHub gets them (``docker save | gzip`` / ``docker load``), brings
``compose.prod.yaml`` up with the test double standing in for the controller, builds
through the published port, and checks the build ran in a sibling container and that
``down`` leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import docker.errors
import httpx
import pytest
from docker import DockerClient

from kiisrv.build.containers import LABEL_INSTANCE
from kiisrv.settings import Settings
from tests.helpers import (
    REPO,
    TEST_CONTAINERS,
    TEST_IMAGE_PREFIX,
    Events,
    build_server_image,
    compose_command,
    free_port,
    ktype,
    request,
    shell,
)


@pytest.fixture
def deployment(
    docker_client: DockerClient,
    controller_image: str,
    docker_settings: Settings,
    tmp_path: Path,
) -> Iterator[tuple[str, dict[str, str], Path]]:
    server_tag = f"{docker_settings.instance}-server:latest"
    proxy_tag = f"{docker_settings.instance}-socket-proxy:latest"
    context = tmp_path / "context"
    build_server_image(docker_client, context, server_tag)
    # The proxy is the server image run as `kiisrv socket-proxy` (compose builds it from
    # the same Dockerfile under its own tag).
    docker_client.images.get(server_tag).tag(proxy_tag)

    # Move the images as to an offline host.
    tags = [server_tag, proxy_tag] + [f"{TEST_IMAGE_PREFIX}{c}:latest" for c in TEST_CONTAINERS]
    archive = tmp_path / "images.tar.gz"
    shell(f"docker save {' '.join(tags)} | gzip -1 > {archive}")
    for tag in tags:
        docker_client.images.remove(tag)
    shell(f"gunzip -c {archive} | docker load")
    for tag in tags:
        docker_client.images.get(tag)

    data_host = tmp_path / "data"
    env = {
        **os.environ,
        "KIISRV_IMAGE": server_tag,
        "KIISRV_PROXY_IMAGE": proxy_tag,
        "KIISRV_DATA_HOST": str(data_host),
        "KIISRV_PUBLISH": str(free_port()),
        "KIISRV_IMAGE_PREFIX": TEST_IMAGE_PREFIX,
        "KIISRV_INSTANCE": docker_settings.instance,
    }
    compose = [
        *compose_command(),
        "-f",
        str(REPO / "compose.prod.yaml"),
        "-p",
        docker_settings.instance,
    ]
    try:
        yield docker_settings.instance, env, data_host
    finally:
        for c in docker_client.containers.list(
            ignore_removed=True,
            all=True,
            filters={"label": f"com.docker.compose.project={docker_settings.instance}"},
        ):
            print(f"--- {c.name} ---\n{c.logs().decode(errors='replace')}")
        subprocess.run([*compose, "down", "-v"], env=env, capture_output=True)
        for tag in (server_tag, proxy_tag):
            with contextlib.suppress(docker.errors.APIError):
                docker_client.images.remove(tag)


def test_compose_deployment_from_loaded_images(
    deployment: tuple[str, dict[str, str], Path],
    docker_client: DockerClient,
    build_containers: Events,
) -> None:
    project, env, data_host = deployment
    compose = [*compose_command(), "-f", str(REPO / "compose.prod.yaml"), "-p", project]
    started = time.monotonic()
    up = subprocess.run(
        [*compose, "up", "-d", "--no-build"], env=env, capture_output=True, text=True
    )
    assert up.returncode == 0, up.stderr
    # `up` has the controller services too (so a host without their images builds
    # them): they run `true` and exit. What stays up is the server and the proxy.
    labels = {"label": f"com.docker.compose.project={project}"}
    for _ in range(80):
        everything = docker_client.containers.list(ignore_removed=True, all=True, filters=labels)
        services = {c.labels["com.docker.compose.service"]: c for c in everything}
        if all(services[s].status == "exited" for s in ("controller-050", "controller-057")):
            break
        time.sleep(0.25)
    assert {s: services[s].attrs["State"]["ExitCode"] for s in services if "controller" in s} == {
        "controller-050": 0,
        "controller-057": 0,
    }
    running = docker_client.containers.list(ignore_removed=True, filters=labels)
    services = {c.labels["com.docker.compose.service"]: c for c in running}
    assert set(services) == {"kiisrv", "socket-proxy"}
    server = services["kiisrv"]
    # Only the proxy holds the socket; it reads it as root with no capability at all.
    assert not [m for m in server.attrs["Mounts"] if m["Destination"].endswith("docker.sock")]
    proxy = services["socket-proxy"].attrs["HostConfig"]
    assert proxy["ReadonlyRootfs"] and proxy["CapDrop"] == ["ALL"], proxy
    for _ in range(240):
        server.reload()
        if server.attrs["State"]["Health"]["Status"] == "healthy":
            break
        time.sleep(0.25)
    assert server.attrs["State"]["Health"]["Status"] == "healthy"
    print(f"compose up -> healthy: {time.monotonic() - started:.1f} s")

    base = f"http://127.0.0.1:{env['KIISRV_PUBLISH']}"
    with httpx.Client(base_url=base, timeout=120) as http:
        assert "latest" in http.get("/versions").json()
        assert http.get("/layouts/K-Type-TestBase.json").json()["header"]["Name"] == "KType"
        r = http.post("/download.php", json=request(ktype()))
        assert r.status_code == 200, r.text
        name = r.json()["filename"].rsplit("/", 1)[1]
        z = zipfile.ZipFile(io.BytesIO(http.get(f"/tmp/{name}").content))
        assert "kiibohd.dfu.bin" in z.namelist()

    # The build ran in a sibling container, with the host's paths mounted.
    (created,) = build_containers.created()
    assert created["Actor"]["Attributes"]["image"] == f"{TEST_IMAGE_PREFIX}controller-057:latest"
    assert created["Actor"]["Attributes"][LABEL_INSTANCE] == project
    assert (data_host / "builds" / name).is_file()
    top = server.top(ps_args="-o pid,uid,comm")
    assert all(row[1] == "1000" for row in top["Processes"]), top

    down = subprocess.run([*compose, "down", "-v"], env=env, capture_output=True, text=True)
    assert down.returncode == 0, down.stderr
    left = docker_client.containers.list(
        ignore_removed=True, all=True, filters={"label": f"com.docker.compose.project={project}"}
    )
    assert left == [] and build_containers.running() == []
    assert [v.name for v in docker_client.volumes.list() if v.name.startswith(project)] == []

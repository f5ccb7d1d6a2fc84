"""Differential fuzzing of the socket proxy's create rule against the real engine.

Random create bodies (a build's body with random keys changed, added or dropped, at
the top, in HostConfig and in its mounts) go through the real ``kiisrv socket-proxy``.
Whatever it passes, the engine then shows as created: ``docker inspect`` on the daemon
itself must find nothing outside what a build may have. The rule is judged by what
dockerd made of the body, not by what the rule thinks it checked (Go's JSON folds case,
keeps the last of duplicate keys and reads types its own way).
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import httpx
import pytest
from docker import DockerClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiisrv.build.containers import LABEL_INSTANCE, LABEL_MANAGED
from kiisrv.proxy.policy import parse_size
from kiisrv.settings import Settings
from tests.helpers import TEST_IMAGE_PREFIX, Events, socket_proxy

API = "/v1.41"
IMAGE = f"{TEST_IMAGE_PREFIX}controller-057:latest"

_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, 1, -1, 64, 512, 513, 2**31, 2**62, 2**63 - 1, 268435456, 10**9]),
    st.sampled_from(
        [
            "",
            "host",
            "none",
            "bridge",
            "ALL",
            "NOTALL",
            "root",
            "0:0",
            "1000:1000",
            "/",
            "/tmp",
            "size=0,exec",
            "rw",
            "no-new-privileges",
            "seccomp=unconfined",
            "unconfined",
            IMAGE,
            "debian:bookworm-slim",
            "json-file",
            "10g",
            "1m",
        ]
    ),
    st.lists(st.sampled_from(["ALL", "SYS_ADMIN", "/:/host", "no-new-privileges", ""]), max_size=3),
    st.dictionaries(
        st.sampled_from(["/tmp", "/proc/sys", "Type", "Name", "max-size", "/dev"]),
        st.sampled_from(["", "rw", "size=1m", "size=0", "bind", "local", "10g"]),
        max_size=2,
    ),
)
_TOP = [
    "Image",
    "User",
    "Cmd",
    "Env",
    "Entrypoint",
    "Labels",
    "WorkingDir",
    "NetworkDisabled",
    "Volumes",
    "Tty",
    "image",
    "user",
    "Healthcheck",
]
_HOST = [
    "Memory",
    "MemorySwap",
    "MemoryReservation",
    "NanoCpus",
    "CpuShares",
    "CpuQuota",
    "PidsLimit",
    "Tmpfs",
    "NetworkMode",
    "networkmode",
    "ReadonlyRootfs",
    "CapDrop",
    "CapAdd",
    "SecurityOpt",
    "LogConfig",
    "Privileged",
    "privileged",
    "Binds",
    "PidMode",
    "IpcMode",
    "UsernsMode",
    "Devices",
    "Sysctls",
    "OomScoreAdj",
    "Runtime",
    "ShmSize",
    "StorageOpt",
    "Init",
    "AutoRemove",
]
_MOUNT = ["Type", "Source", "Target", "ReadOnly", "BindOptions", "VolumeOptions", "TmpfsOptions"]

_CHANGES = st.lists(
    st.tuples(
        st.sampled_from(["top", "host", "mount"]),
        st.sampled_from(sorted(set(_TOP + _HOST + _MOUNT))),
        st.one_of(_VALUES, st.just("<drop>")),
    ),
    min_size=1,
    max_size=4,
)


def _body(settings: Settings) -> dict[str, Any]:
    """A build's create body, as the Docker SDK sends it for kiisrv's spec."""
    memory = parse_size(settings.build_memory)
    return {
        "Image": IMAGE,
        "User": settings.build_user,
        "Cmd": ["true"],
        "Labels": {LABEL_MANAGED: "1", LABEL_INSTANCE: settings.instance},
        "NetworkDisabled": True,
        "HostConfig": {
            "Memory": memory,
            "MemorySwap": memory,
            "PidsLimit": 64,
            "NetworkMode": "none",
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "2"}},
            "Tmpfs": {"/tmp": "exec,mode=1777,size=64m"},
            "Mounts": [{"Type": "volume", "Target": "/mnt/kiisrv", "ReadOnly": False}],
        },
    }


def _mutated(settings: Settings, changes: list[tuple[str, str, Any]]) -> dict[str, Any]:
    body = _body(settings)
    for where, key, value in changes:
        target = (
            body
            if where == "top"
            else body["HostConfig"]
            if where == "host"
            else body["HostConfig"]["Mounts"][0]
        )
        if value == "<drop>":
            target.pop(key, None)
        else:
            target[key] = value
    return body


def _violations(inspected: dict[str, Any], settings: Settings) -> list[str]:
    """What a container the engine made has that no build may have."""
    host, config = inspected["HostConfig"], inspected["Config"]
    memory = parse_size(settings.build_memory)
    wrong = []

    def check(ok: bool, what: str) -> None:
        if not ok:
            wrong.append(what)

    check(host.get("Privileged") is False, "privileged")
    check(not host.get("CapAdd"), f"CapAdd {host.get('CapAdd')}")
    check(host.get("CapDrop") == ["ALL"], f"CapDrop {host.get('CapDrop')}")
    check(not host.get("Binds"), f"Binds {host.get('Binds')}")
    check(not host.get("Devices"), "devices")
    check(host.get("NetworkMode") == "none", f"NetworkMode {host.get('NetworkMode')}")
    check(host.get("PidMode") in ("", None), "pid namespace")
    check(host.get("IpcMode") in ("", "private", "shareable", None), "ipc namespace")
    check(host.get("UsernsMode") in ("", None), "user namespace")
    check(not host.get("Sysctls"), "sysctls")
    check(not host.get("OomScoreAdj"), "OomScoreAdj")
    check(host.get("Runtime") in ("runc", "", None), f"runtime {host.get('Runtime')}")
    check(set(host.get("SecurityOpt") or []) <= {"no-new-privileges"}, "security options")
    check("no-new-privileges" in (host.get("SecurityOpt") or []), "no-new-privileges")
    check(0 < (host.get("Memory") or 0) <= memory, f"Memory {host.get('Memory')}")
    check(host.get("MemorySwap") == host.get("Memory"), f"MemorySwap {host.get('MemorySwap')}")
    check(0 < (host.get("PidsLimit") or 0) <= settings.build_pids, "PidsLimit")
    check(set(host.get("Tmpfs") or {}) <= {"/tmp"}, f"Tmpfs {host.get('Tmpfs')}")
    for options in (host.get("Tmpfs") or {}).values():
        sizes = [o.split("=", 1)[1] for o in options.split(",") if o.startswith("size=")]
        check(bool(sizes) and 0 < parse_size(sizes[0]) <= parse_size("1g"), f"tmpfs {options}")
    log = host.get("LogConfig") or {}
    check(log.get("Type") == "json-file", "log driver")
    check(0 < parse_size(log.get("Config", {}).get("max-size", "0")) <= 1024**2, "log size")
    for mount in inspected.get("Mounts") or []:
        check(mount.get("Type") == "volume", f"mount {mount}")
        check(mount.get("Driver") == "local", f"mount driver {mount}")
    for mount in host.get("Mounts") or []:
        check(not mount.get("Source"), f"named mount {mount}")  # no owned volume exists here
    check(config.get("User") == settings.build_user, f"user {config.get('User')}")
    check(config.get("Image") == IMAGE, f"image {config.get('Image')}")
    labels = config.get("Labels") or {}
    check(labels.get(LABEL_MANAGED) == "1", "managed label")
    check(labels.get(LABEL_INSTANCE) == settings.instance, "instance label")
    check(
        not config.get("Entrypoint") or config["Entrypoint"] == ["/usr/local/bin/build.sh"],
        "entrypoint",
    )
    return wrong


@pytest.fixture
def proxy(docker_settings: Settings, build_containers: Events, tmp_path: Path) -> Iterator[str]:
    with socket_proxy(docker_settings, tmp_path / "proxy.log") as url:
        yield url.replace("tcp://", "http://")


def test_whatever_the_proxy_passes_the_engine_shows_as_a_build(
    proxy: str, docker_client: DockerClient, docker_settings: Settings
) -> None:
    """Differential: random create bodies through the proxy; for each one created, the
    daemon's own inspect shows nothing outside the allowed set. Also: never a 500."""
    passed = []

    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(changes=_CHANGES)
    def one(changes: list[tuple[str, str, Any]]) -> None:
        body = _mutated(docker_settings, changes)
        name = f"{docker_settings.instance}-fuzz-{secrets.token_hex(4)}"
        r = httpx.post(
            f"{proxy}{API}/containers/create",
            params={"name": name},
            content=json.dumps(body),
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        assert r.status_code != 500 and r.status_code < 600, (changes, r.text)
        if r.status_code != 201:
            return
        ident = r.json()["Id"]
        try:
            inspected = docker_client.api.inspect_container(ident)
            assert _violations(inspected, docker_settings) == [], changes
            passed.append(changes)
        finally:
            with contextlib.suppress(docker.errors.NotFound):
                docker_client.api.remove_container(ident, force=True)

    one()
    # Not vacuous: the baseline and harmless changes are created and checked.
    print(f"{len(passed)} of the bodies passed and were checked")
    assert passed, "no body passed the proxy: the differential checked nothing"

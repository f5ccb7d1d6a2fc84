"""The socket proxy's rule, without Docker: what a build needs passes, nothing else.

The accepted body is not written by hand: it is the one ``Engine.start`` really sends
(the Docker SDK's own serialisation), recorded by a small HTTP server standing in for
the engine. Every other case is that body with one field made dangerous.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from kiisrv.build.containers import LABEL_INSTANCE, LABEL_MANAGED, NOT_OURS, build_container_spec
from kiisrv.build.engine import Engine
from kiisrv.proxy.create import check_create
from kiisrv.proxy.policy import (
    Kind,
    Policy,
    Refused,
    bound_container,
    check_image,
    checked_query,
    list_query,
    parse_json,
    route,
    visible,
    visible_images,
)
from kiisrv.proxy.server import policy as policy_of
from kiisrv.settings import Settings

SETTINGS = Settings(
    data_dir=Path("/srv/data"),
    instance="kiisrv",
    image_prefix="kiisrv-",
)
POLICY = policy_of(SETTINGS.replace(proxy_instances="kiisrv, kiisrv-worker"))


class _Recorder(BaseHTTPRequestHandler):
    """Answers the three calls of ``Engine.start`` and keeps the create body."""

    bodies: ClassVar[list[dict[str, Any]]] = []

    def _answer(self, status: int, doc: object | None = None) -> None:
        raw = json.dumps(doc).encode() if doc is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:
        self._answer(200, {"ApiVersion": "1.41", "Version": "20.10.24"})

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.split("?")[0].endswith("/containers/create"):
            self.bodies.append(json.loads(raw))
            self._answer(201, {"Id": "0" * 64, "Warnings": []})
        else:
            self._answer(204)

    def do_PUT(self) -> None:  # the inputs, by the archive API
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer(200)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def sent() -> Iterator[dict[str, Any]]:
    """The create body of a real spec, as Engine.start serialises it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    spec = build_container_spec(
        SETTINGS,
        image="kiisrv-controller-057:latest",
        job_hash="0123456789abcdef0123456789abcdef",
        script="k-type.bash",
        zip_name="KType-Mine-0123.zip",
        environment={"Layout": "std"},
        suffix="x1",
    )
    engine = Engine(f"tcp://127.0.0.1:{server.server_address[1]}", timeout=10)
    import asyncio

    try:
        asyncio.run(engine.start(spec, inputs=b"", inputs_at="/mnt/kiisrv"))
    finally:
        engine.close()
        server.shutdown()
    (body,) = _Recorder.bodies
    yield body


@pytest.fixture
def body(sent: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(sent)


def refused(body: object, match: str, policy: Policy = POLICY) -> None:
    with pytest.raises(Refused, match=match):
        check_create(body, policy)


# -- what a build sends ----------------------------------------------------------------


def test_the_body_engine_start_sends_passes(body: dict[str, Any]) -> None:
    forwarded = check_create(body, POLICY)
    host = forwarded["HostConfig"]
    assert forwarded["Image"] == "kiisrv-controller-057:latest"
    assert host["NetworkMode"] == "none" and host["CapDrop"] == ["ALL"]
    assert [(m.get("Source"), m["Target"], m.get("ReadOnly", False)) for m in host["Mounts"]] == [
        (m["Source"], m["Target"], m["ReadOnly"]) for m in body["HostConfig"]["Mounts"]
    ]
    assert all(m["Type"] == "volume" for m in host["Mounts"]) and not host.get("Binds")
    # Empty keys are not forwarded: the engine sees what was checked, nothing more.
    assert all(v not in (None, False, "", [], {}) for v in forwarded.values())


def test_build_containers_cap_their_log(body: dict[str, Any]) -> None:
    """A build printing without end would fill the host's disk through json-file."""
    assert body["HostConfig"]["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-size": "1m", "max-file": "2"},
    }


def test_a_worker_instance_passes_too(body: dict[str, Any]) -> None:
    body["Labels"][LABEL_INSTANCE] = "kiisrv-worker"
    check_create(body, POLICY)


# -- the create body, one dangerous field at a time ------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("Privileged", True, "privileged"),
        ("CapAdd", ["SYS_ADMIN"], "capabilities"),
        ("Binds", ["/:/host"], "Binds"),
        ("VolumesFrom", ["redis"], "volumes"),
        ("Devices", [{"PathOnHost": "/dev/sda", "PathInContainer": "/dev/sda"}], "devices"),
        ("DeviceRequests", [{"Driver": "nvidia", "Count": -1}], "device requests"),
        ("DeviceCgroupRules", ["c 1:3 mr"], "cgroup rules"),
        ("PidMode", "host", "pid"),
        ("IpcMode", "host", "ipc"),
        ("UTSMode", "host", "uts"),
        ("UsernsMode", "host", "user namespace"),
        ("CgroupnsMode", "host", "cgroup namespace"),
        ("Links", ["redis:redis"], "links"),
        ("PortBindings", {"22/tcp": [{"HostPort": "2222"}]}, "ports"),
        ("PublishAllPorts", True, "ports"),
        ("Sysctls", {"net.ipv4.ip_forward": "1"}, "sysctls"),
        ("ExtraHosts", ["evil:1.2.3.4"], "extra hosts"),
        ("CgroupParent", "/", "cgroup parent"),
        ("Runtime", "runc-unsafe", "runtime"),
        ("OomScoreAdj", -1000, "OomScoreAdj"),
        ("privileged", True, "privileged is not allowed"),  # the engine ignores case
        ("NetworkMode", "host", "NetworkMode"),
        ("NetworkMode", "bridge", "NetworkMode"),
        ("NetworkMode", "container:redis", "NetworkMode"),
        ("NetworkMode", None, "NetworkMode"),
        ("CapDrop", [], "CapDrop"),
        ("CapDrop", ["NET_RAW"], "CapDrop"),
        ("SecurityOpt", None, "no-new-privileges"),
        ("SecurityOpt", ["no-new-privileges", "seccomp=unconfined"], "seccomp"),
        ("SecurityOpt", ["no-new-privileges", "apparmor=unconfined"], "apparmor"),
        ("SecurityOpt", ["no-new-privileges", "label=disable"], "label"),
        ("Memory", 0, "Memory"),
        ("Memory", 2**62, "Memory"),
        ("Memory", "2g", "Memory"),
        ("Memory", True, "Memory"),
        ("MemorySwap", -1, "MemorySwap"),
        ("MemorySwap", 0, "MemorySwap"),
        ("MemorySwap", 2**33, "MemorySwap"),
        ("PidsLimit", -1, "PidsLimit"),
        ("PidsLimit", 2**63 - 1, "PidsLimit"),
        ("PidsLimit", 513, "PidsLimit"),
        ("NanoCpus", -1, "NanoCpus"),
        ("NanoCpus", 2**50, "NanoCpus"),
        ("CpuShares", 262144, "CpuShares"),
        ("Tmpfs", {"/tmp": "size=0,exec"}, "tmpfs size"),
        ("Tmpfs", {"/tmp": "exec"}, "tmpfs size"),
        ("Tmpfs", {"/tmp": "size=2g"}, "tmpfs size"),
        ("Tmpfs", {"/tmp": "size=1x"}, "tmpfs size"),
        ("Tmpfs", {"/tmp": "size=1m,suid"}, "suid"),
        ("Tmpfs", {"/tmp": "size=1m,dev"}, "dev"),
        ("Tmpfs", {"/tmp": "size=1m,mode=777x"}, "mode"),
        ("Tmpfs", {"/tmp": "size=1m,uid=0"}, "uid"),
        ("Tmpfs", {"/proc/sys": "rw"}, "only /tmp"),
        ("Tmpfs", {"/tmp": ["size=1m"]}, "string"),
        ("Tmpfs", ["/tmp"], "object"),
        ("CapDrop", "NOTALL", "CapDrop"),
        ("CapDrop", "ALL", "CapDrop"),
        ("CapDrop", ["ALL", "CHOWN"], "CapDrop"),
        ("SecurityOpt", [{}], "strings"),
        ("SecurityOpt", "no-new-privileges", "strings"),
        ("ReadonlyRootfs", "yes", "boolean"),
        ("LogConfig", None, "json-file"),
        ("LogConfig", {"Type": "syslog", "Config": {}}, "json-file"),
        ("LogConfig", {"Type": "json-file", "Config": {}}, "max-size"),
        ("LogConfig", {"Type": "json-file", "Config": {"max-size": "10g"}}, "max-size"),
        (
            "LogConfig",
            {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "99"}},
            "max-file",
        ),
        ("LogConfig", {"Type": "json-file", "Config": {"max-size": "2m"}}, "max-size"),
        ("LogConfig", {"Type": "json-file", "Config": {"max-size": 1024}}, "strings"),
        (
            "LogConfig",
            {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "3"}},
            "max-file",
        ),
        (
            "LogConfig",
            {"Type": "json-file", "Config": {"max-size": "1m", "compress": "true"}},
            "compress",
        ),
        ("Mounts", "not a list", "Mounts"),
    ],
)
def test_host_config_refused(body: dict[str, Any], key: str, value: object, match: str) -> None:
    body["HostConfig"][key] = value
    refused(body, match)


def _bind(source: str, **extra: object) -> dict[str, object]:
    return {"Type": "bind", "Source": source, "Target": "/mnt/x", "ReadOnly": False, **extra}


@pytest.mark.parametrize(
    ("mount", "match"),
    [
        (_bind("/"), "bind mount"),
        (_bind("/etc"), "bind mount"),
        (_bind("/var/lib/kiisrv"), "bind mount"),
        (_bind("/var/lib/kiisrv/config"), "bind mount"),
        # Where kiisrv used to mount a build's folders: a symlink to / there, put by the
        # server between a check and the mount, would give the build the host's root.
        (_bind("/srv/data/config/0123456789abcdef"), "bind mount"),
        (_bind("/srv/data/builds/.work/0123456789abcdef"), "bind mount"),
        (_bind("/var/lib/kiisrv/config/../../../../etc"), "bind mount"),
        (_bind("var/lib/kiisrv/config/x"), "bind mount"),
        (_bind("/srv/data/config/x", BindOptions={"Propagation": "rshared"}), "BindOptions"),
        ({"Type": "volume", "Target": "/x", "VolumeOptions": {"Subpath": "x"}}, "VolumeOptions"),
        ({"Type": "volume", "Source": "redis-data", "Target": "/x"}, "named volume"),
        (
            {
                "Type": "volume",
                "Source": "kiisrv-ccache",
                "Target": "/x",
                "VolumeOptions": {
                    "DriverConfig": {
                        "Name": "local",
                        "Options": {"type": "none", "o": "bind", "device": "/"},
                    }
                },
            },
            "VolumeOptions",
        ),
        ({"Type": "npipe", "Source": "//./pipe/docker_engine", "Target": "/x"}, "type"),
        ({"Type": "tmpfs", "Target": "/x"}, "tmpfs"),
        ("/:/host", "object"),
    ],
)
def test_mounts_refused(body: dict[str, Any], mount: object, match: str) -> None:
    body["HostConfig"]["Mounts"].append(mount)
    refused(body, match)


def test_an_anonymous_volume_passes(body: dict[str, Any]) -> None:
    """Where a build's inputs and outputs live: no host path, removed with the container."""
    body["HostConfig"]["Mounts"].append({"Type": "volume", "Target": "/mnt/io", "Source": ""})
    body["HostConfig"]["Mounts"].append({"Type": "volume", "Target": "/mnt/io2"})
    check_create(body, POLICY)


def test_no_shared_volume_passes(body: dict[str, Any]) -> None:
    """The ccache every build once shared, or any named volume, read-only or not: a
    build mounts its own folder only."""
    for read_only in (True, False):
        changed = copy.deepcopy(body)
        changed["HostConfig"]["Mounts"].append(
            {"Type": "volume", "Source": "kiisrv-ccache", "Target": "/x", "ReadOnly": read_only}
        )
        refused(changed, "named volume")


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("Image", "debian:bookworm-slim", "not a controller image"),
        ("Image", "kiisrv-controller-057:other", "not a controller image"),
        ("Image", "kiisrv-controller-057", "not a controller image"),
        ("Image", "sha256:" + "0" * 64, "not a controller image"),
        ("Image", "evil/kiisrv-controller-057:latest", "not a controller image"),
        ("User", None, "build user"),
        ("User", "0", "build user"),
        ("User", "root", "build user"),
        ("User", "0:0", "build user"),
        ("User", "1001:1001", "build user"),
        ("Labels", None, "not a kiisrv build container"),
        ("Labels", {LABEL_MANAGED: "1"}, "not a kiisrv build container"),
        ("Labels", {LABEL_MANAGED: "1", LABEL_INSTANCE: "other"}, "not a kiisrv"),
        ("Labels", {LABEL_INSTANCE: "kiisrv"}, "not a kiisrv build container"),
        ("Entrypoint", ["sh", "-c", "id"], "Entrypoint"),
        ("Volumes", {"/data": {}}, "Volumes"),
        ("NetworkingConfig", {"EndpointsConfig": {"bridge": {}}}, "NetworkingConfig"),
        ("Healthcheck", {"Test": ["CMD", "true"]}, "Healthcheck"),
        ("HostConfig", None, "NetworkMode"),
        ("HostConfig", ["not", "an", "object"], "HostConfig"),
        ("Env", "A=1", "Env"),
        ("Env", [1], "Env"),
        ("Cmd", [["x"]], "Cmd"),
        ("StopTimeout", True, "StopTimeout"),
        ("Labels", {LABEL_MANAGED: 1, LABEL_INSTANCE: "kiisrv"}, "Labels"),
    ],
)
def test_config_refused(body: dict[str, Any], key: str, value: object, match: str) -> None:
    body[key] = value
    refused(body, match)


def test_a_body_that_is_not_an_object_is_refused() -> None:
    refused([], "object")


def test_an_empty_alias_of_a_checked_key_does_not_reach_the_engine(
    body: dict[str, Any],
) -> None:
    """Go's JSON matches keys without case: a later "networkmode": "" would undo "none"."""
    body["HostConfig"]["networkmode"] = ""
    body["user"] = ""
    forwarded = check_create(body, POLICY)
    assert "networkmode" not in forwarded["HostConfig"] and "user" not in forwarded


def test_a_root_build_user_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="KIISRV_BUILD_USER"):
        policy_of(SETTINGS.replace(build_user=""))
    with pytest.raises(ValueError, match="KIISRV_BUILD_USER"):
        policy_of(SETTINGS.replace(build_user="0:0"))


def test_the_instances_default_to_the_servers_own() -> None:
    assert policy_of(Settings(data_dir=Path("/srv/data"))).instances == {"kiisrv"}


# -- paths -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "kind"),
    [
        ("GET", "/_ping", Kind.PASS),
        ("HEAD", "/_ping", Kind.PASS),
        ("GET", "/version", Kind.PASS),
        ("GET", "/v1.41/images/json", Kind.IMAGES),
        ("GET", "/v1.41/images/kiisrv-controller-057:latest/json", Kind.IMAGE),
        ("GET", "/v1.41/containers/json", Kind.LIST),
        ("POST", "/v1.41/containers/create", Kind.CREATE),
        ("POST", "/v1.41/containers/abc123/start", Kind.CONTAINER),
        ("POST", "/v1.41/containers/abc123/wait", Kind.CONTAINER),
        ("POST", "/v1.41/containers/abc123/kill", Kind.CONTAINER),
        ("GET", "/v1.41/containers/abc123/logs", Kind.CONTAINER),
        ("GET", "/v1.41/containers/kiisrv-build-0123-x1/json", Kind.CONTAINER),
        ("DELETE", "/v1.41/containers/abc123", Kind.CONTAINER),
        ("PUT", "/v1.41/containers/abc123/archive", Kind.CONTAINER),
        ("GET", "/v1.41/containers/abc123/archive", Kind.CONTAINER),
    ],
)
def test_routes_a_build_needs(method: str, path: str, kind: Kind) -> None:
    call = route(method, path)
    assert call.kind is kind and call.path == path


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/info"),
        ("GET", "/v1.41/volumes/kiisrv-ccache"),
        ("GET", "/v1.41/volumes"),
        ("POST", "/v1.41/volumes/create"),
        ("DELETE", "/v1.41/volumes/kiisrv-ccache-c0123456789abcdef0123"),
        ("DELETE", "/v1.41/volumes/create"),
        ("DELETE", "/v1.41/volumes/prune"),
        ("GET", "/v1.41/containers/json\n"),  # "%0a": $ matched before a final newline
        ("GET", "/_ping\n"),
        ("DELETE", "/v1.41/volumes"),
        ("DELETE", "/v1.41/volumes/a/b"),
        ("POST", "/v1.41/volumes/prune"),
        ("POST", "/v1.41/images/create"),
        ("POST", "/v1.41/build"),
        ("POST", "/v1.41/images/load"),
        ("POST", "/v1.41/images/kiisrv-controller-057:latest/tag"),
        ("DELETE", "/v1.41/images/kiisrv-controller-057:latest"),
        ("POST", "/v1.41/containers/abc/exec"),
        ("POST", "/v1.41/containers/abc/update"),
        ("POST", "/v1.41/containers/abc/attach"),
        ("HEAD", "/v1.41/containers/abc/archive"),
        ("POST", "/v1.41/containers/abc/archive"),
        ("PUT", "/v1.41/containers/abc/archive/x"),
        ("POST", "/v1.41/containers/abc/rename"),
        ("POST", "/v1.41/networks/create"),
        ("GET", "/v1.41/swarm"),
        ("GET", "/v1.41/containers/json/../../info"),
        ("GET", "/v1.41/containers/../json"),
        ("GET", "/v1.41//containers/json"),
        ("GET", "/v1.41/images/../containers/abc/archive/json"),
        ("POST", "/v1.23/containers/abc/start"),  # took a HostConfig body then
        ("GET", "/v1.41/containers/json/json"),
        ("POST", "/v1.41/containers/abc/start/x"),
        ("GET", "/v1.41/containers/create"),
        ("DELETE", "/v1.41/containers/abc/json"),
    ],
)
def test_other_routes_refused(method: str, path: str) -> None:
    with pytest.raises(Refused):
        route(method, path)


# -- the container list ----------------------------------------------------------------


def test_the_list_asks_the_engine_for_kiisrv_containers_only() -> None:
    query = list_query([("all", "1"), ("filters", json.dumps({"label": ["x=y"]}))])
    filters = json.loads(dict(query)["filters"])
    assert dict(query)["all"] == "1"
    assert filters["label"] == ["x=y", f"{LABEL_MANAGED}=1"]
    assert json.loads(dict(list_query([]))["filters"]) == {"label": [f"{LABEL_MANAGED}=1"]}


def test_the_list_answer_keeps_the_configured_instances() -> None:
    mine = {"Id": "a", "Labels": {LABEL_MANAGED: "1", LABEL_INSTANCE: "kiisrv-worker"}}
    other = {"Id": "b", "Labels": {LABEL_MANAGED: "1", LABEL_INSTANCE: "someone"}}
    redis = {"Id": "c", "Labels": {}}
    assert visible([mine, other, redis, {"Id": "d", "Labels": None}], POLICY) == [mine]


# -- one container: bound to what was checked ----------------------------------------------

ID = "f" * 64
OURS = {LABEL_MANAGED: "1", LABEL_INSTANCE: "kiisrv"}


def _inspected(**change: Any) -> dict[str, Any]:
    return {"Id": ID, "Name": "/kiisrv-build-0123-x1", "Config": {"Labels": OURS}, **change}


def test_a_call_is_bound_to_the_full_id_of_what_was_inspected() -> None:
    """dockerd resolves a reference by id, then name, then id prefix: the call goes to
    the id the check read, never to the reference, which may name another container
    by the time the call arrives."""
    for reference in (ID, "kiisrv-build-0123-x1"):
        call = route("POST", f"/v1.41/containers/{reference}/start")
        assert bound_container(reference, _inspected(), POLICY) == ID
        assert call.at(ID) == f"/v1.41/containers/{ID}/start"
    assert route("DELETE", "/containers/abc").at(ID) == f"/containers/{ID}"
    assert route("PUT", "/v1.42/containers/abc/archive").at(ID) == f"/v1.42/containers/{ID}/archive"


@pytest.mark.parametrize(
    ("reference", "inspected"),
    [
        ("fff", _inspected()),  # a prefix: dockerd's last resort
        (ID[:63], _inspected()),
        ("kiisrv-build-0123", _inspected()),
        ("kiisrv-build-0123-x1", _inspected(Name="/kiisrv-build-0123-x2")),
        (ID, _inspected(Config={"Labels": {LABEL_MANAGED: "1", LABEL_INSTANCE: "other"}})),
        (ID, _inspected(Config={"Labels": None})),
        (ID, _inspected(Config=None)),
        (ID, _inspected(Id="not-hex")),
        (ID, []),
        (ID, None),
    ],
)
def test_anything_but_exactly_one_of_ours_is_one_refusal(reference: str, inspected: object) -> None:
    with pytest.raises(Refused) as refusal:
        bound_container(reference, inspected, POLICY)
    assert refusal.value.reason == NOT_OURS


@pytest.mark.parametrize(
    ("method", "path", "query"),
    [
        ("DELETE", "/v1.41/containers/abc", [("link", "1")]),
        ("DELETE", "/v1.41/containers/abc", [("x", "1")]),
        ("DELETE", "/v1.41/containers/abc", [("force", "maybe")]),
        ("POST", "/v1.41/containers/abc/start", [("detachKeys", "ctrl-x")]),
        ("POST", "/v1.41/containers/abc/wait", [("condition", "anything")]),
        ("POST", "/v1.41/containers/abc/kill", [("signal", "KILL; rm")]),
        ("GET", "/v1.41/containers/abc/logs", [("tail", "-1")]),
        ("POST", "/v1.41/containers/create", [("name", "abcdef012345")]),
        ("POST", "/v1.41/containers/create", [("name", "kiisrv")]),
        ("POST", "/v1.41/containers/create", [("name", "other-build-x")]),
        ("POST", "/v1.41/containers/create", []),
        ("POST", "/v1.41/containers/create", [("name", "kiisrv-x"), ("platform", "linux/arm64")]),
        ("GET", "/v1.41/images/json", [("filters", "{}"), ("digests", "1")]),
    ],
)
def test_query_parameters_kiisrv_does_not_send_are_refused(
    method: str, path: str, query: list[tuple[str, str]]
) -> None:
    with pytest.raises(Refused):
        checked_query(route(method, path), query, POLICY)


def test_the_query_parameters_kiisrv_sends_pass() -> None:
    for method, path, query in [
        ("DELETE", "/v1.41/containers/abc", [("v", "True"), ("link", "False"), ("force", "True")]),
        ("POST", "/v1.41/containers/abc/wait", [("condition", "not-running")]),
        ("GET", "/v1.41/containers/abc/logs", [("stderr", "1"), ("stdout", "1"), ("tail", "all")]),
        ("GET", "/v1.41/containers/abc/archive", [("path", "/mnt/kiisrv/builds")]),
        ("POST", "/v1.41/containers/create", [("name", "kiisrv-worker-build-0123-x1")]),
        ("GET", "/v1.41/containers/json", [("all", "1"), ("limit", "-1"), ("size", "0")]),
    ]:
        assert checked_query(route(method, path), query, POLICY) == query


def test_only_controller_images_are_seen_or_inspected() -> None:
    images = [
        {"Id": "a", "RepoTags": ["kiisrv-controller-057:latest", "mine:tag"], "RepoDigests": ["x"]},
        {"Id": "b", "RepoTags": ["redis:7"]},
        {"Id": "c", "RepoTags": None},
        {"Id": "d", "RepoTags": ["kiisrv-controller-050:old"]},
        "junk",
    ]
    assert visible_images(images, POLICY) == [
        {"Id": "a", "RepoTags": ["kiisrv-controller-057:latest"], "RepoDigests": []}
    ]
    check_image(route("GET", "/v1.41/images/kiisrv-controller-057:latest/json"), POLICY)
    for other in ("redis:7", "kiisrv-controller-057:old", "sha256:" + "0" * 64):
        with pytest.raises(Refused):
            check_image(route("GET", f"/v1.41/images/{other}/json"), POLICY)


def test_json_that_would_crash_a_parser_is_a_refusal() -> None:
    with pytest.raises(Refused):
        parse_json(b"[" * 50_000 + b"]" * 50_000, "the body")
    with pytest.raises(Refused):
        parse_json(b"{nope", "the body")

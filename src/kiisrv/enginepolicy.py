"""What the socket proxy lets through to the Docker Engine: the rule, without any I/O.

Access to the engine is root on the host: whoever may create a container may make it
privileged or bind-mount ``/``. A proxy filtering by method and path (the HAProxy
allow-list this replaces) stops exec and pulls but not that, so the rule here also
reads the create body, by allow-list: a key kiisrv's ``Engine.start`` does not send is
refused unless its value is empty (the Docker SDK sends many keys as null/false/[]).
No bind mount passes, whatever its path: the server can write in its data folder, so a
path "below the data folder" can be a symlink to ``/`` by the time dockerd mounts it
(dockerd resolves it on the host; no check here can see that, or close the race).
Builds get their files by the archive API instead, into an anonymous volume.
Per-container calls (the archive ones too) are allowed on kiisrv's own build
containers only, so a compromised server cannot kill, remove, inspect or copy files
out of its neighbours (the Redis container's password is in its inspect answer).

The engine parses JSON case-insensitively and keeps the last of duplicate keys, so the
proxy forwards the body *it* checked, re-serialised, with the empty keys left out:
``{"NetworkMode": "none", "networkmode": ""}`` must not reach the engine as bridge.

Everything here is a pure function of the request and a ``Policy``; the proxy
(``socketproxy.py``) does the I/O. A refusal raises ``Refused`` with the reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from kiisrv.ccache import is_client_volume_name
from kiisrv.containers import LABEL_INSTANCE, LABEL_MANAGED

# Largest create body read (kiisrv's are about 2 KB).
MAX_CREATE_BODY = 256 * 1024
# Largest archive uploaded into a build container (its inputs: a few KB of KLL and JSON,
# a layout of at most KIISRV_MAX_BODY): a server cannot fill the disk through it.
MAX_ARCHIVE_BODY = 64 * 1024 * 1024
# Older API versions took a HostConfig on start (privileged, binds): never let one in.
MIN_API_VERSION = (1, 24)
# A build's output kept by the engine: json-file, at most this much per file, 2 files.
MAX_LOG_BYTES = 16 * 1024 * 1024
MAX_LOG_FILES = 2


class Refused(Exception):
    """The proxy answers 403 with this reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Kind(Enum):
    PASS = "pass"  # ping, version, images: nothing of a container
    LIST = "list"  # the container list, narrowed to kiisrv's containers
    CREATE = "create"  # the body is checked
    CONTAINER = "container"  # a call on one container: allowed if it is kiisrv's
    VOLUMES = "volumes"  # the volume list, narrowed to per-client ccaches
    VOLUME = "volume"  # removing one volume: a per-client ccache only


@dataclass(frozen=True)
class Call:
    kind: Kind
    path: str  # what is forwarded: the path checked, never the raw one
    container: str | None = None


@dataclass(frozen=True)
class Policy:
    instances: frozenset[str]
    image_prefix: str
    image_tag: str
    volumes: frozenset[str]
    build_user: str
    # Per-client ccaches (ccache.py): this prefix and a pseudonym. Empty: none.
    client_volume_prefix: str = ""

    def __post_init__(self) -> None:
        if not self.instances:
            raise ValueError("the socket proxy needs at least one instance name")
        if _is_root(self.build_user):
            raise ValueError(
                "the socket proxy refuses root build containers: set KIISRV_BUILD_USER "
                "to the controller image's uid:gid (1000:1000)"
            )


def _is_root(user: str) -> bool:
    uid = user.split(":", 1)[0].strip()
    return uid in ("", "0", "root")


# -- paths -----------------------------------------------------------------------------

_VERSION = re.compile(r"^/v([0-9]+)\.([0-9]+)(/.*)$")
# Docker's own rule for names, and ids are hex: no "/", no "." or ".." alone.
_CONTAINER = r"(?P<id>[A-Za-z0-9][A-Za-z0-9_.-]*)"
_IMAGE = r"[A-Za-z0-9][A-Za-z0-9_.:@/-]*"
_ROUTES: tuple[tuple[frozenset[str], re.Pattern[str], Kind], ...] = tuple(
    (frozenset(methods), re.compile(f"^{pattern}$"), kind)
    for methods, pattern, kind in (
        (("GET", "HEAD"), r"/_ping", Kind.PASS),
        (("GET",), r"/version", Kind.PASS),
        (("GET",), r"/images/json", Kind.PASS),
        (("GET",), rf"/images/{_IMAGE}/json", Kind.PASS),
        (("GET",), r"/containers/json", Kind.LIST),
        (("POST",), r"/containers/create", Kind.CREATE),
        (("GET",), rf"/containers/{_CONTAINER}/(json|logs)", Kind.CONTAINER),
        (("POST",), rf"/containers/{_CONTAINER}/(start|wait|kill)", Kind.CONTAINER),
        (("DELETE",), rf"/containers/{_CONTAINER}", Kind.CONTAINER),
        # A build's inputs in (before start) and outputs out (after exit): no bind mounts.
        (("GET", "PUT"), rf"/containers/{_CONTAINER}/archive", Kind.CONTAINER),
        (("GET",), r"/volumes", Kind.VOLUMES),
        (("DELETE",), rf"/volumes/{_CONTAINER}", Kind.VOLUME),
    )
)


def route(method: str, path: str) -> Call:
    """Which kind of call this is; Refused for every path kiisrv does not need."""
    if any(part in ("", ".", "..") for part in path.split("/")[1:]):
        raise Refused(f"path {path!r} is not in canonical form")
    rest = path
    versioned = _VERSION.match(path)
    if versioned:
        version = (int(versioned[1]), int(versioned[2]))
        if version < MIN_API_VERSION:
            raise Refused(f"API version {version[0]}.{version[1]} is too old")
        rest = versioned[3]
    for methods, pattern, kind in _ROUTES:
        matched = pattern.match(rest)
        if matched and method in methods:
            if kind is Kind.CONTAINER and matched["id"] in ("json", "create"):
                break  # /containers/json/json is not a container called "json"
            return Call(kind, path, matched.groupdict().get("id"))
    raise Refused(f"{method} {rest} is not an Engine API call kiisrv makes")


# -- one container -----------------------------------------------------------------------


def owned(labels: Mapping[str, str] | None, policy: Policy) -> None:
    """Refused unless the container is a build container of a configured instance."""
    labels = labels or {}
    if labels.get(LABEL_MANAGED) != "1" or labels.get(LABEL_INSTANCE) not in policy.instances:
        raise Refused("not a kiisrv build container of this deployment")


def list_query(query: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The container list's query, with the engine asked for kiisrv's containers only."""
    filters: dict[str, Any] = {}
    rest: list[tuple[str, str]] = []
    for name, value in query:
        if name != "filters":
            rest.append((name, value))
            continue
        try:
            parsed = json.loads(value)
        except ValueError:
            raise Refused("filters is not JSON") from None
        if not isinstance(parsed, dict):
            raise Refused("filters is not a JSON object")
        filters.update(parsed)
    labels = filters.get("label", [])
    # The engine also takes {"label": {"a=b": true}}.
    labels = list(labels) if isinstance(labels, (list, dict)) else [labels]
    filters["label"] = [*labels, f"{LABEL_MANAGED}=1"]
    return [*rest, ("filters", json.dumps(filters))]


def visible(containers: Iterable[Mapping[str, Any]], policy: Policy) -> list[Mapping[str, Any]]:
    """The entries of a container list the caller may see (the engine ANDs label filters,
    so several instances cannot be asked for in one query)."""
    seen = []
    for c in containers:
        try:
            owned(c.get("Labels"), policy)
        except Refused:
            continue
        seen.append(c)
    return seen


# -- the create body ---------------------------------------------------------------------


def _empty(value: object) -> bool:
    return value is None or value is False or value in ("", 0, [], {})


def _only(where: str, body: Mapping[str, Any], allowed: Iterable[str]) -> dict[str, Any]:
    """``body`` without its empty keys; Refused if another key has a value."""
    allowed = set(allowed)
    kept: dict[str, Any] = {}
    for key, value in body.items():
        if key in allowed:
            if not _empty(value):
                kept[key] = value
        elif not _empty(value):
            raise Refused(f"{where}{key} is not allowed")
    return kept


def _object(where: str, value: object) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Refused(f"{where} is not a JSON object")
    return value


# Named so the reason says what the attempt was; every other unknown key is refused too.
_FORBIDDEN_HOST = {
    "Privileged": "a privileged container",
    "CapAdd": "added capabilities",
    "Binds": "Binds (host folders)",
    "VolumesFrom": "another container's volumes",
    "Devices": "host devices",
    "DeviceRequests": "device requests",
    "DeviceCgroupRules": "device cgroup rules",
    "PidMode": "another pid namespace",
    "IpcMode": "another ipc namespace",
    "UTSMode": "another uts namespace",
    "UsernsMode": "another user namespace",
    "CgroupnsMode": "another cgroup namespace",
    "Links": "links",
    "PortBindings": "published ports",
    "PublishAllPorts": "published ports",
    "Sysctls": "sysctls",
    "ExtraHosts": "extra hosts",
    "CgroupParent": "a cgroup parent",
    "Runtime": "another runtime",
    "VolumeDriver": "a volume driver",
}
_HOST_KEYS = {
    "Memory",
    "MemorySwap",
    "NanoCpus",
    "CpuShares",
    "PidsLimit",
    "Tmpfs",
    "NetworkMode",
    "ReadonlyRootfs",
    "CapDrop",
    "SecurityOpt",
    "LogConfig",
    "Mounts",
    "AutoRemove",
    "Init",
}
_TOP_KEYS = {
    "Hostname",
    "Domainname",
    "User",
    "AttachStdin",
    "AttachStdout",
    "AttachStderr",
    "Tty",
    "OpenStdin",
    "StdinOnce",
    "Env",
    "Cmd",
    "Image",
    "WorkingDir",
    "NetworkDisabled",
    "Labels",
    "StopSignal",
    "StopTimeout",
    "HostConfig",
}
_SECURITY_OPTS = {"no-new-privileges", "no-new-privileges:true", "no-new-privileges=true"}
_SIZE = re.compile(r"^([0-9]+)([kmg]?)$")


def check_create(body: object, policy: Policy) -> dict[str, Any]:
    """The create body to forward; Refused when it asks for more than a build needs."""
    config = dict(_only("", _object("the body", body), _TOP_KEYS))
    image = config.get("Image")
    pattern = f"{re.escape(policy.image_prefix)}controller-[A-Za-z0-9_.-]+:"
    if not isinstance(image, str) or not re.fullmatch(pattern + re.escape(policy.image_tag), image):
        raise Refused(f"image {image!r} is not a controller image")
    if config.get("User") != policy.build_user:
        raise Refused(f"user {config.get('User')!r} is not the build user {policy.build_user}")
    labels = _object("Labels", config.get("Labels"))
    owned({str(k): str(v) for k, v in labels.items()}, policy)
    config["HostConfig"] = _check_host(_object("HostConfig", config.get("HostConfig")), policy)
    return config


def _check_host(raw: Mapping[str, Any], policy: Policy) -> dict[str, Any]:
    for key, what in _FORBIDDEN_HOST.items():
        if not _empty(raw.get(key)):
            raise Refused(f"HostConfig.{key}: {what}")
    host = _only("HostConfig.", raw, _HOST_KEYS)
    if host.get("NetworkMode") != "none":
        raise Refused(f"HostConfig.NetworkMode {host.get('NetworkMode')!r}: only none")
    if "ALL" not in (host.get("CapDrop") or []):
        raise Refused("HostConfig.CapDrop must contain ALL")
    opts = host.get("SecurityOpt")
    if not isinstance(opts, list) or not set(opts) & _SECURITY_OPTS:
        raise Refused("HostConfig.SecurityOpt must contain no-new-privileges")
    if set(opts) - _SECURITY_OPTS:
        raise Refused(f"HostConfig.SecurityOpt {sorted(set(opts) - _SECURITY_OPTS)}: not allowed")
    for limit in ("Memory", "PidsLimit"):
        if not isinstance(host.get(limit), int) or host[limit] <= 0:
            raise Refused(f"HostConfig.{limit} must be a positive limit")
    host["LogConfig"] = _check_log(_object("HostConfig.LogConfig", host.get("LogConfig")))
    mounts = host.get("Mounts") or []
    if not isinstance(mounts, list):
        raise Refused("HostConfig.Mounts is not a list")
    host["Mounts"] = [_check_mount(_object("a mount", m), policy) for m in mounts]
    return host


def _check_log(raw: Mapping[str, Any]) -> dict[str, Any]:
    log = _only("HostConfig.LogConfig.", raw, {"Type", "Config"})
    if log.get("Type") != "json-file":
        raise Refused("HostConfig.LogConfig.Type must be json-file")
    options = _only(
        "LogConfig.Config.", _object("LogConfig", log.get("Config")), {"max-size", "max-file"}
    )
    size = _SIZE.match(str(options.get("max-size", "")).lower())
    if not size:
        raise Refused("HostConfig.LogConfig needs a max-size")
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[size[2]]
    if int(size[1]) * scale > MAX_LOG_BYTES:
        raise Refused(f"log max-size {options['max-size']} is over {MAX_LOG_BYTES} bytes")
    files = str(options.get("max-file", "1"))
    if not files.isdigit() or not 1 <= int(files) <= MAX_LOG_FILES:
        raise Refused(f"log max-file {files} is not 1..{MAX_LOG_FILES}")
    return log


def _check_mount(raw: Mapping[str, Any], policy: Policy) -> dict[str, Any]:
    # BindOptions (propagation) and VolumeOptions (a DriverConfig creates the volume as a
    # bind of any host folder) stay empty: _only refuses them.
    mount = _only("Mounts.", raw, {"Type", "Source", "Target", "ReadOnly", "Consistency"})
    source = mount.get("Source")
    if mount.get("Type") == "bind":
        # Whatever its path says: the server can write in its data folder, so it could
        # make that path a symlink to / between any check here and dockerd's mount.
        raise Refused(f"a bind mount ({source!r}): build containers mount no host folder")
    if mount.get("Type") == "volume" and source is None:
        return mount  # anonymous: the build's own folder, removed with it
    if not isinstance(source, str):
        raise Refused(f"a {mount.get('Type')!r} mount without a source")
    if mount.get("Type") == "volume":
        if source not in policy.volumes and not _client_volume(source, policy):
            raise Refused(f"volume {source!r} is not the ccache volume or a client ccache")
        return mount
    raise Refused(f"mount type {mount.get('Type')!r} is not allowed")


# -- per-client ccache volumes ---------------------------------------------------------------
# The pruner lists and removes them (retention.prune_ccache_volumes); build containers
# mount them by name, without options (_check_mount). No other volume can be listed or
# removed: the shared ccache holds every stock build's objects.


def _client_volume(name: str, policy: Policy) -> bool:
    prefix = policy.client_volume_prefix
    return bool(prefix) and is_client_volume_name(prefix, name)


def check_volume(call: Call, policy: Policy) -> None:
    """Refused unless the volume of a DELETE is a per-client ccache."""
    if call.container is None or not _client_volume(call.container, policy):
        raise Refused(f"volume {call.container!r} is not a client ccache")


def volume_query(query: Sequence[tuple[str, str]], policy: Policy) -> list[tuple[str, str]]:
    """The volume list's query: the engine asked for client ccaches only, nothing else."""
    if not policy.client_volume_prefix:
        raise Refused("no client ccaches in this deployment")
    return [("filters", json.dumps({"name": [policy.client_volume_prefix]}))]


def visible_volumes(answer: Mapping[str, Any], policy: Policy) -> dict[str, Any]:
    """The entries of a volume list the caller may see (the engine's name filter
    matches anywhere in the name)."""
    volumes = answer.get("Volumes") or []
    return {
        "Volumes": [
            v
            for v in volumes
            if isinstance(v, Mapping) and _client_volume(str(v.get("Name", "")), policy)
        ],
        "Warnings": answer.get("Warnings"),
    }

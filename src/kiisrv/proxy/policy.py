"""What the socket proxy lets through to the Docker Engine: the rule, without any I/O.

Access to the engine is root on the host: whoever may create a container may make it
privileged or bind-mount ``/``. A proxy filtering by method and path (the HAProxy
allow-list this replaces) stops exec and pulls but not that, so the rule here also
reads the create body, by allow-list: a key kiisrv's ``Engine.start`` does not send is
refused unless its value is empty (the Docker SDK sends many keys as null/false/[]),
and every value it does send is checked for its type and against a ceiling the
operator sets (memory, swap, processes, CPUs, tmpfs, log), not merely for being there.
No bind mount passes, whatever its path: the server can write in its data folder, so a
path "below the data folder" can be a symlink to ``/`` by the time dockerd mounts it
(dockerd resolves it on the host; no check here can see that, or close the race).
Builds get their files by the archive API instead, into an anonymous volume.

**Every decision binds to the object checked.** dockerd resolves a container reference
by full id, then by name, then by id prefix, so a reference checked a moment ago can
name another container now (a name deleted meanwhile falls through to a neighbour's id
prefix). So a per-container call is forwarded to the full ``Id`` the ownership check
read, never to the caller's string, and a reference that is not exactly one of this
deployment's containers (its full id or its exact name) gets one uniform refusal,
``NOT_OURS``, whatever the engine said (missing, ambiguous prefix, someone else's):
no oracle of what else runs on the host. No named volume passes at all: a build mounts
its own anonymous folder, and nothing is shared between builds.

The engine parses JSON case-insensitively and keeps the last of duplicate keys, so the
proxy forwards the body *it* checked, re-serialised, with the empty keys left out:
``{"NetworkMode": "none", "networkmode": ""}`` must not reach the engine as bridge.

Everything here is a pure function of the request and a ``Policy``: the routes, the
queries, one container's ownership and the image list here, the create body in
``create.py``; the proxy (``server.py``) does the I/O. A refusal raises ``Refused``
with the reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from kiisrv.build.containers import LABEL_INSTANCE, LABEL_MANAGED, NOT_OURS

# Largest create body read (kiisrv's are about 2 KB).
MAX_CREATE_BODY = 256 * 1024
# Largest archive uploaded into a build container (its inputs: a few KB of KLL and JSON,
# a layout of at most KIISRV_MAX_BODY): a server cannot fill the disk through it.
MAX_ARCHIVE_BODY = 64 * 1024 * 1024
# Older API versions took a HostConfig on start (privileged, binds): never let one in.
MIN_API_VERSION = (1, 24)
# The only tmpfs a build gets, and the options it may have.
TMPFS_TARGET = "/tmp"
TMPFS_FLAGS = {"exec", "noexec", "nosuid", "nodev", "rw"}


class Refused(Exception):
    """The proxy answers 403 with this reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Kind(Enum):
    PASS = "pass"  # ping, version: nothing of a container
    IMAGES = "images"  # the image list, narrowed to the controller images
    IMAGE = "image"  # one image's inspect: a controller image only
    LIST = "list"  # the container list, narrowed to kiisrv's containers
    CREATE = "create"  # the body is checked
    CONTAINER = "container"  # a call on one container: bound to it if it is kiisrv's


@dataclass(frozen=True)
class Call:
    kind: Kind
    path: str  # the path checked
    container: str | None = None  # the reference given (a container's id or name)
    version: str = ""  # "/v1.41", or "" for an unversioned call
    tail: str = ""  # what follows the reference: "/start", "/archive", ""
    # The query parameters this call may carry, each with the shape of its value.
    params: Mapping[str, str] = field(default_factory=dict)

    def at(self, ident: str) -> str:
        """This call's path on ``ident`` (the full id the check read), not the reference."""
        if self.container is None:
            raise ValueError("not a call on one container")
        return f"{self.version}/containers/{ident}{self.tail}"


def parse_size(text: str) -> int:
    """Bytes of ``512m``, ``2g``, ``1048576``, as Docker reads them (1024-based)."""
    found = re.fullmatch(r"([0-9]+)([bkmg]?)b?", text.strip().lower())
    if not found:
        raise ValueError(f"not a size: {text!r}")
    scale = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[found[2]]
    return int(found[1]) * scale


@dataclass(frozen=True)
class Ceilings:
    """The most any container may ask of the host through the proxy. Defaults are what
    a build needs (containers.ContainerSpec); the operator raises them with the build
    settings (proxy.server.policy)."""

    memory: int = 2 * 1024**3  # also the swap: MemorySwap must equal Memory
    pids: int = 512
    # Hard CPU quota, in nano-CPUs; 0: a build may also go without one (CPU shares only).
    nano_cpus: int = 0
    tmpfs: int = 1024**3
    log_bytes: int = 1024**2
    log_files: int = 2


@dataclass(frozen=True)
class Policy:
    instances: frozenset[str]
    image_prefix: str
    image_tag: str
    build_user: str
    ceilings: Ceilings = field(default_factory=Ceilings)

    def __post_init__(self) -> None:
        if not self.instances:
            raise ValueError("the socket proxy needs at least one instance name")
        if _is_root(self.build_user):
            raise ValueError(
                "the socket proxy refuses root build containers: set KIISRV_BUILD_USER "
                "to the controller image's uid:gid (1000:1000)"
            )

    def controller_image(self, name: object) -> bool:
        """``name`` is a controller image of this deployment (``<prefix>controller-*:<tag>``)."""
        pattern = f"{re.escape(self.image_prefix)}controller-[A-Za-z0-9_.-]+:"
        return isinstance(name, str) and bool(
            re.fullmatch(pattern + re.escape(self.image_tag), name)
        )


def _is_root(user: str) -> bool:
    uid = user.split(":", 1)[0].strip()
    return uid in ("", "0", "root")


# -- paths -----------------------------------------------------------------------------

_VERSION = re.compile(r"/v([0-9]+)\.([0-9]+)(/.*)", re.DOTALL)
# Docker's own rule for names, and ids are hex: no "/", no "." or ".." alone.
_CONTAINER = r"(?P<id>[A-Za-z0-9][A-Za-z0-9_.-]*)"
_IMAGE = r"(?P<image>[A-Za-z0-9][A-Za-z0-9_.:@/-]*)"
_BOOL = r"(0|1|true|false|True|False)"
# Each route: methods, path, kind, and the query parameters it may carry (name: a
# pattern for its value). What the Docker SDK sends for kiisrv's calls, nothing more.
_ROUTES: tuple[tuple[frozenset[str], re.Pattern[str], Kind, Mapping[str, str]], ...] = tuple(
    (frozenset(methods), re.compile(pattern), kind, query)
    for methods, pattern, kind, query in (
        (("GET", "HEAD"), r"/_ping", Kind.PASS, {}),
        (("GET",), r"/version", Kind.PASS, {}),
        (("GET",), r"/images/json", Kind.IMAGES, {"all": _BOOL, "only_ids": _BOOL}),
        (("GET",), rf"/images/{_IMAGE}/json", Kind.IMAGE, {}),
        (
            ("GET",),
            r"/containers/json",
            Kind.LIST,
            {
                "all": _BOOL,
                "limit": r"-?[0-9]+",
                "size": _BOOL,
                "trunc_cmd": _BOOL,
                "filters": ".*",
            },
        ),
        (("POST",), r"/containers/create", Kind.CREATE, {"name": ".*"}),
        (("GET",), rf"/containers/{_CONTAINER}(?P<tail>/json)", Kind.CONTAINER, {}),
        (
            ("GET",),
            rf"/containers/{_CONTAINER}(?P<tail>/logs)",
            Kind.CONTAINER,
            {
                "stdout": _BOOL,
                "stderr": _BOOL,
                "timestamps": _BOOL,
                "follow": _BOOL,
                "tail": r"all|[0-9]+",
                "since": r"[0-9]+(\.[0-9]+)?",
                "until": r"[0-9]+(\.[0-9]+)?",
            },
        ),
        (("POST",), rf"/containers/{_CONTAINER}(?P<tail>/start)", Kind.CONTAINER, {}),
        (
            ("POST",),
            rf"/containers/{_CONTAINER}(?P<tail>/wait)",
            Kind.CONTAINER,
            {"condition": r"not-running|next-exit|removed"},
        ),
        (
            ("POST",),
            rf"/containers/{_CONTAINER}(?P<tail>/kill)",
            Kind.CONTAINER,
            {"signal": r"[A-Z0-9]{1,12}"},
        ),
        (
            ("DELETE",),
            rf"/containers/{_CONTAINER}(?P<tail>)",
            Kind.CONTAINER,
            {"v": _BOOL, "force": _BOOL, "link": r"0|false|False"},
        ),
        # A build's inputs in (before start) and outputs out (after exit): no bind mounts.
        (
            ("GET", "PUT"),
            rf"/containers/{_CONTAINER}(?P<tail>/archive)",
            Kind.CONTAINER,
            {"path": ".+"},
        ),
    )
)


def route(method: str, path: str) -> Call:
    """Which kind of call this is; Refused for every path kiisrv does not need.

    Patterns match the whole path (``fullmatch``: a ``$`` would also match before a
    final newline, and ``%0a`` decodes to one)."""
    if any(part in ("", ".", "..") for part in path.split("/")[1:]):
        raise Refused(f"path {path!r} is not in canonical form")
    rest, version = path, ""
    versioned = _VERSION.fullmatch(path)
    if versioned:
        number = (int(versioned[1]), int(versioned[2]))
        if number < MIN_API_VERSION:
            raise Refused(f"API version {number[0]}.{number[1]} is too old")
        rest, version = versioned[3], path[: len(path) - len(versioned[3])]
    for methods, pattern, kind, query in _ROUTES:
        matched = pattern.fullmatch(rest)
        if matched and method in methods:
            groups = matched.groupdict()
            if kind is Kind.CONTAINER and groups["id"] in ("json", "create"):
                break  # /containers/json/json is not a container called "json"
            return Call(kind, path, groups.get("id"), version, groups.get("tail") or "", query)
    raise Refused(f"{method} {rest!r} is not an Engine API call kiisrv makes")


def checked_query(
    call: Call, query: Sequence[tuple[str, str]], policy: Policy
) -> list[tuple[str, str]]:
    """The query to forward: only the parameters this call may carry, with values of
    their shape (a ``link=1``, ``detachKeys``, ``platform`` on a create: refused)."""
    kept: list[tuple[str, str]] = []
    for name, value in query:
        shape = call.params.get(name)
        if shape is None:
            raise Refused(f"query parameter {name!r} is not one kiisrv sends")
        if not re.fullmatch(shape, value, re.DOTALL):
            raise Refused(f"query parameter {name}={value!r} is not allowed")
        if call.kind is Kind.CREATE and name == "name":
            _check_name(value, policy)
        kept.append((name, value))
    if call.kind is Kind.CREATE and "name" not in {n for n, _ in kept}:
        raise Refused("a container of kiisrv's has a name of its instance")
    return kept


def _check_name(name: str, policy: Policy) -> None:
    """A container's name starts with its instance (``<instance>-build-...``): no name
    that looks like an id or a neighbour's name, which dockerd would resolve first."""
    if not any(
        re.fullmatch(re.escape(instance) + r"-[A-Za-z0-9_.-]+", name)
        for instance in policy.instances
    ):
        raise Refused(f"container name {name!r} is not <instance>-...")


# -- one container -----------------------------------------------------------------------


def owned(labels: object, policy: Policy) -> None:
    """Refused unless the labels are those of a container of a configured instance."""
    if not isinstance(labels, Mapping):
        raise Refused(NOT_OURS)
    if labels.get(LABEL_MANAGED) != "1" or labels.get(LABEL_INSTANCE) not in policy.instances:
        raise Refused(NOT_OURS)


def bound_container(reference: str, inspected: object, policy: Policy) -> str:
    """The full id of the container ``reference`` names, from the engine's inspect
    answer for it: Refused(NOT_OURS) unless the reference is exactly that container's
    full id or name (not a prefix: dockerd's last resort, which a deleted name falls
    through to) and it is this deployment's."""
    if not isinstance(inspected, Mapping):
        raise Refused(NOT_OURS)
    ident, name = inspected.get("Id"), inspected.get("Name")
    if not isinstance(ident, str) or not re.fullmatch(r"[0-9a-f]{64}", ident):
        raise Refused(NOT_OURS)
    if reference != ident and name != f"/{reference}":
        raise Refused(NOT_OURS)
    config = inspected.get("Config")
    owned(config.get("Labels") if isinstance(config, Mapping) else None, policy)
    return ident


def list_query(query: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The container list's query, with the engine asked for kiisrv's containers only."""
    filters: dict[str, Any] = {}
    rest: list[tuple[str, str]] = []
    for name, value in query:
        if name != "filters":
            rest.append((name, value))
            continue
        parsed = _json_text(value, "filters")
        if not isinstance(parsed, dict):
            raise Refused("filters is not a JSON object")
        filters.update(parsed)
    labels = filters.get("label", [])
    # The engine also takes {"label": {"a=b": true}}.
    labels = list(labels) if isinstance(labels, (list, dict)) else [labels]
    filters["label"] = [*labels, f"{LABEL_MANAGED}=1"]
    return [*rest, ("filters", json.dumps(filters))]


def visible(containers: object, policy: Policy) -> list[Mapping[str, Any]]:
    """The entries of a container list the caller may see (the engine ANDs label filters,
    so several instances cannot be asked for in one query)."""
    seen = []
    for c in containers if isinstance(containers, list) else []:
        try:
            owned(c.get("Labels") if isinstance(c, Mapping) else None, policy)
        except Refused:
            continue
        seen.append(c)
    return seen


# -- images ------------------------------------------------------------------------------


def visible_images(images: object, policy: Policy) -> list[dict[str, Any]]:
    """The image list narrowed to the controller images, each with only its controller
    names: what ``Engine.images`` reads, nothing of the rest of the host."""
    seen = []
    for image in images if isinstance(images, list) else []:
        if not isinstance(image, Mapping):
            continue
        tags = [t for t in image.get("RepoTags") or [] if policy.controller_image(t)]
        if tags:
            seen.append({**image, "RepoTags": tags, "RepoDigests": []})
    return seen


def check_image(call: Call, policy: Policy) -> None:
    name = call.path.split("/images/", 1)[1].removesuffix("/json")
    if not policy.controller_image(name):
        raise Refused("not a controller image")


def _json_text(text: str | bytes, what: str) -> Any:
    """JSON from a request, or Refused: never a 500 (a RecursionError from 50,000
    nested arrays included)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise Refused(f"{what} is not JSON") from None


def parse_json(text: str | bytes, what: str) -> Any:
    return _json_text(text, what)

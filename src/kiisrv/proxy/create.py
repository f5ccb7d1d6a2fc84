"""The create body: what a build container may be, checked by allow-list (policy.py
says why). A key kiisrv's ``Engine.start`` does not send is refused unless its value is
empty, every value it sends is checked for its type and against the operator's
ceilings, and the body forwarded is the one checked, re-serialised without the empty
keys (dockerd reads JSON case-insensitively and keeps the last of duplicate keys).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from kiisrv.proxy.policy import (
    TMPFS_FLAGS,
    TMPFS_TARGET,
    Ceilings,
    Policy,
    Refused,
    owned,
    parse_size,
)


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


def _strings(where: str, value: object) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Refused(f"{where} is not a list of strings")
    return value


def _int(where: str, value: object, low: int, high: int) -> int:
    # bool is an int in Python, not in the engine's Go.
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise Refused(f"{where} {value!r} is not within {low}..{high}")
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
# The top-level keys and the type each value must have.
_TOP_KEYS: Mapping[str, type | tuple[type, ...]] = {
    "Hostname": str,
    "Domainname": str,
    "User": str,
    "AttachStdin": bool,
    "AttachStdout": bool,
    "AttachStderr": bool,
    "Tty": bool,
    "OpenStdin": bool,
    "StdinOnce": bool,
    "Env": list,
    "Cmd": list,
    "Image": str,
    "WorkingDir": str,
    "NetworkDisabled": bool,
    "Labels": dict,
    "StopSignal": str,
    "StopTimeout": int,
    "HostConfig": dict,
}
_SECURITY_OPTS = {"no-new-privileges", "no-new-privileges:true", "no-new-privileges=true"}


def check_create(body: object, policy: Policy) -> dict[str, Any]:
    """The create body to forward; Refused when it asks for more than a build needs."""
    config = dict(_only("", _object("the body", body), _TOP_KEYS))
    for key, kind in _TOP_KEYS.items():
        value = config.get(key)
        if value is not None and (
            not isinstance(value, kind) or isinstance(value, bool) != (kind is bool)
        ):
            raise Refused(f"{key} is not a {getattr(kind, '__name__', kind)}")
    _strings("Env", config.get("Env"))
    _strings("Cmd", config.get("Cmd"))
    if not policy.controller_image(config.get("Image")):
        raise Refused(f"image {config.get('Image')!r} is not a controller image")
    if config.get("User") != policy.build_user:
        raise Refused(f"user {config.get('User')!r} is not the build user {policy.build_user}")
    labels = _object("Labels", config.get("Labels"))
    if not all(isinstance(v, str) for v in labels.values()):
        raise Refused("Labels are not strings")
    try:
        owned(labels, policy)
    except Refused:
        raise Refused("not a kiisrv build container of this deployment") from None
    config["HostConfig"] = _check_host(_object("HostConfig", config.get("HostConfig")), policy)
    return config


def _check_host(raw: Mapping[str, Any], policy: Policy) -> dict[str, Any]:
    limits = policy.ceilings
    for key, what in _FORBIDDEN_HOST.items():
        if not _empty(raw.get(key)):
            raise Refused(f"HostConfig.{key}: {what}")
    host = _only("HostConfig.", raw, _HOST_KEYS)
    if host.get("NetworkMode") != "none":
        raise Refused(f"HostConfig.NetworkMode {host.get('NetworkMode')!r}: only none")
    if host.get("CapDrop") != ["ALL"]:
        raise Refused(f"HostConfig.CapDrop {host.get('CapDrop')!r}: must be exactly ['ALL']")
    opts = _strings("HostConfig.SecurityOpt", host.get("SecurityOpt"))
    if not set(opts) & _SECURITY_OPTS:
        raise Refused("HostConfig.SecurityOpt must contain no-new-privileges")
    if set(opts) - _SECURITY_OPTS:
        raise Refused(f"HostConfig.SecurityOpt {sorted(set(opts) - _SECURITY_OPTS)}: not allowed")
    for key in ("ReadonlyRootfs", "AutoRemove", "Init"):
        if key in host and not isinstance(host[key], bool):
            raise Refused(f"HostConfig.{key} is not a boolean")
    memory = _int("HostConfig.Memory", host.get("Memory"), 1, limits.memory)
    if host.get("MemorySwap") != memory:
        raise Refused(f"HostConfig.MemorySwap {host.get('MemorySwap')!r}: must equal Memory")
    _int("HostConfig.PidsLimit", host.get("PidsLimit"), 1, limits.pids)
    if limits.nano_cpus:
        _int("HostConfig.NanoCpus", host.get("NanoCpus"), 1, limits.nano_cpus)
    elif "NanoCpus" in host:
        _int("HostConfig.NanoCpus", host["NanoCpus"], 1, 2**40)  # no quota, or any
    host["Tmpfs"] = _check_tmpfs(_object("HostConfig.Tmpfs", host.get("Tmpfs")), limits)
    if not host["Tmpfs"]:
        del host["Tmpfs"]
    host["LogConfig"] = _check_log(_object("HostConfig.LogConfig", host.get("LogConfig")), limits)
    mounts = host.get("Mounts") or []
    if not isinstance(mounts, list):
        raise Refused("HostConfig.Mounts is not a list")
    host["Mounts"] = [_check_mount(_object("a mount", m), policy) for m in mounts]
    return host


def _check_tmpfs(raw: Mapping[str, Any], limits: Ceilings) -> dict[str, str]:
    """At most one tmpfs, on /tmp, with a size (0 is unlimited to the kernel) within the
    ceiling and no option but those a build's /tmp has."""
    checked: dict[str, str] = {}
    for target, options in raw.items():
        if target != TMPFS_TARGET:
            raise Refused(f"HostConfig.Tmpfs {target!r}: only {TMPFS_TARGET}")
        if not isinstance(options, str):
            raise Refused("HostConfig.Tmpfs options are not a string")
        size = None
        for option in options.split(","):
            name, _, value = option.strip().partition("=")
            if name == "size":
                try:
                    size = parse_size(value)
                except ValueError:
                    raise Refused(f"tmpfs size {value!r} is not a size") from None
            elif name == "mode":
                if not re.fullmatch(r"[0-7]{3,4}", value):
                    raise Refused(f"tmpfs mode {value!r} is not an octal mode")
            elif name not in TMPFS_FLAGS or value:
                raise Refused(f"tmpfs option {option!r} is not allowed")
        if size is None or not 0 < size <= limits.tmpfs:
            raise Refused(f"tmpfs size must be within 1..{limits.tmpfs} bytes")
        checked[target] = options
    return checked


def _check_log(raw: Mapping[str, Any], limits: Ceilings) -> dict[str, Any]:
    log = _only("HostConfig.LogConfig.", raw, {"Type", "Config"})
    if log.get("Type") != "json-file":
        raise Refused("HostConfig.LogConfig.Type must be json-file")
    options = _only(
        "LogConfig.Config.", _object("LogConfig", log.get("Config")), {"max-size", "max-file"}
    )
    if not all(isinstance(v, str) for v in options.values()):
        raise Refused("HostConfig.LogConfig options are not strings")
    try:
        size = parse_size(options.get("max-size", ""))
    except ValueError:
        raise Refused("HostConfig.LogConfig needs a max-size") from None
    if not 0 < size <= limits.log_bytes:
        raise Refused(f"log max-size {options['max-size']} is over {limits.log_bytes} bytes")
    files = options.get("max-file", "1")
    if not re.fullmatch(r"[0-9]{1,3}", files) or not 1 <= int(files) <= limits.log_files:
        raise Refused(f"log max-file {files} is not 1..{limits.log_files}")
    return {"Type": "json-file", "Config": options}


def _check_mount(raw: Mapping[str, Any], policy: Policy) -> dict[str, Any]:
    # BindOptions (propagation) and VolumeOptions (a DriverConfig creates the volume as a
    # bind of any host folder) stay empty: _only refuses them.
    mount = _only("Mounts.", raw, {"Type", "Source", "Target", "ReadOnly", "Consistency"})
    source, target = mount.get("Source"), mount.get("Target")
    if not isinstance(target, str) or not target.startswith("/"):
        raise Refused(f"a mount target {target!r} is not an absolute path")
    if "ReadOnly" in mount and not isinstance(mount["ReadOnly"], bool):
        raise Refused("a mount's ReadOnly is not a boolean")
    if mount.get("Type") == "bind":
        # Whatever its path says: the server can write in its data folder, so it could
        # make that path a symlink to / between any check here and dockerd's mount.
        raise Refused(f"a bind mount ({source!r}): build containers mount no host folder")
    if mount.get("Type") != "volume":
        raise Refused(f"mount type {mount.get('Type')!r} is not allowed")
    if source is not None:
        # No named volume at all: no cache or anything else is shared between builds,
        # and a volume that exists under a name may be anyone's (or a host folder).
        raise Refused(f"a named volume ({source!r}): a build mounts its own folder only")
    return mount  # anonymous: the build's own folder, removed with the container

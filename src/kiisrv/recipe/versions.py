"""Firmware versions: the Versions table, and what each controller image says of itself.

Release details (commit count, date, hash) used to come from GitHub at start-up; a
host without a route to GitHub could not start. The controller image records them at
build time in ``/controller/kiisrv-version.json``, computed by git inside the build.
A Dockerfile ``LABEL`` cannot compute them, so they reach the server one of two ways:

- labels (``io.kiisrv.release.*``), put on by ``docker/controller/label.sh`` or a
  second build with the values as build args: read with the image list, no container;
- else the file itself, which the catalog copies out of the image once per image id
  (``catalog.py``) and judges here, strictly: ``release_from_file``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Version:
    name: str
    channel: str
    container: str
    git_tag: str

    @property
    def lts(self) -> bool:
        """LTS rewriting of the KLL applies to the lts channel only (KLL_GENERATION.md)."""
        return self.channel == "lts"


# name, channel, container, git tag: the reference server's table.
DEFAULT_VERSIONS: tuple[Version, ...] = (
    Version("nightly", "beta", "controller-057", "v0.5.7"),
    Version("latest", "stable", "controller-057", "v0.5.7"),
    Version("lts", "lts", "controller-050", "v0.5.0"),
    Version("v0.5.7", "beta", "controller-057", "v0.5.7"),
    Version("v0.5.6", "beta", "controller-056", "v0.5.6"),
    Version("v0.5.5", "beta", "controller-055", "v0.5.5"),
    Version("v0.5.4", "beta", "controller-054", "v0.5.4"),
    Version("v0.5.0", "stable", "controller-050", "v0.5.0"),
)

LABEL_PREFIX = "io.kiisrv.release."


@dataclass(frozen=True)
class ReleaseInfo:
    commit: int
    date: str
    hash: str
    bcd: str
    notes: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def bcd(count: int) -> str:
    """The commit count as the firmware reports it over USB: two bytes, ``msb.lsb``."""

    def part(x: int) -> str:
        return str(x) if x <= 99 else format(x, "x")

    count &= 0xFFFF
    return f"{part(count >> 8)}.{part(count & 0xFF)}"


def release_info(raw: bytes | None) -> ReleaseInfo | None:
    """Parse the image's version file; None when absent or unreadable (shown as null)."""
    if not raw:
        return None
    try:
        data = json.loads(raw)
        tag = str(data["tag"])
        commit = int(data["commit"])
        return ReleaseInfo(
            commit=commit,
            date=str(data["date"]),
            hash=str(data["hash"]),
            bcd=bcd(commit),
            notes=f"https://github.com/kiibohd/controller/releases/tag/{tag}",
        )
    except (ValueError, KeyError, TypeError):
        return None


def release_from_labels(labels: Mapping[str, str]) -> ReleaseInfo | None:
    """The image's ``io.kiisrv.release.*`` labels; None when absent or empty (null)."""
    values = {
        k.removeprefix(LABEL_PREFIX): v for k, v in labels.items() if k.startswith(LABEL_PREFIX)
    }
    if not all(values.get(k) for k in ("tag", "commit", "date", "hash")):
        return None
    return release_info(json.dumps(values).encode())


# What prepare.sh writes: the tag (it goes into the notes URL), ``git rev-parse`` of it
# (SHA-1 or SHA-256), ``git rev-list --count`` and ``git log --pretty=%ai``.
RELEASE_FILE = "/controller/kiisrv-version.json"
MAX_RELEASE_FILE = 4096
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_HASH = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2} [+-][0-9]{4}")


def release_from_file(raw: bytes) -> ReleaseInfo:
    """The image's ``kiisrv-version.json``, strictly: a JSON object with ``tag``, ``hash``,
    ``commit`` and ``date`` of prepare.sh's types and forms (no coercion: ``"12"`` is not
    a count); other keys are ignored. ValueError says what is wrong."""
    if len(raw) > MAX_RELEASE_FILE:
        raise ValueError(f"larger than {MAX_RELEASE_FILE} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError("not UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    missing = [k for k in ("tag", "hash", "commit", "date") if k not in data]
    if missing:
        raise ValueError(f"no {', '.join(missing)}")
    tag, hash_, commit, date = data["tag"], data["hash"], data["commit"], data["date"]
    if not isinstance(tag, str) or not _TAG.fullmatch(tag):
        raise ValueError(f"tag {tag!r} is not a git tag name")
    if not isinstance(hash_, str) or not _HASH.fullmatch(hash_):
        raise ValueError(f"hash {hash_!r} is not a full git object name")
    if type(commit) is not int or not 0 < commit < 2**31:
        raise ValueError(f"commit {commit!r} is not a commit count")
    if not isinstance(date, str) or not _DATE.fullmatch(date):
        raise ValueError(f"date {date!r} is not git's %ai form")
    try:
        datetime.strptime(date, "%Y-%m-%d %H:%M:%S %z")
    except ValueError:
        raise ValueError(f"date {date!r} is not a date") from None
    return ReleaseInfo(
        commit=commit,
        date=date,
        hash=hash_,
        bcd=bcd(commit),
        notes=f"https://github.com/kiibohd/controller/releases/tag/{tag}",
    )


@dataclass(frozen=True)
class Available:
    """A version a build can be made for now: its controller image (name and id, the id
    being what a build is keyed on) and that image's release details."""

    version: Version
    image: str
    image_id: str
    info: ReleaseInfo | None

"""Firmware versions: the Versions table, and what each controller image says of itself.

Release details (commit count, date, hash) used to come from GitHub at start-up; a
host without a route to GitHub could not start. Now the controller image records them
at build time in ``/controller/kiisrv-version.json`` and the server reads that file out
of the image (never running it), once per image id.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
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

VERSION_FILE = "/controller/kiisrv-version.json"


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

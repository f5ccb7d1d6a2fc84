"""Firmware versions: the Versions table, and what each controller image says of itself.

Release details (commit count, date, hash) used to come from GitHub at start-up; a
host without a route to GitHub could not start. The controller image records them at
build time in ``/controller/kiisrv-version.json``, computed by git inside the build;
since a Dockerfile ``LABEL`` cannot compute them, a second build passes them back in as
build args and they become image labels (``io.kiisrv.release.*``,
``docker/controller/label.sh``). The server reads them from the image list it fetches
anyway: no container, no file copied out of an image, no extra Engine API endpoint.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
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

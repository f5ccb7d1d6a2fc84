"""Pruning build outputs by age and by total size, and per-client ccache volumes.

A build's outputs are its zips in ``builds/`` and its inputs in ``config/<hash>``;
they go together. Age is the newest modification time of the group (a cache hit
touches its zip, so popular builds stay). Groups of builds that are queued or running
are never touched.

Each client's ccache volume (``ccache.py``) goes when no build used it for
``KIISRV_CCACHE_CLIENT_DAYS``, and the least recently used go past
``KIISRV_CCACHE_CLIENTS``: without that, every client ever seen kept a volume.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import anyio.to_thread

from kiisrv import ccache
from kiisrv.errors import KiisrvError

if TYPE_CHECKING:
    from kiisrv.engine import Engine
    from kiisrv.settings import Settings

log = logging.getLogger("kiisrv.retention")

_ZIP_RE = re.compile(r"^.+-([0-9a-f]{32})(_error)?\.zip$")
_HASH_RE = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class _Group:
    paths: list[Path] = field(default_factory=list)
    size: int = 0
    mtime: float = 0.0

    def add(self, path: Path) -> None:
        stat = path.stat()
        size = stat.st_size
        if path.is_dir():
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        self.paths.append(path)
        self.size += size
        self.mtime = max(self.mtime, stat.st_mtime)


@dataclass(frozen=True)
class PruneResult:
    removed: int
    freed_bytes: int
    kept: int
    kept_bytes: int
    hashes: tuple[str, ...] = ()  # the builds pruned (their Builds rows go too)


def _groups(config_dir: Path, builds_dir: Path) -> dict[str, _Group]:
    groups: dict[str, _Group] = {}
    if builds_dir.is_dir():
        for path in builds_dir.iterdir():
            m = _ZIP_RE.match(path.name)
            if m and path.is_file() and not path.is_symlink():
                groups.setdefault(m.group(1), _Group()).add(path)
    if config_dir.is_dir():
        for path in config_dir.iterdir():
            if _HASH_RE.match(path.name) and path.is_dir() and not path.is_symlink():
                groups.setdefault(path.name, _Group()).add(path)
    return groups


def prune(
    config_dir: Path,
    builds_dir: Path,
    *,
    max_age: float,
    max_bytes: int,
    in_use: Iterable[str] = (),
    now: float | None = None,
    dry_run: bool = False,
) -> PruneResult:
    now = time.time() if now is None else now
    busy = set(in_use)
    groups = _groups(config_dir, builds_dir)
    candidates = sorted(
        ((h, g) for h, g in groups.items() if h not in busy), key=lambda item: item[1].mtime
    )
    total = sum(g.size for g in groups.values())
    removed = freed = 0
    pruned: list[str] = []
    for hash_, group in candidates:
        if now - group.mtime <= max_age and total <= max_bytes:
            break  # the rest are younger, and the size is within bounds
        if not dry_run:
            for path in group.paths:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        log.info("pruned build %s (%d bytes)", hash_, group.size)
        pruned.append(hash_)
        removed += 1
        freed += group.size
        total -= group.size
    return PruneResult(removed, freed, len(groups) - removed, total, tuple(pruned))


# -- per-client ccache volumes -------------------------------------------------------------


def stale_volumes(
    last_used: Mapping[str, float], *, now: float, max_age: float, max_count: int
) -> list[str]:
    """The volumes to remove, oldest first: unused for ``max_age`` seconds, then the
    least recently used while more than ``max_count`` are left."""
    oldest_first = sorted(last_used, key=lambda name: last_used[name])
    gone = [name for name in oldest_first if now - last_used[name] > max_age]
    kept = [name for name in oldest_first if name not in gone]
    return gone + kept[: max(0, len(kept) - max_count)]


async def prune_ccache_volumes(
    settings: Settings, engine: Engine, now: float | None = None
) -> list[str]:
    """Removes the stale client ccache volumes of this engine; the names removed.

    A volume's last use is the mtime of its record (``ccache.record_use``), else when
    the engine created it (a record lost with the data folder). One a build is using
    is left (the engine refuses) and tried again next time.
    """
    now = time.time() if now is None else now
    prefix = ccache.client_volume_prefix(settings)
    created = await engine.volumes(prefix)
    recorded = await anyio.to_thread.run_sync(ccache.last_uses, settings)
    used = {
        name: recorded.get(name, made)
        for name, made in created.items()
        if ccache.is_client_volume(settings, name)
    }
    removed = []
    for name in stale_volumes(
        used,
        now=now,
        max_age=settings.ccache_client_days * 86400,
        max_count=settings.ccache_clients,
    ):
        try:
            gone = await engine.remove_volume(name, prefix)
        except KiisrvError as exc:
            log.warning("client ccache %s not removed: %s", name, exc.message)
            continue
        if gone:
            await anyio.to_thread.run_sync(ccache.forget, settings, name)
            log.info("removed client ccache %s (unused or over KIISRV_CCACHE_CLIENTS)", name)
            removed.append(name)
    return removed


async def prune_ccache_forever(settings: Settings, engine: Engine) -> None:
    """``kiisrv worker``'s pruner: its engine holds the client volumes of its builds."""
    if settings.prune_interval <= 0:
        return
    while True:
        try:
            await prune_ccache_volumes(settings, engine)
        except Exception:
            log.exception("pruning client ccaches failed; trying again later")
        await asyncio.sleep(settings.prune_interval)

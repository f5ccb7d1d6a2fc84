"""Pruning build outputs by age and by total size.

A build's outputs are its zips in ``builds/`` and its inputs in ``config/<hash>``;
they go together. Age is the newest modification time of the group (a cache hit
touches its zip, so popular builds stay). Groups of builds that are queued or running
are never touched.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

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
    rows: int = 0  # Builds rows deleted with them (or older than the files' retention)


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


async def prune_forever(interval: float, step: Callable[[], Awaitable[None]], what: str) -> None:
    """``step`` every ``interval`` seconds, for a server and a worker alike: a failed
    prune (a locked database, a full disk) is logged, and the next one runs."""
    while interval > 0:
        try:
            await step()
        except Exception:
            log.exception("%s: pruning failed; trying again in %g s", what, interval)
        await asyncio.sleep(interval)

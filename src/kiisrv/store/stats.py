"""Request statistics: recording them, and ``GET /stats``, the reference's summary.

Recording must cost a request nothing it can feel: rows are queued in memory and
written in batches, one transaction each, on the storage's Requests thread (never the
build path's); a batch the database refuses is kept and written by a later flush.
A row waits up to ``FLUSH_EVERY`` in memory, so each is first appended to a journal
(``<data>/requests.journal``, one line, one ``write`` to the page cache): a server
killed before its flush writes those rows when it starts again, each once (the
database keeps the last journal number written per instance, requests_store.record).
``/stats`` flushes first, so it always counts every request answered so far. The rows
live where ``storage.requests`` keeps them: this server's SQLite, or the PostgreSQL all
API servers share. The page reads the rollups kept with the rows (rollups.py), on the
pages' thread, so it costs the same with millions of rows; the count blocks are printed
the way the reference (Rust ``{:#?}`` of a map) printed them.

The page is public, so it counts keyboards by stock layout only: a layout name the
layouts folder does not have (one the user typed, ``Ada's travel board``) may name
its author, and is counted as ``<keyboard>-(other)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
from collections import Counter
from collections.abc import Collection
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio.to_thread

from kiisrv.errors import KiisrvError
from kiisrv.recipe.layouts import LayoutStore
from kiisrv.store.requests import WRITE_AT_MOST, RequestRecord
from kiisrv.store.storage import Storage

log = logging.getLogger("kiisrv.stats")

FLUSH_EVERY = 0.5  # seconds
FLUSH_AT = 512  # rows
# Rows kept for another try while the database cannot be written (about 300 bytes each).
MAX_PENDING = 200_000
# What a layout name outside the layouts folder is counted as (no file name holds "()").
OTHER = "(other)"
# The journal is rewritten (its rows not yet written, only) past this size.
JOURNAL_COMPACT_AT = 256 * 1024


class Journal:
    """Rows accepted and not yet in the database, on disk: a line each, appended.

    The first line names the journal (a random id: the database keeps the last number
    it wrote per journal) and carries the last number given (``{"id": ..., "seq": n}``),
    so that numbers keep growing across compactions and restarts; every other line is a
    row with its number.
    Compaction writes a new file and renames it over the old one, on a thread (the
    event loop only appends; lines appended meanwhile are held, then written to the new
    file): a kill leaves one file or the other, and either replays correctly (the
    database skips numbers it has).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.id = secrets.token_hex(8)  # a new journal's; an existing one says its own
        self.last = 0
        self._fd = -1
        self._held: list[bytes] | None = None  # lines appended while compacting

    def open(self) -> list[tuple[int, RequestRecord, bytes]]:
        """The rows left by the last run (blocking, at start); then appends."""
        rows: list[tuple[int, RequestRecord, bytes]] = []
        with contextlib.suppress(FileNotFoundError), self.path.open("rb") as fh:
            for line in fh:
                try:
                    item = json.loads(line)
                    seq = int(item.pop("seq"))
                    if "id" in item:
                        self.id = str(item["id"])
                    else:
                        rows.append((seq, _record(item), line))
                    self.last = max(self.last, seq)
                except (ValueError, KeyError, TypeError):
                    log.warning("skipping a damaged line of %s", self.path)  # a torn write
        self._rewrite(rows)
        return rows

    def append(self, row: RequestRecord) -> tuple[int, bytes]:
        self.last += 1
        item = asdict(row)
        item["request_time"] = row.request_time.isoformat()
        line = json.dumps({"seq": self.last, **item}, separators=(",", ":")).encode() + b"\n"
        if self._held is not None:
            self._held.append(line)
        elif self._fd >= 0:  # not before ``open`` (a recorder never started keeps none)
            os.write(self._fd, line)
        return self.last, line

    async def compact(
        self, pending: list[tuple[int, RequestRecord, bytes]], force: bool = False
    ) -> None:
        """Keep only ``pending`` (the rows not yet written), once the file has grown (rows
        written already are harmless in it: a replay skips them)."""
        if self._fd < 0 or self._held is not None:
            return
        if not force and os.fstat(self._fd).st_size <= JOURNAL_COMPACT_AT:
            return
        self._held = []
        try:
            await anyio.to_thread.run_sync(self._rewrite, list(pending))
        finally:
            held, self._held = self._held, None
            if held and self._fd >= 0:
                os.write(self._fd, b"".join(held))

    def _rewrite(self, pending: list[tuple[int, RequestRecord, bytes]]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("wb") as fh:
            fh.write(json.dumps({"id": self.id, "seq": self.last}).encode() + b"\n")
            fh.writelines(line for _, _, line in pending)
        os.replace(tmp, self.path)
        self.close()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _record(item: dict[str, Any]) -> RequestRecord:
    item["request_time"] = datetime.fromisoformat(item["request_time"])
    return RequestRecord(**item)


class StatsRecorder:
    """Batches Requests rows (and cache-hit touches of zips) off the event loop."""

    def __init__(self, storage: Storage, journal: Path) -> None:
        self.storage = storage
        self._journal = Journal(journal)
        self._rows: list[tuple[int, RequestRecord, bytes]] = []
        self._touch: set[Path] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Rows a killed run left in the journal are written with the next flush."""
        left = await anyio.to_thread.run_sync(self._journal.open)
        if left:
            log.info(
                "%d requests of the last run to record, from %s", len(left), self._journal.path
            )
        self._rows[:0] = left
        self._task = asyncio.create_task(self._loop(), name="stats-recorder")

    def record(self, row: RequestRecord) -> None:
        seq, line = self._journal.append(row)
        self._rows.append((seq, row, line))
        if len(self._rows) >= FLUSH_AT:
            self._wake.set()

    def touch(self, path: Path) -> None:
        """Mark a zip as recently used, so retention keeps popular builds longest."""
        self._touch.add(path)

    async def flush(self) -> None:
        async with self._lock:
            rows, self._rows = self._rows, []
            touch, self._touch = self._touch, set()
            if touch:
                await self.storage.run_requests(_touch_all, touch)
            while rows:
                # A batch per write: after a long outage, each write stays short (its
                # own transaction, inside the statement timeout).
                batch, rows = rows[:WRITE_AT_MOST], rows[WRITE_AT_MOST:]
                journal = (self._journal.id, [seq for seq, _, _ in batch])
                try:
                    await self.storage.run_requests(
                        self.storage.record_requests, [row for _, row, _ in batch], journal
                    )
                except KiisrvError as exc:
                    # Kept, in order, for the next flush: a database that is down for a
                    # while (a full disk, PostgreSQL restarting) loses no accepted request.
                    self._rows[:0] = batch + rows
                    lost = len(self._rows) - MAX_PENDING
                    if lost > 0:
                        del self._rows[:lost]
                    log.error(
                        "could not record %d requests, kept for the next try%s: %s",
                        len(batch) + len(rows),
                        f" ({lost} oldest dropped: over {MAX_PENDING} waiting)" if lost > 0 else "",
                        exc.message,
                    )
                    break
            if not rows:  # all written: the journal need keep only what came meanwhile
                await self._journal.compact(self._rows)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await self.flush()
            await self._journal.compact(self._rows, force=True)
        finally:
            self._journal.close()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FLUSH_EVERY)
            self._wake.clear()
            await self.flush()


def _touch_all(paths: set[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.utime(path)


def _rust_map(counts: list[tuple[str, int]]) -> str:
    if not counts:
        return "{}"
    body = "".join(f'    "{k}": {v},\n' for k, v in counts)
    return "{\n" + body + "}"


def _rust_float(x: float) -> str:
    return str(int(x)) if x == int(x) else repr(x)


def stock_layouts(layouts: LayoutStore) -> frozenset[str]:
    """``<keyboard>-<layout>`` of every file of the layouts folder, also under the
    keyboards' aliases (``K-Type-Standard``), which ``/stats`` may name (blocking)."""
    names = {p.name.removesuffix(".json") for p in layouts.root.glob("*.json")}
    for alias, board in layouts.board_aliases().items():
        names |= {alias + n[len(board) :] for n in names if n.startswith(f"{board}-")}
    return frozenset(names)


async def render(storage: Storage, layouts: LayoutStore) -> str:
    """The page, read on the pages' thread."""
    return await storage.read(lambda: summary(storage, stock_layouts(layouts)))


async def as_json(storage: Storage, layouts: LayoutStore) -> dict[str, Any]:
    """The figures of the page, for ``/stats.json``."""
    return await storage.read(lambda: figures(storage, stock_layouts(layouts)))


def figures(storage: Storage, stock: Collection[str]) -> dict[str, Any]:
    """The figures of ``/stats`` (blocking: a few dozen rows of the rollups); layouts not
    in ``stock`` are counted as ``<keyboard>-(other)``."""
    counts = storage.request_counts(stock)
    t = counts.totals
    total, unique, users = t.get("builds", 0), t.get("unique", 0), t.get("users", 0)
    layers, durations = t.get("layers", 0), t.get("duration", 0)

    def ordered(counts: Counter[str]) -> list[tuple[str, int]]:
        # Ties are ordered here, not in SQL: Postgres would sort by its locale's collation.
        return sorted(((k, n) for k, n in counts.items() if n > 0), key=lambda kn: (-kn[1], kn[0]))

    def by(dim: str) -> list[tuple[str, int]]:
        return ordered(Counter(counts.by.get(dim, {})))

    # Stock layouts by name; the rest of each keyboard's requests as <keyboard>-(other).
    keyboards: Counter[str] = Counter()
    other = Counter(counts.by.get("board", {}))
    for board, variant, n in counts.keyboards:
        keyboards[f"{board}-{variant}"] += n
        other[board] -= n
    for board, n in other.items():
        keyboards[f"{board}-{OTHER}"] += n

    return {
        "builds": total,
        "unique": unique,
        "cache_ratio": total / unique if unique else 0.0,
        "avg_time_s": durations / unique / 1000 if unique else 0.0,
        "users": users,
        "builds_per_user": total / users if users else 0.0,
        "avg_layers": layers / total if total else 0.0,
        "os": by("os"),
        "platform": by("platform"),
        "keyboard": ordered(keyboards),
        "version": by("version"),
    }


def summary(storage: Storage, stock: Collection[str]) -> str:
    """The page itself, as the reference printed it (blocking: see ``render``)."""
    f = figures(storage, stock)
    return (
        f"Builds: {f['builds']} ({f['unique']} unique)\n"
        f"Cache ratio: {f['cache_ratio']:.1f}\n"
        f"Avg time: {f['avg_time_s']:.3f} s\n\n"
        f"Users: {f['users']} unique\n"
        f"Avg builds per user: {f['builds_per_user']:.1f}\n"
        f"Average number of layers: {_rust_float(f['avg_layers'])}\n\n"
        f"OS Counts: {_rust_map(f['os'])}\n"
        f"Platform Counts: {_rust_map(f['platform'])}\n"
        f"Keyboard Counts: {_rust_map(f['keyboard'])}\n"
        f"Version Counts: {_rust_map(f['version'])}\n\n"
    )

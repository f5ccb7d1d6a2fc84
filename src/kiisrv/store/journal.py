"""Request statistics, recorded: every answered request's row, never lost, never waited on.

Recording must cost a request nothing it can feel: rows are queued in memory and
written in batches, one transaction each, on the storage's Requests thread (never the
build path's); a batch the database refuses is kept and written by a later flush.
A row waits up to ``FLUSH_EVERY`` in memory, so each is first appended to a journal
(``<data>/requests.journal``, one line, one ``write`` to the page cache): a server
killed before its flush writes those rows when it starts again, each once (the
database keeps the last journal number written per instance, requests.record).
``/stats`` (web/stats.py) flushes first, so it always counts every request answered so
far. The rows live where ``storage.requests`` keeps them: this server's SQLite, or the
PostgreSQL all API servers share.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio.to_thread

from kiisrv.errors import KiisrvError
from kiisrv.store.requests import WRITE_AT_MOST, RequestRecord
from kiisrv.store.storage import Storage

log = logging.getLogger("kiisrv.stats")

FLUSH_EVERY = 0.5  # seconds
FLUSH_AT = 512  # rows
# Rows kept for another try while the database cannot be written (about 300 bytes each).
MAX_PENDING = 200_000
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

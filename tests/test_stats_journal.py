"""Requests rows survive a killed server (stats.Journal), each written once.

A row waited up to half a second in memory before its batch was written: a server
killed meanwhile (SIGKILL, OOM, a crash) lost the rows of the requests it had just
answered (the compose cluster test measured it). Now each is in the journal first, and
the database remembers the last journal number it wrote. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from kiisrv.store.journal import JOURNAL_COMPACT_AT, StatsRecorder
from kiisrv.store.requests import RequestRecord
from kiisrv.store.storage import Storage

pytestmark = pytest.mark.anyio


def _row(n: int) -> RequestRecord:
    return RequestRecord(
        ip_addr=f"client-{n}",
        os="Linux",
        web=True,
        hash=f"{n:032x}",
        board="KType",
        variant="Mine",
        layers=2,
        container="controller-057",
        success=True,
        request_time=datetime.now(UTC),
        build_duration=1000,
    )


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None
    else:
        yield request.getfixturevalue("stats_url")


def _count(url: str | None, stats_db: Path) -> list[str]:
    sql = "SELECT ip_addr FROM Requests ORDER BY ip_addr"
    if url:
        with psycopg.connect(url) as conn:
            try:
                return [r[0] for r in conn.execute(sql).fetchall()]
            except psycopg.errors.UndefinedTable:  # nothing written yet, not even the table
                return []
    with sqlite3.connect(stats_db) as db:
        return [r[0] for r in db.execute(sql).fetchall()]


class _Server:
    """A server's storage and recorder, started; ``kill`` ends it without a flush."""

    def __init__(self, tmp: Path, url: str | None) -> None:
        self.storage = Storage(tmp / "stats.db", tmp / "config.db", url)
        self.recorder = StatsRecorder(self.storage, tmp / "requests.journal")

    async def kill(self) -> None:
        assert self.recorder._task is not None
        self.recorder._task.cancel()  # nothing flushed: what SIGKILL leaves
        self.recorder._journal.close()
        self.storage.close()


async def test_rows_answered_before_a_kill_are_written_at_the_next_start_once(
    tmp_path: Path, database: str | None
) -> None:
    first = _Server(tmp_path, database)
    await first.recorder.start()
    for n in range(3):
        first.recorder.record(_row(n))
    await first.kill()
    assert _count(database, tmp_path / "stats.db") == []  # lost, without the journal

    second = _Server(tmp_path, database)
    await second.recorder.start()
    await second.recorder.flush()
    for n in range(3, 5):
        second.recorder.record(_row(n))
    await second.recorder.flush()  # written; the lines stay in the journal until compacted
    await second.kill()

    third = _Server(tmp_path, database)
    await third.recorder.start()  # replays all five lines: the database skips what it has
    await third.recorder.stop()
    third.storage.close()
    assert _count(database, tmp_path / "stats.db") == [f"client-{n}" for n in range(5)]
    lines = (tmp_path / "requests.journal").read_bytes().splitlines()
    assert len(lines) == 1 and set(json.loads(lines[0])) == {"id", "seq"}  # a clean stop


async def test_the_journal_is_compacted_and_its_numbers_keep_growing(
    tmp_path: Path, database: str | None
) -> None:
    server = _Server(tmp_path, database)
    await server.recorder.start()
    rows = JOURNAL_COMPACT_AT // 250 + 10  # a line is about 300 bytes
    for n in range(rows):
        server.recorder.record(_row(n))
    await server.recorder.flush()
    journal = tmp_path / "requests.journal"
    assert journal.stat().st_size < 1024  # compacted: the written rows are gone from it
    head = json.loads(journal.read_bytes().splitlines()[0])
    assert head["seq"] == rows
    server.recorder.record(_row(rows))
    await server.kill()

    again = _Server(tmp_path, database)
    await again.recorder.start()
    await again.recorder.stop()
    again.storage.close()
    assert len(_count(database, tmp_path / "stats.db")) == rows + 1


async def test_rows_recorded_while_the_journal_is_compacted_are_kept(
    tmp_path: Path, database: str | None
) -> None:
    """Compaction runs on a thread (a rename is blocking work); a row recorded meanwhile
    is held and written to the new file, not to the one being replaced."""
    server = _Server(tmp_path, database)
    await server.recorder.start()
    compacting = asyncio.create_task(server.recorder._journal.compact([], force=True))
    await asyncio.sleep(0)  # the rewrite has started on its thread
    server.recorder.record(_row(1))
    await compacting
    await server.kill()

    again = _Server(tmp_path, database)
    await again.recorder.start()
    await again.recorder.stop()
    again.storage.close()
    assert _count(database, tmp_path / "stats.db") == ["client-1"]

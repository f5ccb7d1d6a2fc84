"""SQLite storage: ``config.db`` (Versions, ImageReleases) and ``stats.db`` (Builds;
Requests by default).

The Requests table keeps the reference schema so existing statistics carry over.
Builds is new: one row per distinct build, so that a build accepted before a restart
can still be reported (as failed, with the reason) after it. The Requests rows go
through ``requests`` (requests.py): ``stats.db`` too, or the PostgreSQL database
all API servers share when ``KIISRV_STATS_URL`` is set.

Three lanes, each a thread and connections of its own, so that none waits for another:

- ``run``: the build path (Builds, Versions). Admitting a build saves its job row
  here; nothing else runs on this thread, so no page and no PostgreSQL call is ever
  ahead of it.
- ``run_requests``: writing Requests rows (batches, the prune, the address migration),
  to SQLite or PostgreSQL.
- ``read``: the pages (``/stats``, ``/status``, ``/metrics``): reads of rollups and
  indexes (rollups.py), on a reader connection (SQLite's WAL lets it read while the
  others write) and, with PostgreSQL, a connection of their own.

The methods block (a write can wait out the busy timeout on a locked database); async
code calls them through those three.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from kiisrv.errors import StorageError
from kiisrv.jobs import Job, JobState
from kiisrv.recipe.versions import Version
from kiisrv.store import requests as requests_rows
from kiisrv.store import rollups
from kiisrv.store.db import SqliteDatabase, sqlite_connect, sqlite_errors
from kiisrv.store.requests import (
    SQLITE_SCHEMA,
    RequestRecord,
    RequestsStore,
    open_store,
    sqlite_migrate,
)

P = ParamSpec("P")
T = TypeVar("T")

_CONFIG_SCHEMA = """
CREATE TABLE IF NOT EXISTS Versions (
    name      TEXT PRIMARY KEY,
    channel   TEXT,
    container TEXT,
    git_tag   TEXT
);
-- Each controller image's /controller/kiisrv-version.json, read once (catalog.py): an
-- image never changes under its id. NULL file: the image has none; empty: unusable
-- (too large, not a plain file). Judged when loaded, by the server of the day.
CREATE TABLE IF NOT EXISTS ImageReleases (
    image_id TEXT PRIMARY KEY,
    file     BLOB,
    read_at  TEXT NOT NULL
);
"""

_STATS_SCHEMA = (
    SQLITE_SCHEMA
    + """
CREATE TABLE IF NOT EXISTS Builds (
    hash        TEXT PRIMARY KEY,
    stem        TEXT NOT NULL,
    version     TEXT NOT NULL,
    container   TEXT NOT NULL,
    state       TEXT NOT NULL,
    error       TEXT,
    created_at  TEXT NOT NULL,
    started_at  TEXT,
    finished_at TEXT,
    duration_ms INTEGER
);
"""
)
# Builds rows deleted per transaction by the pruner (the build path's writes slip in).
_PRUNE_BUILDS_AT_MOST = 1000


def now() -> datetime:
    return datetime.now(UTC)


def _migrate_builds(conn: sqlite3.Connection) -> None:
    """The Builds indexes, rollups and their triggers; the rollups built from the rows
    once (a database of an older server), in one transaction with the triggers."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    script = rollups.BUILDS_ROLLUP_SCHEMA
    if version < rollups.BUILDS_ROLLUP_VERSION:
        script += rollups.BUILDS_ROLLUP_REBUILD + rollups.histogram_rebuild() + ";"
        script += f"PRAGMA user_version = {rollups.BUILDS_ROLLUP_VERSION};"
    conn.executescript(f"BEGIN IMMEDIATE; {script} COMMIT;")


class Storage:
    def __init__(
        self,
        stats_db: Path,
        config_db: Path,
        stats_url: str | None = None,
        statement_timeout: float = 5.0,
    ) -> None:
        with sqlite_errors():
            # The build lane: Builds and Versions, under one lock.
            self._mutex = threading.Lock()
            self._stats = sqlite_connect(stats_db, _STATS_SCHEMA)
            sqlite_migrate(self._stats)
            _migrate_builds(self._stats)
            self._config = sqlite_connect(config_db, _CONFIG_SCHEMA)
            # The pages' lane: stats.db read-only (Builds; Requests too without a URL).
            self._reader = SqliteDatabase(stats_db, reader=True, where="SQLite (stats.db)")
        # The Requests rows: in stats.db, or in the PostgreSQL all API servers share;
        # a connection to write them and one for the pages.
        self.requests: RequestsStore = open_store(stats_url, stats_db, timeout=statement_timeout)
        self.requests_reader: RequestsStore = (
            open_store(stats_url, stats_db, timeout=statement_timeout, reader=True)
            if stats_url
            else self._reader
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kiisrv-sqlite")
        self._requests_executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="kiisrv-requests"
        )
        self._read_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kiisrv-pages")

    @staticmethod
    async def _on(
        executor: ThreadPoolExecutor, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, functools.partial(fn, *args, **kwargs))

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args)`` on the build path's thread, off the event loop."""
        return await self._on(self._executor, fn, *args, **kwargs)

    async def run_requests(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args)`` on the thread that writes Requests rows."""
        return await self._on(self._requests_executor, fn, *args, **kwargs)

    async def read(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args)`` on the pages' thread: reads only, never ahead of a build."""
        return await self._on(self._read_executor, fn, *args, **kwargs)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """One caller at a time; SQLite failures (a full disk) become StorageError."""
        with self._mutex, sqlite_errors():
            yield

    def close(self) -> None:
        for executor in (self._read_executor, self._requests_executor, self._executor):
            executor.shutdown(wait=True)
        self.requests.close()
        self.requests_reader.close()
        if self.requests_reader is not self._reader:
            self._reader.close()
        with self._lock():
            self._stats.close()
            self._config.close()

    # -- versions ----------------------------------------------------------------

    def seed_versions(self, versions: Iterable[Version]) -> None:
        """Insert the default rows that are missing; rows an operator edited stay."""
        with self._lock():
            self._config.executemany(
                "INSERT OR IGNORE INTO Versions VALUES (?, ?, ?, ?)",
                [(v.name, v.channel, v.container, v.git_tag) for v in versions],
            )

    def versions(self) -> list[Version]:
        with self._lock():
            rows = self._config.execute(
                "SELECT name, channel, container, git_tag FROM Versions ORDER BY rowid"
            ).fetchall()
        return [Version(*row) for row in rows]

    # -- release files of images (catalog.py) -------------------------------------------

    def image_releases(self, image_ids: Collection[str]) -> dict[str, bytes | None]:
        """The release files read before of these images (None: the image has none);
        an id never read is not in the answer."""
        ids = sorted(set(image_ids))
        if not ids:
            return {}
        with self._lock():
            rows = self._config.execute(
                f"SELECT image_id, file FROM ImageReleases WHERE image_id IN"
                f" ({', '.join('?' * len(ids))})",
                ids,
            ).fetchall()
        return {str(i): None if f is None else bytes(f) for i, f in rows}

    def save_image_release(self, image_id: str, file: bytes | None) -> None:
        with self._lock():
            self._config.execute(
                "INSERT INTO ImageReleases VALUES (?, ?, ?) ON CONFLICT (image_id)"
                " DO UPDATE SET file = excluded.file, read_at = excluded.read_at",
                (image_id, file, now().isoformat()),
            )

    # -- requests (the writer's connection) ------------------------------------------

    def record_request(self, r: RequestRecord) -> None:
        self.record_requests([r])

    def record_requests(
        self, records: Sequence[RequestRecord], journal: tuple[str, Sequence[int]] | None = None
    ) -> None:
        """Many rows in few transactions (and their rollups): one commit for a batch;
        ``journal``: each row once, whatever was written before (requests_rows.record)."""
        requests_rows.record(self.requests, records, journal)

    def pseudonymise(self, hide: Callable[[str], str], is_raw: Callable[[str], bool]) -> int:
        """Replaces raw client addresses (databases of older servers) by ``hide(address)``."""
        return requests_rows.pseudonymise(self.requests, hide, is_raw)

    def prune_requests(self, before: datetime) -> int:
        """Deletes the Requests rows of requests made before ``before``."""
        return requests_rows.prune(self.requests, before)

    # -- the pages (the readers' connections) ----------------------------------------

    def query_requests(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """A read of the Requests table wherever it is (SQL both SQLite and Postgres run)."""
        return requests_rows.query(self.requests_reader, sql, *args)

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """A read of the SQLite ``stats.db`` (Builds), on the pages' connection."""
        return self._reader.read(lambda db: db.rows(sql, args))

    def request_counts(self, stock: Collection[str]) -> rollups.Counts:
        """The rollups of ``/stats`` (rows of stock layouts looked up by key)."""
        counts = self.requests_reader.read(lambda db: rollups.read_counts(db, stock))
        if counts is None:  # a first start of another server is building them
            raise StorageError("the statistics are being prepared", retry_after=10)
        return counts

    def top_boards(self, n: int) -> list[tuple[str, int]]:
        """The ``n`` most requested keyboards, from the rollups."""
        return self.requests_reader.read(lambda db: rollups.top_boards(db, n))

    def build_days(self, days: int) -> list[tuple[str, int, int]]:
        """(day, succeeded, failed) of the last ``days`` days with finished builds, the
        latest first (BuildDays: rows per day, version and result)."""
        rows = self.query(
            "SELECT day, SUM(CASE state WHEN 'succeeded' THEN n ELSE 0 END),"
            " SUM(CASE state WHEN 'failed' THEN n ELSE 0 END)"
            " FROM BuildDays GROUP BY day HAVING SUM(n) > 0 ORDER BY day DESC LIMIT ?",
            days,
        )
        return [(str(d), int(ok), int(failed)) for d, ok, failed in rows]

    # -- builds --------------------------------------------------------------------

    def save_job(self, job: Job) -> None:
        """Its row; an upsert, not INSERT OR REPLACE, whose delete would hide the old
        row from the rollups' triggers."""
        with self._lock():
            self._stats.execute(
                "INSERT INTO Builds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (hash) DO UPDATE SET stem = excluded.stem,"
                " version = excluded.version, container = excluded.container,"
                " state = excluded.state, error = excluded.error,"
                " created_at = excluded.created_at, started_at = excluded.started_at,"
                " finished_at = excluded.finished_at, duration_ms = excluded.duration_ms",
                (
                    job.hash,
                    job.stem,
                    job.version,
                    job.container,
                    job.state.value,
                    job.error,
                    _iso(job.created_at),
                    _iso(job.started_at),
                    _iso(job.finished_at),
                    job.duration_ms,
                ),
            )

    def load_job(self, hash_: str) -> Job | None:
        with self._lock():
            row = self._stats.execute("SELECT * FROM Builds WHERE hash = ?", (hash_,)).fetchone()
        if row is None:
            return None
        return Job(
            hash=row[0],
            stem=row[1],
            version=row[2],
            container=row[3],
            state=JobState(row[4]),
            error=row[5],
            created_at=_dt(row[6]) or now(),
            started_at=_dt(row[7]),
            finished_at=_dt(row[8]),
            duration_ms=row[9],
        )

    def unfinished_jobs(self) -> list[Job]:
        """Builds queued or running when a previous run of the server stopped."""
        return [job for h in self.unfinished() if (job := self.load_job(h)) is not None]

    def unfinished(self) -> list[str]:
        """Hashes of builds queued or running (in any server using this database)."""
        with self._lock():
            rows = self._stats.execute(
                "SELECT hash FROM Builds WHERE state IN (?, ?)",
                (JobState.QUEUED.value, JobState.RUNNING.value),
            ).fetchall()
        return [r[0] for r in rows]

    def fail_unfinished(self, reason: str) -> int:
        """Builds a previous run accepted but never finished: record why, once."""
        with self._lock():
            cur = self._stats.execute(
                "UPDATE Builds SET state = ?, error = ?, finished_at = ? WHERE state IN (?, ?)",
                (
                    JobState.FAILED.value,
                    reason,
                    now().isoformat(),
                    JobState.QUEUED.value,
                    JobState.RUNNING.value,
                ),
            )
            return cur.rowcount

    def prune_builds(self, hashes: Collection[str], before: datetime, keep: Collection[str]) -> int:
        """Deletes the Builds rows of ``hashes`` (builds whose outputs were pruned) and of
        builds finished before ``before``; never of a build unfinished or in ``keep``.
        In short transactions: the build path's writes wait for one at most."""
        unfinished = (JobState.QUEUED.value, JobState.RUNNING.value)
        with self._lock():
            old = [
                h
                for (h,) in self._stats.execute(
                    "SELECT hash FROM Builds WHERE finished_at < ?", (before.isoformat(),)
                )
            ]
        doomed = sorted((set(hashes) | set(old)) - set(keep))
        gone = 0
        for start in range(0, len(doomed), _PRUNE_BUILDS_AT_MOST):
            chunk = doomed[start : start + _PRUNE_BUILDS_AT_MOST]
            marks = ", ".join("?" * len(chunk))
            with self._lock():
                cur = self._stats.execute(
                    f"DELETE FROM Builds WHERE hash IN ({marks}) AND state NOT IN (?, ?)",
                    (*chunk, *unfinished),
                )
                gone += cur.rowcount
        return gone


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None

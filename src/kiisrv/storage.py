"""SQLite storage: ``config.db`` (Versions) and ``stats.db`` (Builds; Requests by default).

The Requests table keeps the reference schema so existing statistics carry over.
Builds is new: one row per distinct build, so that a build accepted before a restart
can still be reported (as failed, with the reason) after it. Every write goes through
this object's lock on one connection per file, in WAL mode. The Requests rows go
through ``requests`` (requests_store.py): ``stats.db`` too, or the PostgreSQL database
all API servers share when ``KIISRV_STATS_URL`` is set.

The methods block (a write can wait out the busy timeout on a locked database), so
async code calls them through ``run``: one thread of the storage's own, which also
keeps SQLite work in order without contending for the lock.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from kiisrv.errors import StorageError
from kiisrv.jobs import Job, JobState
from kiisrv.requests_store import SQLITE_SCHEMA, RequestsStore, open_store
from kiisrv.versions import Version

P = ParamSpec("P")
T = TypeVar("T")

_CONFIG_SCHEMA = """
CREATE TABLE IF NOT EXISTS Versions (
    name      TEXT PRIMARY KEY,
    channel   TEXT,
    container TEXT,
    git_tag   TEXT
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


@dataclass(frozen=True)
class RequestRecord:
    ip_addr: str
    os: str
    web: bool
    hash: str
    board: str
    variant: str
    layers: int
    container: str
    success: bool
    request_time: datetime
    build_duration: int | None


def now() -> datetime:
    return datetime.now(UTC)


def _connect(path: Path, script: str) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(script)
    return conn


class Storage:
    def __init__(self, stats_db: Path, config_db: Path, stats_url: str | None = None) -> None:
        self._mutex = threading.Lock()
        self._stats = _connect(stats_db, _STATS_SCHEMA)
        self._config = _connect(config_db, _CONFIG_SCHEMA)
        # The Requests rows: in stats.db, or in the PostgreSQL all API servers share.
        self.requests: RequestsStore = open_store(stats_url, self._stats)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kiisrv-sqlite")

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args)`` on the storage thread, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """One caller at a time; SQLite failures (a full disk) become StorageError."""
        with self._mutex:
            try:
                yield
            except sqlite3.Error as exc:
                raise StorageError(f"the server cannot use its database: {exc}") from exc

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        with self._lock():
            self.requests.close()
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

    # -- requests ------------------------------------------------------------------

    def record_request(self, r: RequestRecord) -> None:
        self.record_requests([r])

    def record_requests(self, records: Sequence[RequestRecord]) -> None:
        """Many rows in one transaction: one commit for a whole batch of requests."""
        with self._lock():
            self.requests.record(records)

    def pseudonymise(self, hide: Callable[[str], str], is_raw: Callable[[str], bool]) -> int:
        """Replaces raw client addresses (databases of older servers) by ``hide(address)``."""
        with self._lock():
            return self.requests.pseudonymise(hide, is_raw)

    def prune_requests(self, before: datetime) -> int:
        """Deletes the Requests rows of requests made before ``before``."""
        with self._lock():
            return self.requests.prune(before)

    def query_requests(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """A read of the Requests table wherever it is (SQL both SQLite and Postgres run)."""
        with self._lock():
            return self.requests.query(sql, *args)

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """A read of the SQLite ``stats.db`` (Builds)."""
        with self._lock():
            return self._stats.execute(sql, args).fetchall()

    # -- builds --------------------------------------------------------------------

    def save_job(self, job: Job) -> None:
        with self._lock():
            self._stats.execute(
                "INSERT OR REPLACE INTO Builds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None

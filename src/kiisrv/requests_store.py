"""Where the Requests rows (the statistics) live: the one seam between SQLite and PostgreSQL.

With one API server its own SQLite ``stats.db`` holds them, as it always did. With
several, each would count only the requests it answered, so ``KIISRV_STATS_URL``
names a PostgreSQL database they all write to and ``/stats`` reads from
(docs/distributed.md). Only Requests moves: Builds is one server's job state and
Versions its configuration, both stay in SQLite.

Both stores take the same SQL: the aggregates of ``stats.figures`` and the status
page are written in the dialect the two share (``COUNT(DISTINCT …)``, ``CASE``,
``||``), placeholders are ``?`` (turned into ``%s`` for psycopg), and the Postgres
columns have the types the SQLite values have (``web`` and ``success`` INTEGER 0/1,
``request_time`` the ISO 8601 text SQLite holds, which orders like time).

The methods block; ``Storage`` calls them on its own thread, one at a time, under its
lock. Every failure of the database is a ``StorageError`` (503 + Retry-After).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from kiisrv.errors import StorageError

if TYPE_CHECKING:  # imported when used: servers without KIISRV_STATS_URL never load it
    import psycopg

    from kiisrv.storage import RequestRecord

_COLUMNS = (
    "ip_addr, os, web, hash, board, variant, layers, container, success, request_time,"
    " build_duration"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS Requests (
    id             {id},
    uid            INTEGER,
    ip_addr        TEXT NOT NULL,
    os             TEXT NOT NULL,
    web            INTEGER NOT NULL,
    serial         INTEGER,
    hash           TEXT NOT NULL,
    board          TEXT NOT NULL,
    variant        TEXT NOT NULL,
    layers         INTEGER NOT NULL,
    container      TEXT NOT NULL,
    success        INTEGER NOT NULL,
    request_time   {time} NOT NULL,
    build_duration INTEGER
);
"""
SQLITE_SCHEMA = _SCHEMA.format(id="INTEGER PRIMARY KEY AUTOINCREMENT", time="INTEGER")
# The reference's columns; request_time is TEXT because what SQLite has always held
# there (its column says INTEGER) is ISO 8601 text, and retention compares it as such.
POSTGRES_SCHEMA = _SCHEMA.format(id="BIGSERIAL PRIMARY KEY", time="TEXT") + (
    "CREATE INDEX IF NOT EXISTS requests_request_time ON Requests (request_time)\n"
)

# Two API servers starting at once would both create the table; the loser's CREATE
# fails on the catalog's unique index. A transaction-wide advisory lock orders them.
_SCHEMA_LOCK = 0x6B69_6973_7276  # "kiisrv"


class RequestsStore(Protocol):
    """The Requests table, wherever it is. SQL given to ``query`` uses ``?`` placeholders."""

    where: str

    def record(self, rows: Sequence[RequestRecord]) -> None: ...

    def pseudonymise(self, hide: Callable[[str], str], is_raw: Callable[[str], bool]) -> int: ...

    def prune(self, before: datetime) -> int: ...

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...

    def close(self) -> None: ...


def open_store(url: str | None, stats: sqlite3.Connection) -> RequestsStore:
    """PostgreSQL when ``url`` (KIISRV_STATS_URL) is set, else the server's ``stats.db``."""
    return PostgresRequests(url) if url else SqliteRequests(stats)


def _row(r: RequestRecord) -> tuple[Any, ...]:
    return (
        r.ip_addr,
        r.os,
        int(r.web),
        r.hash,
        r.board,
        r.variant,
        r.layers,
        r.container,
        int(r.success),
        r.request_time.isoformat(),
        r.build_duration,
    )


class SqliteRequests:
    """Requests in ``stats.db``, on the connection Builds uses (Storage owns and locks it)."""

    where = "SQLite (stats.db)"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def record(self, rows: Sequence[RequestRecord]) -> None:
        """Many rows in one transaction: one commit for a whole batch of requests."""
        self._conn.execute("BEGIN")
        try:
            self._conn.executemany(
                f"INSERT INTO Requests ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_row(r) for r in rows],
            )
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def pseudonymise(self, hide: Callable[[str], str], is_raw: Callable[[str], bool]) -> int:
        raw = [
            a for (a,) in self._conn.execute("SELECT DISTINCT ip_addr FROM Requests") if is_raw(a)
        ]
        with self._conn:
            self._conn.executemany(
                "UPDATE Requests SET ip_addr = ? WHERE ip_addr = ?", [(hide(a), a) for a in raw]
            )
        return len(raw)

    def prune(self, before: datetime) -> int:
        with self._conn:
            cur = self._conn.execute(
                "DELETE FROM Requests WHERE request_time < ?", (before.isoformat(),)
            )
            return cur.rowcount

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, args).fetchall()

    def close(self) -> None:
        """Nothing of its own: Storage closes the shared connection."""


class PostgresRequests:
    """Requests in PostgreSQL, shared by every API server that names it.

    One connection, opened on first use and again after it broke (a restarted database
    is used again without restarting kiisrv). Connecting gives up after
    ``connect_timeout`` seconds so a request waits at most that long for its 503.
    """

    def __init__(self, url: str, connect_timeout: int = 5) -> None:
        import psycopg  # here, not at import: only this store needs psycopg and libpq

        self._psycopg = psycopg
        self._url = url
        self._timeout = connect_timeout
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self.where = "PostgreSQL"

    @contextmanager
    def _use(self) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        """The connection; a failure drops a broken one and becomes StorageError."""
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            yield self._conn
        except self._psycopg.Error as exc:
            if self._conn is not None and (self._conn.broken or self._conn.closed):
                self._conn.close()
                self._conn = None
            raise StorageError(f"the server cannot use its statistics database: {exc}") from exc

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        conn = self._psycopg.connect(self._url, autocommit=True, connect_timeout=self._timeout)
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for statement in POSTGRES_SCHEMA.split(";"):
                    conn.execute(statement)
        except BaseException:
            conn.close()
            raise
        return conn

    def record(self, rows: Sequence[RequestRecord]) -> None:
        with self._use() as conn, conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO Requests ({_COLUMNS})"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [_row(r) for r in rows],
            )

    def pseudonymise(self, hide: Callable[[str], str], is_raw: Callable[[str], bool]) -> int:
        with self._use() as conn, conn.transaction():
            rows = conn.execute("SELECT DISTINCT ip_addr FROM Requests").fetchall()
            raw = [a for (a,) in rows if is_raw(a)]
            with conn.cursor() as cur:
                cur.executemany(
                    "UPDATE Requests SET ip_addr = %s WHERE ip_addr = %s",
                    [(hide(a), a) for a in raw],
                )
        return len(raw)

    def prune(self, before: datetime) -> int:
        with self._use() as conn:
            cur = conn.execute(
                "DELETE FROM Requests WHERE request_time < %s", (before.isoformat(),)
            )
            return cur.rowcount

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """``sql`` in the shared dialect, ``?`` placeholders (a literal ``%`` is escaped)."""
        with self._use() as conn:
            return conn.execute(sql.replace("%", "%%").replace("?", "%s"), args).fetchall()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

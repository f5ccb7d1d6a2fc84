"""Where the Requests rows (the statistics) live: the one seam between SQLite and PostgreSQL.

With one API server its own SQLite ``stats.db`` holds them, as it always did. With
several, each would count only the requests it answered, so ``KIISRV_STATS_URL``
names a PostgreSQL database they all write to and ``/stats`` reads from
(docs/distributed.md). Only Requests moves: Builds is one server's job state and
Versions its configuration, both stay in SQLite.

A store is one connection: ``write`` runs a function in one transaction, ``read`` in
one snapshot; the operations (``record``, ``prune``, ``pseudonymise``) are written once,
against ``rollups.Db``, in the dialect the two share (``?`` placeholders, turned into
``%s`` for psycopg; ``web`` and ``success`` INTEGER 0/1, ``request_time`` the ISO 8601
text SQLite holds, which orders like time). Each keeps the rollups (rollups.py) in the
transaction that changes the rows, so the pages never count the rows themselves.

Storage gives the writes one store and the page reads another, each on a thread of its
own, so neither waits for the other nor for a build. A PostgreSQL call is bounded: its
``statement_timeout``, TCP keepalives for a dead peer, and a deadline of kiisrv's own
for a server that hangs with its socket open (a stopped process: nothing times out on
its side), after which the socket is shut and the database left alone for a moment.
Every failure is a ``StorageError`` (503 + Retry-After).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from kiisrv.store import rollups
from kiisrv.store.db import PostgresDatabase, SqliteDatabase

T = TypeVar("T")


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
    # A cache hit is counted, not listed: the UTC day it was answered on, and how many
    # such requests the row stands for (record adds rows of one key up).
    hit_day: str | None = None
    n: int = 1


_COLUMNS = (
    "ip_addr, os, web, hash, board, variant, layers, container, success, request_time,"
    " build_duration, n, hit_day"
)
_HIT_KEY = "hit_day, ip_addr, hash, os, web, container, success"

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
    build_duration INTEGER,
    n              BIGINT NOT NULL DEFAULT 1,
    hit_day        TEXT
);
CREATE INDEX IF NOT EXISTS requests_request_time ON Requests (request_time);
CREATE TABLE IF NOT EXISTS RequestsJournal (
    journal  TEXT PRIMARY KEY,
    seq      BIGINT NOT NULL
);
"""
# Cache hits are counted, not listed (a flood of free requests wrote a row each, kept
# for a year): one row per day, client, build and what else a row says, whose ``n``
# grows. ``hit_day`` is set on those rows only; older rows (NULL) stay out of the index.
_HITS_INDEX = (
    "CREATE UNIQUE INDEX IF NOT EXISTS requests_hits ON Requests"
    " (hit_day, ip_addr, hash, os, web, container, success) WHERE hit_day IS NOT NULL"
)
SQLITE_SCHEMA = _SCHEMA.format(id="INTEGER PRIMARY KEY AUTOINCREMENT", time="INTEGER")
# The reference's columns; request_time is TEXT because what SQLite has always held
# there (its column says INTEGER) is ISO 8601 text, and retention compares it as such.
POSTGRES_SCHEMA = (
    _SCHEMA.format(id="BIGSERIAL PRIMARY KEY", time="TEXT")
    # A database of an older server: the columns of counted rows, then their index.
    + "ALTER TABLE Requests ADD COLUMN IF NOT EXISTS n BIGINT NOT NULL DEFAULT 1;\n"
    + "ALTER TABLE Requests ADD COLUMN IF NOT EXISTS hit_day TEXT;\n"
    + _HITS_INDEX
    + ";\n"
)


def sqlite_migrate(conn: sqlite3.Connection) -> None:
    """A stats.db of an older server gets the columns of counted rows, then their index."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(Requests)")}
    if "n" not in have:
        conn.execute("ALTER TABLE Requests ADD COLUMN n BIGINT NOT NULL DEFAULT 1")
    if "hit_day" not in have:
        conn.execute("ALTER TABLE Requests ADD COLUMN hit_day TEXT")
    conn.execute(_HITS_INDEX)


# Rows per transaction: a write stays well inside the statement timeout, and the build
# path's SQLite writes slip in between.
WRITE_AT_MOST = 5000
PRUNE_AT_MOST = 5000


class RequestsStore(Protocol):
    """The Requests table (and its rollups), wherever it is: one connection."""

    where: str

    def write(self, fn: Callable[[rollups.Db], T]) -> T: ...

    def read(self, fn: Callable[[rollups.Db], T]) -> T: ...

    def close(self) -> None: ...


def open_store(
    url: str | None, stats_db: Path, *, timeout: float = 5.0, reader: bool = False
) -> RequestsStore:
    """PostgreSQL when ``url`` (KIISRV_STATS_URL) is set, else the server's ``stats.db``;
    ``reader``: a connection for the pages, which never creates or migrates anything."""
    schema = rollups.REQUESTS_ROLLUP_SCHEMA
    if url:
        if reader:
            return PostgresDatabase(url, timeout)
        return PostgresDatabase(url, timeout, schema=POSTGRES_SCHEMA + schema, then=rollups.ensure)
    if reader:
        return SqliteDatabase(stats_db, reader=True, where="SQLite (stats.db)")
    return SqliteDatabase(
        stats_db,
        schema=SQLITE_SCHEMA + schema,
        migrate=sqlite_migrate,
        then=rollups.ensure,
        where="SQLite (stats.db)",
    )


# -- the operations, once for both databases ----------------------------------------------


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
        r.n,
        r.hit_day,
    )


def _rollup_row(r: RequestRecord) -> tuple[Any, ...]:
    return (
        *(r.os, int(r.web), r.hash, r.board, r.variant, r.layers),
        *(r.container, r.build_duration, r.ip_addr, r.n),
    )


def counted(rows: Sequence[RequestRecord]) -> list[RequestRecord]:
    """Rows of the same cache-hit key as one, their counts added (the first one's time)."""
    merged: dict[tuple[Any, ...], RequestRecord] = {}
    out: list[RequestRecord] = []
    for r in rows:
        if r.hit_day is None:
            out.append(r)
            continue
        key = (r.hit_day, r.ip_addr, r.hash, r.os, r.web, r.container, r.success)
        seen = merged.get(key)
        if seen is None:
            merged[key] = r
            out.append(r)
        else:
            merged[key] = replace(seen, n=seen.n + r.n)
            out[out.index(seen)] = merged[key]
    return out


def record(
    store: RequestsStore,
    rows: Sequence[RequestRecord],
    journal: tuple[str, Sequence[int]] | None = None,
) -> None:
    """The rows and their rollups, in transactions of at most WRITE_AT_MOST rows (all
    or, on a failure, the ones before the failing transaction: see ``stats.flush``).

    ``journal``: the writing server's journal id and each row's sequence number in it
    (journal.py). Each transaction records the last number it wrote and skips the
    rows already written, so a journal replayed after a kill writes every row once."""
    for start in range(0, len(rows), WRITE_AT_MOST):
        chunk = rows[start : start + WRITE_AT_MOST]
        seqs = journal[1][start : start + WRITE_AT_MOST] if journal else []

        def write(
            db: rollups.Db, chunk: Sequence[RequestRecord] = chunk, seqs: Sequence[int] = seqs
        ) -> None:
            if journal:
                name = journal[0]
                found = db.rows("SELECT seq FROM RequestsJournal WHERE journal = ?", (name,))
                done = int(found[0][0]) if found else 0
                chunk = [r for r, n in zip(chunk, seqs, strict=True) if n > done]
                db.run(
                    "INSERT INTO RequestsJournal (journal, seq) VALUES (?, ?) ON CONFLICT"
                    " (journal) DO UPDATE SET seq = excluded.seq WHERE excluded.seq >"
                    " RequestsJournal.seq",
                    (name, max(seqs)),
                )
            if not chunk:
                return
            chunk = counted(chunk)
            marks = ", ".join("?" * len(_COLUMNS.split(",")))
            builds = [_row(r) for r in chunk if r.hit_day is None]
            hits = [_row(r) for r in chunk if r.hit_day is not None]
            if builds:
                db.many(f"INSERT INTO Requests ({_COLUMNS}) VALUES ({marks})", builds)
            if hits:
                db.many(
                    f"INSERT INTO Requests ({_COLUMNS}) VALUES ({marks})"
                    f" ON CONFLICT ({_HIT_KEY}) WHERE hit_day IS NOT NULL"
                    " DO UPDATE SET n = Requests.n + excluded.n",
                    hits,
                )
            rollups.apply(db, rollups.delta(_rollup_row(r) for r in chunk))

        store.write(write)


def prune(store: RequestsStore, before: datetime) -> int:
    """Deletes the rows of requests made before ``before``, oldest first, in short
    transactions; each subtracts exactly the rows it deleted from the rollups."""

    def chunk(db: rollups.Db) -> int:
        gone = db.rows(
            "DELETE FROM Requests WHERE id IN (SELECT id FROM Requests"
            " WHERE request_time < ? ORDER BY request_time LIMIT ?)"
            f" RETURNING {rollups.ROW}",
            (before.isoformat(), PRUNE_AT_MOST),
        )
        rollups.apply(db, rollups.delta(gone, -1))
        return len(gone)

    total = 0
    while (n := store.write(chunk)) > 0:
        total += n
        if n < PRUNE_AT_MOST:
            break
    return total


def pseudonymise(
    store: RequestsStore, hide: Callable[[str], str], is_raw: Callable[[str], bool]
) -> int:
    """Replaces raw client addresses (databases of older servers) by ``hide(address)``;
    the users rollup merges them (two addresses may hide as one)."""

    def write(db: rollups.Db) -> int:
        users = db.rows("SELECT ip_addr, n FROM StatsUsers")
        raw = [(str(a), int(n)) for a, n in users if is_raw(str(a))]
        db.many("UPDATE Requests SET ip_addr = ? WHERE ip_addr = ?", [(hide(a), a) for a, _ in raw])
        moved = rollups.Delta()
        for a, n in raw:
            moved.users[a] -= n
            moved.users[hide(a)] += n
        rollups.apply(db, moved)
        return len(raw)

    return store.write(write)


def query(store: RequestsStore, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """A read in the shared dialect, ``?`` placeholders."""
    return store.read(lambda db: db.rows(sql, args))

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

import contextlib
import math
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from kiisrv.errors import StorageError
from kiisrv.store import rollups

if TYPE_CHECKING:  # imported when used: servers without KIISRV_STATS_URL never load it
    import psycopg

    from kiisrv.store.storage import RequestRecord

T = TypeVar("T")

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


# Two API servers starting at once would both create the table; the loser's CREATE
# fails on the catalog's unique index. A transaction-wide advisory lock orders them.
_SCHEMA_LOCK = 0x6B69_6973_7276  # "kiisrv"
# Rows per transaction: a write stays well inside the statement timeout, and the build
# path's SQLite writes slip in between.
WRITE_AT_MOST = 5000
PRUNE_AT_MOST = 5000
# The most a SQLite write-ahead log keeps on disk once checkpointed.
WAL_BYTES = 512 * 1024
# How a dead connection is noticed when nothing is sent (seconds): 10 + 3 * 5.
_KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


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
    if url:
        return PostgresRequests(url, timeout, schema=not reader)
    return SqliteRequests(stats_db, reader=reader)


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
    (stats.py). Each transaction records the last number it wrote and skips the
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


# -- SQLite ------------------------------------------------------------------------------


class _SqliteDb:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, args).fetchall()

    def run(self, sql: str, args: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, args).rowcount

    def many(self, sql: str, args: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(sql, args)


@contextmanager
def sqlite_errors() -> Iterator[None]:
    """SQLite failures (a full disk, a locked database) as StorageError."""
    try:
        yield
    except sqlite3.Error as exc:
        raise StorageError(f"the server cannot use its database: {exc}") from exc


def sqlite_connect(path: Path, script: str = "", *, reader: bool = False) -> sqlite3.Connection:
    """A connection in WAL mode (readers never wait for the writer, nor it for them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    # The WAL is checkpointed past 128 pages and then cut back to 512 KB: at SQLite's
    # defaults (1000 pages, never cut) a flood of requests left a few MB on disk.
    conn.execute("PRAGMA wal_autocheckpoint=128")
    conn.execute(f"PRAGMA journal_size_limit={WAL_BYTES}")
    if reader:
        conn.execute("PRAGMA query_only=ON")
    if script:
        conn.executescript(script)
    return conn


class SqliteRequests:
    """Requests in ``stats.db``, on a connection of its own (one caller at a time)."""

    where = "SQLite (stats.db)"

    def __init__(self, path: Path, *, reader: bool = False) -> None:
        self._lock = threading.Lock()
        with sqlite_errors():
            self._conn = sqlite_connect(path, reader=reader)
            if not reader:
                self._conn.executescript(SQLITE_SCHEMA + rollups.REQUESTS_ROLLUP_SCHEMA)
                sqlite_migrate(self._conn)
                self.write(rollups.ensure)

    def _transaction(self, begin: str, fn: Callable[[rollups.Db], T]) -> T:
        with self._lock, sqlite_errors():
            self._conn.execute(begin)
            try:
                result = fn(_SqliteDb(self._conn))
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return result

    def write(self, fn: Callable[[rollups.Db], T]) -> T:
        return self._transaction("BEGIN IMMEDIATE", fn)

    def read(self, fn: Callable[[rollups.Db], T]) -> T:
        return self._transaction("BEGIN", fn)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


# -- PostgreSQL --------------------------------------------------------------------------


def _pg(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


class _PgDb:
    def __init__(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        self._conn = conn

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(_pg(sql), args).fetchall()

    def run(self, sql: str, args: Sequence[Any] = ()) -> int:
        return self._conn.execute(_pg(sql), args).rowcount

    def many(self, sql: str, args: Sequence[Sequence[Any]]) -> None:
        with self._conn.cursor() as cur:
            cur.executemany(_pg(sql), args)


class _Cooldown:
    """After a call that hung, the database is not asked again for ``seconds``: each
    caller would wait out the whole deadline otherwise (``/stats`` flushes, then reads).
    Shared by the writer's and the pages' connections (one database)."""

    _shared: ClassVar[dict[str, _Cooldown]] = {}
    _guard = threading.Lock()

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._until = 0.0

    @classmethod
    def of(cls, url: str, seconds: float) -> _Cooldown:
        with cls._guard:
            return cls._shared.setdefault(url, cls(seconds))

    def check(self) -> None:
        left = self._until - time.monotonic()
        if left > 0:
            raise StorageError(
                "the server cannot use its database (PostgreSQL): it did not answer in time",
                retry_after=max(1, math.ceil(left)),
            )

    def trip(self) -> None:
        self._until = time.monotonic() + self.seconds

    def clear(self) -> None:
        self._until = 0.0


def _shut(fd: int, fired: list[bool]) -> None:
    """The deadline passed: shut the socket, so the blocked call returns with an error
    (the database may be stopped, its kernel still acknowledging: nothing else ends it)."""
    fired.append(True)
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


class PostgresRequests:
    """Requests in PostgreSQL, shared by every API server that names it.

    One connection, opened on first use and again after it broke (a restarted database
    is used again without restarting kiisrv). Connecting gives up after
    ``connect_timeout``, a statement after ``statement_timeout`` (server side), and a
    whole call after ``timeout`` and a second (client side: a hung server).
    """

    def __init__(
        self,
        url: str,
        timeout: float = 5.0,
        *,
        schema: bool = True,
        what: str = "statistics database",
    ) -> None:
        import psycopg  # here, not at import: only this store needs psycopg and libpq

        self._psycopg = psycopg
        self._url = url
        self._timeout = timeout
        self._schema = schema
        self._lock = threading.Lock()
        self._cooldown = _Cooldown.of(url, timeout)
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._what = what  # in the errors' messages
        self.where = "PostgreSQL"

    @contextmanager
    def _use(self) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        """The connection under a deadline; a failure drops a broken connection and
        becomes StorageError; a hang also starts the cool-down."""
        self._cooldown.check()
        fired: list[bool] = []
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            deadline = threading.Timer(self._timeout + 1, _shut, (self._conn.fileno(), fired))
            deadline.daemon = True
            deadline.start()
            try:
                yield self._conn
            finally:
                deadline.cancel()
        except self._psycopg.Error as exc:
            hung = bool(fired) or "timeout expired" in str(exc)
            if self._conn is not None and (hung or self._conn.broken or self._conn.closed):
                self._conn.close()
                self._conn = None
            if hung:
                self._cooldown.trip()
                raise StorageError(
                    f"the server cannot use its {self._what}: it did not answer "
                    f"within {self._timeout:g} s",
                    retry_after=max(1, math.ceil(self._timeout)),
                ) from exc
            raise StorageError(f"the server cannot use its {self._what}: {exc}") from exc

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        conn = self._psycopg.connect(
            self._psycopg.conninfo.make_conninfo(
                self._url,
                connect_timeout=max(2, math.ceil(self._timeout)),  # libpq's least is 2
                **_KEEPALIVES,
            ),
            autocommit=True,
        )
        try:
            conn.execute("SELECT set_config('statement_timeout', %s, false)", (self._ms(),))
            if self._schema:  # the writer's: create, and build the rollups once
                with conn.transaction():
                    conn.execute("SET LOCAL statement_timeout = 0")  # a first build is long
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                    for statement in (POSTGRES_SCHEMA + rollups.REQUESTS_ROLLUP_SCHEMA).split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    rollups.ensure(_PgDb(conn))
        except BaseException:
            conn.close()
            raise
        self._cooldown.clear()
        return conn

    def _ms(self) -> str:
        return str(max(1, int(self._timeout * 1000)))

    def parameters(self) -> dict[str, str]:
        """The libpq parameters of the connection (opened if need be), for diagnostics."""
        with self._lock, self._use() as conn:
            return conn.info.get_parameters()

    def write(self, fn: Callable[[rollups.Db], T]) -> T:
        with self._lock, self._use() as conn, conn.transaction():
            return fn(_PgDb(conn))

    def read(self, fn: Callable[[rollups.Db], T]) -> T:
        with self._lock, self._use() as conn, conn.transaction():
            return fn(_PgDb(conn))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

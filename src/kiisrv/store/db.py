"""Connections to the two databases, each bounded and failing as StorageError.

SQLite: a connection in WAL mode per lane (storage.py), so readers never wait for the
writer. PostgreSQL: one connection, opened on first use and again after it broke, with
its ``statement_timeout``, TCP keepalives for a dead peer, and a deadline of kiisrv's
own for a server that hangs with its socket open (a stopped process: nothing times out
on its side), after which the socket is shut and the database left alone for a moment
(a cool-down, shared by every connection to the same URL). Both run a function in one
transaction (``write``) or one snapshot (``read``) against ``rollups.Db``, the dialect
they share (``?`` placeholders, turned into ``%s`` for psycopg).
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
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from kiisrv.errors import StorageError
from kiisrv.store import rollups

if TYPE_CHECKING:  # imported when used: servers without a PostgreSQL URL never load it
    import psycopg

T = TypeVar("T")

# Two API servers starting at once would both create the table; the loser's CREATE
# fails on the catalog's unique index. A transaction-wide advisory lock orders them.
_SCHEMA_LOCK = 0x6B69_6973_7276  # "kiisrv"

# How a dead connection is noticed when nothing is sent (seconds): 10 + 3 * 5.
_KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}

# The most a SQLite write-ahead log keeps on disk once checkpointed.
WAL_BYTES = 512 * 1024

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


class SqliteDatabase:
    """One SQLite database on a connection of its own (one caller at a time): ``schema``
    is run and ``migrate`` called on opening, then ``then`` in a first write."""

    def __init__(
        self,
        path: Path,
        *,
        reader: bool = False,
        schema: str = "",
        migrate: Callable[[sqlite3.Connection], None] | None = None,
        then: Callable[[rollups.Db], object] | None = None,
        where: str = "SQLite",
    ) -> None:
        self.where = where
        self._lock = threading.Lock()
        with sqlite_errors():
            self._conn = sqlite_connect(path, reader=reader)
            if schema:
                self._conn.executescript(schema)
            if migrate is not None:
                migrate(self._conn)
            if then is not None:
                self.write(then)

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


class PostgresDatabase:
    """One PostgreSQL database, shared by every API server that names it.

    One connection, opened on first use and again after it broke (a restarted database
    is used again without restarting kiisrv). Connecting gives up after
    ``connect_timeout``, a statement after ``statement_timeout`` (server side), and a
    whole call after ``timeout`` and a second (client side: a hung server). ``schema``
    is created on connecting (under an advisory lock: two servers starting at once),
    then ``then`` is run in that transaction.
    """

    def __init__(
        self,
        url: str,
        timeout: float = 5.0,
        *,
        schema: str = "",
        then: Callable[[rollups.Db], object] | None = None,
        what: str = "statistics database",
    ) -> None:
        import psycopg  # here, not at import: only this store needs psycopg and libpq

        self._psycopg = psycopg
        self._url = url
        self._timeout = timeout
        self._schema = schema
        self._then = then
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
                    for statement in self._schema.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    if self._then is not None:
                        self._then(_PgDb(conn))
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

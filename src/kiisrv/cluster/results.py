"""Finished builds where every API server and worker of a cluster finds them (#15.1).

A single server keeps its zips in its builds folder (store/results.py FolderResults):
that folder is its store. A cluster cannot: the worker that built a zip, the API
server that waited for it and the one a load balancer sends the download to are three
machines. So a worker
puts each finished build in the ``ResultStore`` that ``KIISRV_STORE_URL`` names, and
any API server reads it there for ``/tmp/<zip>``, ``/builds/<hash>`` and the build's
log, keeping a copy in its own folder so that the next download is a file.

The store is a table in PostgreSQL, which a cluster runs already for its statistics:
S3-compatible storage is the norm elsewhere (asu, QMK), but none can be run and tested
here, and PostgreSQL gives what is needed (atomic replace, a size to prune by, one
backup). Zips no longer sit in Redis, whose memory was throughput x TTL x zip size
and which lost them on a restart; Redis keeps only a short *notice* per result (its
signature), which says a build that failed is still a result (``KIISRV_FAILED_RESULT_TTL``)
and wakes the API servers waiting for it.

A row holds what the worker signed (wire.py): the job record, the zip and the
signature, checked on every read; a row that fails is deleted and never served, so
write access to the database is not a way to replace firmware either. Retention is
the cluster's: every API server prunes rows unused for ``KIISRV_RETENTION_DAYS`` and,
least recently used first, past ``KIISRV_RETENTION_BYTES``.

Every call is blocking and bounded (store/db.py PostgresDatabase: statement
timeout, keepalives, a deadline), run on this store's own thread; a failure is a
StorageError (503 + Retry-After) and never a result.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

from arq.connections import ArqRedis
from redis.exceptions import ResponseError

from kiisrv.cluster.keys import result_key, wire
from kiisrv.cluster.wire import Forged, Wire
from kiisrv.errors import NotFound
from kiisrv.jobs import Job, JobState
from kiisrv.settings import Settings
from kiisrv.store import rollups
from kiisrv.store.artifacts import hash_of
from kiisrv.store.db import PostgresDatabase
from kiisrv.store.results import FolderResults
from kiisrv.store.storage import Storage

log = logging.getLogger("kiisrv.results")

P = ParamSpec("P")
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS Results (
    hash     TEXT PRIMARY KEY,
    zip_name TEXT NOT NULL,
    job      TEXT NOT NULL,
    sig      TEXT NOT NULL,
    digest   BYTEA NOT NULL,
    zip      BYTEA NOT NULL,
    size     BIGINT NOT NULL,
    used_at  DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS results_used_at ON Results (used_at);
"""
_SCHEMA_LOCK = 0x6B69_6973_7273  # "kiisrs": two servers creating the table at once
# A read moves a row's used_at (what retention goes by) at most this often.
_TOUCH_EVERY = 60.0


@dataclass(frozen=True)
class Stored:
    """A result read back and checked: its job, its zip, the signature that bound them."""

    job: Job
    data: bytes
    sig: str


class ResultStore:
    """The cluster's results, in the PostgreSQL of ``KIISRV_STORE_URL``."""

    def __init__(self, url: str, wire: Wire, timeout: float = 5.0) -> None:
        self._db = PostgresDatabase(url, timeout, what="result store")
        self._wire = wire
        self._ready = False
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="kiisrv-results")

    # -- async, for the event loop: each call on the store's thread ----------------------

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def put(self, job: Job, data: bytes) -> str:
        """Store a finished build (replacing an older result of its hash); its signature."""
        return await self._call(self.put_now, job, data)

    async def get(self, hash_: str) -> Stored | None:
        """The build's result if it is stored and its signature holds."""
        return await self._call(self.get_now, hash_)

    async def job(self, hash_: str) -> Job | None:
        """The build's job (state, error, times) without fetching its zip."""
        return await self._call(self.job_now, hash_)

    async def prune(self, max_age: float, max_bytes: int, keep: Collection[str]) -> int:
        return await self._call(self.prune_now, max_age, max_bytes, keep)

    async def close(self) -> None:
        await self._call(self._db.close)
        self._pool.shutdown(wait=False)

    # -- blocking ------------------------------------------------------------------------

    def _write(self, fn: Callable[[rollups.Db], T]) -> T:
        if not self._ready:
            self._db.write(_create)
            self._ready = True
        return self._db.write(fn)

    def put_now(self, job: Job, data: bytes) -> str:
        sealed = self._wire.seal_result(job, data)
        sig = str(sealed["sig"])
        row = (
            job.hash,
            job.zip_name,
            str(sealed["job"]),
            sig,
            hashlib.sha256(data).digest(),
            data,
            len(data),
            time.time(),
        )

        def write(db: rollups.Db) -> None:
            db.run(
                "INSERT INTO Results (hash, zip_name, job, sig, digest, zip, size, used_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (hash) DO UPDATE SET"
                " zip_name = EXCLUDED.zip_name, job = EXCLUDED.job, sig = EXCLUDED.sig,"
                " digest = EXCLUDED.digest, zip = EXCLUDED.zip, size = EXCLUDED.size,"
                " used_at = EXCLUDED.used_at",
                row,
            )

        self._write(write)
        return sig

    def get_now(self, hash_: str) -> Stored | None:
        rows = self._write(
            lambda db: db.rows(
                "SELECT job, sig, zip, used_at FROM Results WHERE hash = ?", (hash_,)
            )
        )
        if not rows:
            return None
        record, sig, data, used_at = rows[0]
        data = bytes(data)
        try:
            job, _ = self._wire.open_result(
                hash_, {b"job": record.encode(), b"zip": data, b"sig": sig.encode()}
            )
        except Forged as exc:
            self._forged(hash_, exc)
            return None
        if used_at < time.time() - _TOUCH_EVERY:
            self._write(
                lambda db: db.run(
                    "UPDATE Results SET used_at = ? WHERE hash = ?", (time.time(), hash_)
                )
            )
        return Stored(job, data, sig)

    def job_now(self, hash_: str) -> Job | None:
        rows = self._write(
            lambda db: db.rows("SELECT job, sig, digest FROM Results WHERE hash = ?", (hash_,))
        )
        if not rows:
            return None
        record, sig, digest = rows[0]
        try:
            return self._wire.open_result_digest(hash_, record.encode(), sig, bytes(digest))
        except Forged as exc:
            self._forged(hash_, exc)
            return None

    def _forged(self, hash_: str, exc: Forged) -> None:
        log.warning("deleting the result stored for %s: %s", hash_, exc)
        self._write(lambda db: db.run("DELETE FROM Results WHERE hash = ?", (hash_,)))

    def prune_now(self, max_age: float, max_bytes: int, keep: Collection[str]) -> int:
        """Rows unused for ``max_age`` seconds, then the least recently used beyond
        ``max_bytes`` in all; never those in ``keep`` (this server's builds in flight and
        zips just answered)."""
        cutoff = time.time() - max_age
        spare = sorted(keep)

        def write(db: rollups.Db) -> int:
            marks = ",".join("?" * len(spare)) or "NULL"
            gone = db.run(
                f"DELETE FROM Results WHERE used_at < ? AND hash NOT IN ({marks})",
                (cutoff, *spare),
            )
            if max_bytes > 0:
                gone += db.run(
                    "DELETE FROM Results WHERE hash IN (SELECT hash FROM (SELECT hash,"
                    " SUM(size) OVER (ORDER BY used_at DESC, hash) AS running FROM Results) r"
                    f" WHERE running > ?) AND hash NOT IN ({marks})",
                    (max_bytes, *spare),
                )
            return gone

        return self._write(write)


def _create(db: rollups.Db) -> None:
    db.run("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            db.run(statement)


def fresh(stored: Stored | None, notice: bytes | None) -> Stored | None:
    """Whether a stored result answers a request now: firmware always; a build that ran
    and failed only while the notice its worker left in Redis lasts (the layout may be
    fixed, or the failure was the machine's: it is built again after that)."""
    if stored is None:
        return None
    if stored.job.state is JobState.SUCCEEDED:
        return stored
    if notice is not None and hmac.compare_digest(notice, stored.sig.encode()):
        return stored
    return None


def result_store(settings: Settings) -> ResultStore:
    """The cluster's result store; settings.py makes sure it is named."""
    if settings.results_url is None:
        raise ValueError("KIISRV_STORE_URL is needed with KIISRV_QUEUE_URL")
    return ResultStore(settings.results_url, wire(settings), settings.stats_timeout)


async def notice(redis: ArqRedis, hash_: str) -> bytes | None:
    """The signature a worker left in Redis with a finished build, if it is still there
    (anything else under the key was planted: deleted)."""
    key = result_key(hash_)
    try:
        return await redis.get(key)  # type: ignore[no-any-return]
    except ResponseError:  # not a string: not ours
        log.warning("deleting the result notice for %s: not a notice", hash_)
        await redis.delete(key)
        return None


async def stored_result(
    redis: ArqRedis, store: ResultStore, hash_: str, *, any_firmware: bool
) -> Stored | None:
    """A build's result that answers now (results.fresh), signed by a worker of this
    cluster: a row that fails its signature is deleted by the store, never served.
    ``any_firmware``: also a firmware whose notice is gone (the store keeps results
    longer than Redis); otherwise only a build whose notice is there (the wait's test)."""
    sign = await notice(redis, hash_)
    if sign is None and not any_firmware:
        return None
    return fresh(await store.get(hash_), sign)


class ClusterResults(FolderResults):
    """An API server's results: its own folder first (a cache hit stays a file), then
    the cluster's store, copied into the folder when read (a download the load balancer
    sent here, the log of a build another server waited for)."""

    def __init__(self, settings: Settings, storage: Storage, store: ResultStore) -> None:
        super().__init__(settings, storage)
        self.store = store

    async def path(self, name: str) -> Path:
        try:
            return await super().path(name)
        except NotFound:
            hash_ = hash_of(name)
            found = await self.store.get(hash_) if hash_ else None
            if found is None or found.job.zip_name != name:
                raise
        await self.keep(found.job, found.data, row_if_none=True)
        return await super().path(name)

    async def job(self, hash_: str) -> Job | None:
        return await super().job(hash_) or await self.store.job(hash_)

    async def prune_shared(self, busy: Collection[str]) -> int:
        """The cluster's retention, run by every API server."""
        s = self.settings
        return await self.store.prune(s.retention_days * 86400, s.retention_bytes, busy)

    async def close(self) -> None:
        await self.store.close()

"""The cluster's result store (results.py) on a real PostgreSQL: what is served, what is
refused, what retention removes. The cluster's use of it is in tests/docker/."""

from __future__ import annotations

import logging
import time

import psycopg
import pytest

from kiisrv.cluster.results import ResultStore, Stored, fresh
from kiisrv.cluster.wire import Wire
from kiisrv.errors import StorageError
from kiisrv.jobs import Job, JobState
from kiisrv.store.artifacts import hash_of
from tests.helpers import QUEUE_KEY, free_port

pytestmark = pytest.mark.anyio


def _job(n: int, state: JobState = JobState.SUCCEEDED) -> Job:
    hash_ = f"{n:032x}"
    job = Job(hash_, f"KType-Standard-{hash_}", "latest", "controller-057")
    job.state = state
    return job


@pytest.fixture
async def store(stats_url: str) -> ResultStore:
    s = ResultStore(stats_url, Wire(QUEUE_KEY))
    yield s  # type: ignore[misc]
    await s.close()


def _sql(url: str, sql: str, *args: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, args)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


async def test_a_result_is_stored_and_read_back_as_signed(store: ResultStore) -> None:
    job = _job(1)
    sig = await store.put(job, b"PK firmware")
    found = await store.get(job.hash)
    assert found is not None
    assert (found.job.hash, found.job.state, found.data, found.sig) == (
        job.hash,
        JobState.SUCCEEDED,
        b"PK firmware",
        sig,
    )
    state = await store.job(job.hash)
    assert state is not None and state.zip_name == job.zip_name
    assert await store.get(_job(2).hash) is None


async def test_a_rebuild_replaces_the_earlier_result(store: ResultStore) -> None:
    failed = _job(3, JobState.FAILED)
    await store.put(failed, b"PK error")
    await store.put(_job(3), b"PK firmware")
    found = await store.get(failed.hash)
    assert found is not None and found.data == b"PK firmware"
    assert found.job.zip_name == _job(3).zip_name


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE Results SET zip = 'PK evil'::bytea",
        "UPDATE Results SET job = replace(job, 'succeeded', 'failed')",
        "UPDATE Results SET sig = repeat('0', 64)",
    ],
)
async def test_a_row_changed_in_the_database_is_deleted_not_served(
    store: ResultStore, stats_url: str, change: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Write access to the database is not a way to replace firmware either."""
    job = _job(4)
    await store.put(job, b"PK firmware")
    _sql(stats_url, change)
    with caplog.at_level(logging.WARNING, "kiisrv.results"):
        assert await store.get(job.hash) is None
    assert f"deleting the result stored for {job.hash}" in caplog.text
    assert _sql(stats_url, "SELECT COUNT(*) FROM Results") == [(0,)]


async def test_only_the_digest_is_checked_for_a_state(store: ResultStore, stats_url: str) -> None:
    """``/builds/<hash>`` reads the job against the zip's digest, not the zip."""
    job = _job(5)
    await store.put(job, b"PK firmware")
    _sql(stats_url, "UPDATE Results SET digest = sha256('PK evil'::bytea)")
    assert await store.job(job.hash) is None


def test_a_failure_answers_only_while_its_notice_lasts() -> None:
    ok, failed = _job(6), _job(7, JobState.FAILED)
    assert fresh(Stored(ok, b"", "a" * 64), None) is not None
    assert fresh(Stored(failed, b"", "b" * 64), None) is None
    assert fresh(Stored(failed, b"", "b" * 64), b"b" * 64) is not None
    assert fresh(Stored(failed, b"", "b" * 64), b"c" * 64) is None  # another build's notice
    assert fresh(None, b"b" * 64) is None


async def test_retention_removes_the_unused_then_the_least_recently_used(
    store: ResultStore, stats_url: str
) -> None:
    jobs = [_job(10 + i) for i in range(5)]
    for i, job in enumerate(jobs):
        await store.put(job, bytes(1000))
        _sql(
            stats_url, "UPDATE Results SET used_at = %s WHERE hash = %s", time.time() - i, job.hash
        )
    old = time.time() - 40 * 86400
    _sql(stats_url, "UPDATE Results SET used_at = %s WHERE hash = %s", old, jobs[4].hash)
    _sql(stats_url, "UPDATE Results SET used_at = %s WHERE hash = %s", old, jobs[3].hash)
    # jobs[3] is old but in use (a build this server answered a moment ago): kept.
    gone = await store.prune(30 * 86400, 10_000, keep={jobs[3].hash})
    assert gone == 1
    # 4 rows, 4000 bytes; 2500 keeps the two most recently used and the one in use.
    gone = await store.prune(30 * 86400, 2500, keep={jobs[3].hash})
    left = {r[0] for r in _sql(stats_url, "SELECT hash FROM Results")}
    assert gone == 1 and left == {jobs[0].hash, jobs[1].hash, jobs[3].hash}


async def test_a_store_that_cannot_be_reached_is_an_outage_not_a_missing_build() -> None:
    store = ResultStore(f"postgresql://kiisrv@127.0.0.1:{free_port()}/kiisrv", Wire(QUEUE_KEY), 2)
    with pytest.raises(StorageError) as refused:
        await store.get(_job(20).hash)
    assert refused.value.status == 503 and "result store" in refused.value.message
    await store.close()


def test_the_hash_of_a_zip_name() -> None:
    h = "0123456789abcdef" * 2
    assert hash_of(f"KType-Standard-{h}.zip") == h
    assert hash_of(f"KType-Standard-{h}_error.zip") == h
    assert hash_of("KType-Standard-xyz.zip") is None
    assert hash_of("..zip") is None

"""The database off the build path (issue #15, item 4), on real SQLite files and a real
PostgreSQL the tests start themselves.

Pages read rollups kept as rows are written (so they cost the same with millions of
rows), on their own thread and connection; PostgreSQL calls have a statement timeout
and a deadline of their own, so a hung database (a real postgres stopped with SIGSTOP)
neither stops a build nor holds ``/stats`` past the timeout; old Builds rows are pruned.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kiisrv import privacy
from kiisrv.core import Kiisrv
from kiisrv.jobs import Job, JobState
from kiisrv.settings import Settings
from kiisrv.store.db import PostgresDatabase
from kiisrv.store.requests import RequestRecord
from kiisrv.store.storage import Storage
from kiisrv.web import metrics, stats
from tests.helpers import app_client, postgres_paused, postgres_server

pytestmark = pytest.mark.anyio

STOCK = frozenset({"KType-Standard", "MDErgo1-Default"})


def row(i: int, when: datetime, ip: str | None = None) -> RequestRecord:
    """A varied row: some cache hits (same hash), boards in and out of the stock set."""
    boards = [("KType", "Standard"), ("KType", "Mine"), ("MDErgo1", "Default"), ("Infinity", "X")]
    board, variant = boards[i % 4]
    return RequestRecord(
        ip_addr=ip or f"user{i % 7}",
        os=("Linux", "Windows", "macOS")[i % 3],
        web=i % 2 == 0,
        hash=f"{i % 11:032x}",
        board=board,
        variant=variant,
        layers=1 + i % 3,
        container=("controller-057", "controller-050")[i % 2],
        success=i % 5 != 0,
        request_time=when,
        build_duration=None if i % 4 == 0 else 1000 + 10 * i,
    )


def brute_force(rows: list[tuple[Any, ...]], stock: frozenset[str]) -> dict[str, Any]:
    """What ``/stats`` counted before the rollups: every row, in Python."""
    total = len(rows)
    hashes = {r[3] for r in rows}
    users = {r[0] for r in rows}
    layers = sum(r[6] for r in rows)
    durations = sum(r[10] or 0 for r in rows)

    def ordered(c: Counter[str]) -> list[tuple[str, int]]:
        return sorted(c.items(), key=lambda kn: (-kn[1], kn[0]))

    keyboards: Counter[str] = Counter()
    for r in rows:
        name = f"{r[4]}-{r[5]}"
        keyboards[name if name in stock else f"{r[4]}-(other)"] += 1
    return {
        "builds": total,
        "unique": len(hashes),
        "cache_ratio": total / len(hashes) if hashes else 0.0,
        "avg_time_s": durations / len(hashes) / 1000 if hashes else 0.0,
        "users": len(users),
        "builds_per_user": total / len(users) if users else 0.0,
        "avg_layers": layers / total if total else 0.0,
        "os": ordered(Counter(r[1] for r in rows)),
        "platform": ordered(Counter("Web" if r[2] else "Desktop" for r in rows)),
        "keyboard": ordered(keyboards),
        "version": ordered(Counter(r[7] for r in rows)),
    }


ROW_SQL = (
    "SELECT ip_addr, os, web, hash, board, variant, layers, container, success,"
    " request_time, build_duration FROM Requests"
)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_the_figures_follow_every_write_prune_and_pseudonym(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """Rollups kept by the writes give what a count of every row gives, after a prune
    (rows subtracted) and the address migration (users merged) too."""
    url = request.getfixturevalue("stats_url") if backend == "postgres" else None
    storage = Storage(tmp_path / "stats.db", tmp_path / "config.db", url)
    try:
        now = datetime.now(UTC)
        storage.record_requests([row(i, now - timedelta(days=40)) for i in range(50)])
        storage.record_requests([row(i, now) for i in range(30, 200)])
        storage.record_requests([row(3, now, ip="203.0.113.9"), row(5, now, ip="user1")])
        assert stats.figures(storage, STOCK) == brute_force(storage.query_requests(ROW_SQL), STOCK)

        assert storage.prune_requests(now - timedelta(days=30)) == 50
        assert storage.pseudonymise(lambda a: "user1", privacy.is_address) == 1
        rows = storage.query_requests(ROW_SQL)
        assert len(rows) == 172 and all(r[0] != "203.0.113.9" for r in rows)
        assert stats.figures(storage, STOCK) == brute_force(rows, STOCK)
        boards = Counter(str(r[4]) for r in rows)
        assert storage.top_boards(10) == sorted(boards.items(), key=lambda kn: (-kn[1], kn[0]))

        storage.prune_requests(now + timedelta(days=1))
        assert stats.summary(storage, STOCK).startswith("Builds: 0 (0 unique)\nCache ratio: 0.0\n")
        assert "Keyboard Counts: {}" in stats.summary(storage, STOCK)
    finally:
        storage.close()


def old_database(path: Path, requests: int, builds: list[tuple[Any, ...]]) -> None:
    """A stats.db as the servers before the rollups left it."""
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE Requests (id INTEGER PRIMARY KEY AUTOINCREMENT, uid INTEGER,
                ip_addr TEXT NOT NULL, os TEXT NOT NULL, web INTEGER NOT NULL, serial INTEGER,
                hash TEXT NOT NULL, board TEXT NOT NULL, variant TEXT NOT NULL,
                layers INTEGER NOT NULL, container TEXT NOT NULL, success INTEGER NOT NULL,
                request_time INTEGER NOT NULL, build_duration INTEGER);
            CREATE TABLE Builds (hash TEXT PRIMARY KEY, stem TEXT NOT NULL,
                version TEXT NOT NULL, container TEXT NOT NULL, state TEXT NOT NULL,
                error TEXT, created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT,
                duration_ms INTEGER);
            """
        )
        now = datetime.now(UTC)
        db.executemany(
            "INSERT INTO Requests (ip_addr, os, web, hash, board, variant, layers, container,"
            " success, request_time, build_duration) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    *(r.ip_addr, r.os, int(r.web), r.hash, r.board, r.variant, r.layers),
                    *(r.container, int(r.success), r.request_time.isoformat(), r.build_duration),
                )
                for r in (row(i, now) for i in range(requests))
            ],
        )
        db.executemany("INSERT INTO Builds VALUES (?,?,?,?,?,?,?,?,?,?)", builds)


def build_row(i: int, day: str, state: str = "succeeded", ms: int | None = 2000) -> tuple[Any, ...]:
    when = f"{day}T12:00:{i % 60:02d}+00:00"
    return (
        *(f"{i:032x}", f"KType-Standard-{i:032x}", "latest", "controller-057", state),
        *(None, when, when, when, ms),
    )


async def test_an_old_database_gets_its_rollups_once_on_start(settings: Settings) -> None:
    settings = settings.replace(prune_interval=0)  # its 2024 Builds rows stay, for the page
    settings.data_dir.mkdir(parents=True)
    builds = [build_row(i, "2024-05-01") for i in range(5)]
    builds += [build_row(10 + i, "2024-05-02", "failed", None) for i in range(3)]
    builds += [build_row(20, "2024-05-02", ms=70_000)]
    old_database(settings.stats_db, 120, builds)
    async with app_client(settings) as client:
        server: Kiisrv = client.app.state.kiisrv  # type: ignore[attr-defined]
        stock = stats.stock_layouts(server.layouts)
        rows = server.storage.query_requests(ROW_SQL)
        assert (await client.get("/stats.json")).json() == {
            k: [list(kv) for kv in v] if isinstance(v, list) else v
            for k, v in brute_force(rows, stock).items()
        }
        figures = (await client.get("/status.json")).json()
        assert figures["per_day"] == [
            {"day": "2024-05-01", "succeeded": 5, "failed": 0},
            {"day": "2024-05-02", "succeeded": 1, "failed": 3},
        ]
        assert figures["build_seconds"]["p50"] == 2.0
        text = (await client.get("/metrics")).text
        assert 'kiisrv_builds_total{result="failed",version="latest"} 3.0' in text
        assert 'kiisrv_build_duration_seconds_bucket{le="60.0"} 5.0' in text
        assert "kiisrv_build_duration_seconds_count 6.0" in text
    with sqlite3.connect(settings.stats_db) as db:
        made = db.execute("SELECT n FROM StatsCounts WHERE dim = 'total' AND key = 'builds'")
        assert made.fetchall() == [(120,)]


async def test_build_states_move_between_the_rollups(tmp_path: Path) -> None:
    """A build saved queued, running, then finished (and a restart failing the unfinished)
    is counted once, by its last state, in the per-day and metrics figures."""
    storage = Storage(tmp_path / "stats.db", tmp_path / "config.db")
    try:
        day = datetime(2024, 6, 1, 10, tzinfo=UTC)
        a = Job("a" * 32, "KType-Standard-a", "latest", "controller-057")
        b = Job("b" * 32, "KType-Standard-b", "latest", "controller-057")
        for job in (a, b):
            storage.save_job(job)
        a.state, a.started_at = JobState.RUNNING, day
        storage.save_job(a)
        a.state, a.finished_at, a.duration_ms = JobState.SUCCEEDED, day, 1200
        storage.save_job(a)
        storage.save_job(a)  # saved twice: still one build
        assert storage.fail_unfinished("restarted") == 1
        read = metrics._read(storage)
        assert read[0] == [("latest", "failed", 1), ("latest", "succeeded", 1)]
        assert read[1] == (1, 1.2, [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])
        per_day = storage.build_days(14)
        assert per_day[-1] == ("2024-06-01", 1, 0)  # the latest day first: b failed today
        assert [(ok, failed) for _, ok, failed in per_day] == [(0, 1), (1, 0)]
    finally:
        storage.close()


async def test_old_builds_rows_are_pruned_with_their_zips_or_by_age(settings: Settings) -> None:
    settings = settings.replace(retention_days=30, prune_interval=0)
    async with app_client(settings) as client:
        server: Kiisrv = client.app.state.kiisrv  # type: ignore[attr-defined]
        long_ago = datetime.now(UTC) - timedelta(days=40)
        zipped, aged, fresh, running = (
            Job(c * 32, f"KType-Mine-{c * 32}", "latest", "c-057") for c in "abcd"
        )
        for job in (zipped, aged, fresh):
            job.state, job.finished_at = JobState.SUCCEEDED, datetime.now(UTC)
        aged.finished_at = long_ago
        running.state, running.created_at = JobState.RUNNING, long_ago
        for job in (zipped, aged, fresh, running):
            await server.storage.run(server.storage.save_job, job)
        settings.builds_dir.mkdir(parents=True, exist_ok=True)
        old_zip = settings.builds_dir / f"{zipped.stem}.zip"
        old_zip.write_bytes(b"z")
        stamp = long_ago.timestamp()
        import os

        os.utime(old_zip, (stamp, stamp))
        result = await asyncio.to_thread(server.prune)
        assert result.removed == 1
        left = {h for (h,) in server.storage.query("SELECT hash FROM Builds")}
        assert left == {fresh.hash, running.hash}
        per_day = (await client.get("/status.json")).json()["per_day"]
        assert sum(d["succeeded"] for d in per_day) == 3  # history stays in the rollup


async def test_postgres_calls_have_a_statement_timeout(tmp_path: Path, stats_url: str) -> None:
    storage = Storage(tmp_path / "stats.db", tmp_path / "config.db", stats_url, 2)
    try:
        assert storage.query_requests("SHOW statement_timeout") == [("2s",)]
        assert isinstance(storage.requests, PostgresDatabase)
        libpq = storage.requests.parameters()
        assert libpq["keepalives"] == "1" and int(libpq["keepalives_idle"]) > 0
    finally:
        storage.close()


async def test_a_hung_postgres_stops_no_build_and_stats_answers_503_in_time(
    settings: Settings,
) -> None:
    """A real PostgreSQL stopped with SIGSTOP (every process of it): the socket stays open
    and nothing answers. Builds are saved as ever; /stats is 503 + Retry-After within the
    timeout; the status page still shows the builds; once it runs again, nothing is lost."""
    with postgres_server() as pg:
        url = pg.create_database("kiisrv_hung")
        timeout = 1.0
        async with app_client(settings.replace(stats_url=url, stats_timeout=timeout)) as client:
            server: Kiisrv = client.app.state.kiisrv  # type: ignore[attr-defined]
            server.stats.record(row(1, datetime.now(UTC)))
            assert (await client.get("/stats")).text.startswith("Builds: 1 ")
            with postgres_paused(pg):
                server.stats.record(row(2, datetime.now(UTC)))
                started = time.monotonic()
                page = asyncio.create_task(client.get("/stats"))
                await asyncio.sleep(0.2)
                job = Job("e" * 32, "KType-Standard-e", "latest", "controller-057")
                await asyncio.wait_for(server.storage.run(server.storage.save_job, job), 0.5)
                saved = await asyncio.wait_for(
                    server.storage.run(server.storage.load_job, job.hash), 0.5
                )
                assert saved is not None
                answer = await asyncio.wait_for(page, 10)
                took = time.monotonic() - started
                assert answer.status_code == 503, answer.text
                assert int(answer.headers["retry-after"]) > 0
                assert took < timeout + 3, took
                started = time.monotonic()
                board = await asyncio.wait_for(client.get("/status.json"), 10)
                assert board.status_code == 200 and board.json()["keyboards"] == []
                assert time.monotonic() - started < timeout + 3
            await asyncio.sleep(timeout + 0.5)  # the cool-down after a hang
            deadline = time.monotonic() + 20
            text = ""
            while time.monotonic() < deadline:
                answer = await client.get("/stats")
                if answer.status_code == 200:
                    text = answer.text
                    break
                await asyncio.sleep(0.5)
            assert text.startswith("Builds: 2 (2 unique)\n"), text


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_cache_hits_are_counted_per_day_not_listed(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """A flood of cache hits (free, not rate-limited) wrote a row each, kept a year:
    now one row per day, client and build holds their count. The figures count every
    request as before; a prune takes the counted rows' requests out of them."""
    url = request.getfixturevalue("stats_url") if backend == "postgres" else None
    storage = Storage(tmp_path / "stats.db", tmp_path / "config.db", url)
    try:
        now = datetime.now(UTC)
        day = now.date().isoformat()

        def hit(ip: str, when: datetime = now) -> RequestRecord:
            r = row(0, when, ip=ip)
            return RequestRecord(**{**r.__dict__, "hit_day": when.date().isoformat()})

        for _ in range(10):  # ten flushes of 500 hits each, and a build among them
            storage.record_requests([hit("flooder")] * 500 + [row(1, now)])
        storage.record_requests([hit("someone else"), hit("flooder", now - timedelta(days=2))])
        counted = storage.query_requests(
            "SELECT ip_addr, hit_day, n FROM Requests WHERE hit_day IS NOT NULL ORDER BY n"
        )
        yesterday2 = (now - timedelta(days=2)).date().isoformat()
        assert sorted(counted) == sorted(
            [("flooder", day, 5000), ("someone else", day, 1), ("flooder", yesterday2, 1)]
        )
        figures = stats.figures(storage, STOCK)
        assert figures["builds"] == 5000 + 10 + 2
        assert figures["users"] == 3  # flooder, someone else, user1 (the builds)
        assert figures["unique"] == 2
        assert storage.prune_requests(now - timedelta(days=1)) == 1
        assert stats.figures(storage, STOCK)["builds"] == 5000 + 10 + 1
        storage.prune_requests(now + timedelta(days=1))
        assert stats.figures(storage, STOCK)["builds"] == 0
    finally:
        storage.close()

"""Statistics of several API servers in one PostgreSQL (KIISRV_STATS_URL), on a real server.

The tests start their own PostgreSQL (tests/helpers.py PostgresServer, Debian's
binaries); the engine is not needed: rows are written through each app's recorder, the
way an answered build request writes them.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from kiisrv import privacy
from kiisrv.core import Kiisrv
from kiisrv.errors import StorageError
from kiisrv.settings import Settings
from kiisrv.store.requests import RequestRecord
from kiisrv.store.storage import Storage
from kiisrv.web import stats
from tests.helpers import PostgresServer, app_client, postgres_server

pytestmark = pytest.mark.anyio


def row(
    ip: str,
    when: datetime | None = None,
    hash_: str = "a" * 32,
    board: str = "KType",
    web: bool = True,
    duration: int | None = 1000,
) -> RequestRecord:
    return RequestRecord(
        ip_addr=ip,
        os="Linux" if web else "Windows",
        web=web,
        hash=hash_,
        board=board,
        variant="Mine",
        layers=2,
        container="controller-057",
        success=True,
        request_time=when or datetime.now(UTC),
        build_duration=duration,
    )


def pg_rows(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()  # type: ignore[arg-type]


def sqlite_requests(settings: Settings) -> int:
    import sqlite3

    with sqlite3.connect(settings.stats_db) as db:
        return int(db.execute("SELECT COUNT(*) FROM Requests").fetchone()[0])


async def test_two_api_servers_on_one_postgres_both_show_every_request(
    settings: Settings, stats_url: str
) -> None:
    a = settings.replace(data_dir=settings.data_dir / "a", stats_url=stats_url)
    b = settings.replace(data_dir=settings.data_dir / "b", stats_url=stats_url)
    async with app_client(a) as ca, app_client(b) as cb:
        sa: Kiisrv = ca.app.state.kiisrv  # type: ignore[attr-defined]
        sb: Kiisrv = cb.app.state.kiisrv  # type: ignore[attr-defined]
        for i in range(3):
            sa.stats.record(row("u1", hash_=f"{i}" * 32, board="KType"))
        for i in range(2):
            sb.stats.record(row("u2", hash_=f"{i}" * 32, board="MDErgo1", web=False))
        # Each /stats writes its own server's pending rows; the other's recorder writes
        # its own within FLUSH_EVERY. Here both have, before either page is read.
        await sb.stats.flush()
        texts = [(await c.get("/stats")).text for c in (ca, cb)]
        figures = [(await c.get("/stats.json")).json() for c in (ca, cb)]
        keyboards = [(await c.get("/status.json")).json()["keyboards"] for c in (ca, cb)]
    assert texts[0] == texts[1] and texts[0].startswith("Builds: 5 (3 unique)\n"), texts
    assert "Users: 2 unique" in texts[0]
    assert 'Platform Counts: {\n    "Web": 3,\n    "Desktop": 2,\n}' in texts[0]
    assert figures[0] == figures[1] and figures[0]["builds"] == 5
    assert (
        keyboards[0]
        == keyboards[1]
        == [
            {"keyboard": "KType", "requests": 3},
            {"keyboard": "MDErgo1", "requests": 2},
        ]
    )
    assert pg_rows(stats_url, "SELECT COUNT(*) FROM Requests") == [(5,)]
    assert sqlite_requests(a) == sqlite_requests(b) == 0  # Builds stays in SQLite, not these


async def test_the_stats_page_is_the_same_on_sqlite_and_postgres(
    tmp_path: Path, stats_url: str
) -> None:
    """The one SQL of ``stats.figures`` gives the same page on both databases."""
    stock = {"KType-Mine", "Infinity-Mine"}  # MDErgo1-Mine is counted as MDErgo1-(other)
    now = datetime.now(UTC)
    rows = [
        row("1.1.1.1", now, "h1", duration=1000),
        row("1.1.1.1", now, "h1", duration=None),
        row("2.2.2.2", now, "h2", board="MDErgo1", web=False, duration=3000),
        row("3.3.3.3", now, "h3", board="Infinity", web=False, duration=2500),
    ]
    pages = []
    for url in (None, stats_url):
        storage = Storage(tmp_path / f"{bool(url)}.db", tmp_path / "config.db", url)
        try:
            storage.record_requests(rows)
            pages.append((stats.summary(storage, stock), stats.figures(storage, stock)))
        finally:
            storage.close()
    assert pages[0] == pages[1]
    assert pages[0][0].startswith("Builds: 4 (3 unique)\nCache ratio: 1.3\nAvg time: 2.167 s\n")
    assert (
        'Keyboard Counts: {\n    "KType-Mine": 2,\n    "Infinity-Mine": 1,\n'
        '    "MDErgo1-(other)": 1,\n}' in pages[0][0]
    )


async def test_privacy_migration_and_retention_on_postgres(
    settings: Settings, stats_url: str
) -> None:
    settings = settings.replace(stats_url=stats_url, requests_retention_days=30, prune_interval=0)
    settings.data_dir.mkdir(parents=True)
    old = Storage(settings.stats_db, settings.config_db, stats_url)
    now = datetime.now(UTC)
    old.record_requests(
        [
            row("203.0.113.7", now - timedelta(days=31), "b" * 32),
            row("203.0.113.7", now),
            row("::1", now),
        ]
    )
    old.close()
    async with app_client(settings) as client:
        stored = [a for (a,) in pg_rows(stats_url, "SELECT ip_addr FROM Requests ORDER BY id")]
        assert len(stored) == 3 and not any(privacy.is_address(str(a)) for a in stored)
        assert stored[0] == stored[1] != stored[2]
        server: Kiisrv = client.app.state.kiisrv  # type: ignore[attr-defined]
        server.prune()
        assert pg_rows(stats_url, "SELECT hash FROM Requests") == [("a" * 32,)] * 2
        assert "Builds: 2 (1 unique)" in (await client.get("/stats")).text


async def test_a_database_that_is_down_is_503_and_no_row_is_lost(settings: Settings) -> None:
    """PostgreSQL stopped: /stats is 503 + Retry-After, rows wait; restarted: all counted."""
    with postgres_server() as pg:
        url = pg.create_database("kiisrv_down")
        async with app_client(settings.replace(stats_url=url)) as client:
            server: Kiisrv = client.app.state.kiisrv  # type: ignore[attr-defined]
            server.stats.record(row("u1"))
            assert (await client.get("/stats")).text.startswith("Builds: 1 ")
            pg.stop()
            server.stats.record(row("u2"))
            down = await client.get("/stats")
            assert down.status_code == 503, down.text
            assert "statistics database" in down.json()["error"]
            assert int(down.headers["retry-after"]) > 0
            with pytest.raises(StorageError):
                await server.storage.run(server.storage.record_requests, [row("u3")])
            pg.start()
            assert (await client.get("/stats")).text.startswith("Builds: 2 (1 unique)\n")


def test_the_setting_takes_postgresql_urls_only(settings: Settings) -> None:
    with pytest.raises(ValueError, match="KIISRV_STATS_URL"):
        Settings.from_env({"KIISRV_STATS_URL": "mysql://db/kiisrv"})
    assert Settings.from_env({"KIISRV_STATS_URL": ""}).stats_url is None
    url = "postgresql://kiisrv:secret@db:5432/kiisrv"
    assert Settings.from_env({"KIISRV_STATS_URL": url}).stats_url == url


def test_the_postgres_helper_cleans_up() -> None:
    with contextlib.ExitStack() as stack:
        pg: PostgresServer = stack.enter_context(postgres_server())
        where = pg.dir
        assert where.is_dir()
    assert not where.exists()

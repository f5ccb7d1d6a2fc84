"""No raw client address at rest; a retention for statistics rows; old databases migrated.

Real SQLite files and the real app in process (the engine is not needed: the rows are
written by an old database or by the recorder).
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kiisrv import privacy
from kiisrv.core import Kiisrv
from kiisrv.settings import Settings
from kiisrv.store.requests import RequestRecord
from kiisrv.store.storage import Storage
from tests.helpers import app_client

pytestmark = pytest.mark.anyio


def row(ip: str, when: datetime, hash_: str = "a" * 32) -> RequestRecord:
    return RequestRecord(
        ip_addr=ip,
        os="Linux",
        web=True,
        hash=hash_,
        board="KType",
        variant="Mine",
        layers=2,
        container="controller-057",
        success=True,
        request_time=when,
        build_duration=1000,
    )


def addresses(settings: Settings) -> list[str]:
    with sqlite3.connect(settings.stats_db) as db:
        return [a for (a,) in db.execute("SELECT ip_addr FROM Requests ORDER BY id")]


def test_the_key_is_made_once_kept_private_and_hashes_are_stable(tmp_path: Path) -> None:
    key = privacy.load_key(tmp_path)
    assert privacy.load_key(tmp_path) == key and len(key) == 32
    assert (tmp_path / privacy.KEY_FILE).stat().st_mode & 0o777 == 0o600
    a = privacy.pseudonym(key, "203.0.113.7")
    assert a == privacy.pseudonym(key, "203.0.113.7") != privacy.pseudonym(key, "203.0.113.8")
    assert "203" not in a and not privacy.is_address(a) and privacy.is_address("2001:db8::1")
    assert privacy.pseudonym(b"another key" * 3, "203.0.113.7") != a
    assert privacy.pseudonym(key, "") == ""


async def test_api_servers_given_one_key_file_hash_a_client_alike(settings: Settings) -> None:
    """KIISRV_CLIENT_KEY_FILE: two API servers of a cluster, each with its own data
    folder, share one key (made by whichever starts first), so a client is one user in
    the statistics and one budget in the rate limit whichever server answers it."""
    shared = settings.data_dir.parent / "shared" / "client-key"
    one = Settings.from_env(
        {"KIISRV_DATA_DIR": str(settings.data_dir / "api-1"), "KIISRV_CLIENT_KEY_FILE": str(shared)}
    )
    two = one.replace(data_dir=settings.data_dir / "api-2")
    assert Settings().client_key_path == Path("data/client-key")  # unset: the data folder's
    keys = []
    for s in (one, two):
        async with app_client(s.replace(layouts_dir=settings.layouts_dir)) as c:
            keys.append(c.app.state.kiisrv.client_key)  # type: ignore[attr-defined]
    assert keys[0] == keys[1] == privacy.load_key_file(shared)
    assert not (one.data_dir / privacy.KEY_FILE).exists()
    assert not (two.data_dir / privacy.KEY_FILE).exists()


async def test_raw_addresses_of_an_old_database_are_replaced_on_start(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True)
    old = Storage(settings.stats_db, settings.config_db)
    now = datetime.now(UTC)
    old.record_requests([row("203.0.113.7", now), row("203.0.113.7", now), row("::1", now)])
    old.close()
    async with app_client(settings) as client:
        stored = addresses(settings)
        assert not any(privacy.is_address(a) for a in stored)
        assert stored[0] == stored[1] != stored[2]
        text = (await client.get("/stats")).text
        assert "Users: 2 unique" in text  # the counts survive


async def test_requests_rows_past_the_retention_are_deleted(settings: Settings) -> None:
    settings = settings.replace(requests_retention_days=30)
    settings.data_dir.mkdir(parents=True)
    storage = Storage(settings.stats_db, settings.config_db)
    now = datetime.now(UTC)
    storage.record_requests(
        [row("x", now - timedelta(days=31), "b" * 32), row("y", now - timedelta(days=29))]
    )
    storage.close()
    server = Kiisrv(settings)
    try:
        server.prune()
        assert addresses(settings) == ["y"]
        kept = server.settings.replace(requests_retention_days=0)
        assert kept.requests_retention_days == 0  # 0 keeps every row: the pruner skips them
    finally:
        server.storage.close()

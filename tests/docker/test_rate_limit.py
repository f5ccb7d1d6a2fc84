"""The rate limit over HTTP, with real builds: new builds count, cache hits do not."""

from __future__ import annotations

import sqlite3

import pytest

from kiisrv import privacy
from kiisrv.settings import Settings
from tests.helpers import app_client, ktype, request

pytestmark = pytest.mark.anyio


async def test_a_client_past_the_limit_gets_429_and_cache_hits_stay_free(
    docker_settings: Settings,
) -> None:
    settings = docker_settings.replace(rate_limit=2, trusted_proxies="203.0.113.7")
    async with app_client(settings) as client:  # the app sees every request from 203.0.113.7
        first = request(ktype(custom="# one"))
        assert (await client.post("/", json=first)).status_code == 200
        assert (await client.post("/", json=request(ktype(custom="# two")))).status_code == 200
        refused = await client.post("/", json=request(ktype(custom="# three")))
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert "too many new builds" in refused.json()["error"]
        for _ in range(5):  # cache hits do not count
            assert (await client.post("/", json=first)).status_code == 200
        # Behind the trusted proxy, X-Forwarded-For names the client: another budget.
        other = await client.post(
            "/", json=request(ktype(custom="# three")), headers={"X-Forwarded-For": "198.51.100.9"}
        )
        assert other.status_code == 200, other.text
        await client.get("/stats")  # flushes the recorder
    key = privacy.load_key(settings.data_dir)
    with sqlite3.connect(settings.stats_db) as db:
        stored = {a for (a,) in db.execute("SELECT ip_addr FROM Requests")}
    assert stored == {privacy.pseudonym(key, "203.0.113.7"), privacy.pseudonym(key, "198.51.100.9")}

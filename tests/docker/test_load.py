"""Load over real HTTP: identical, distinct and cached requests arriving together.

Checks what must hold under load, not how fast: one container per distinct build,
no 5xx, exactly one Requests row per answered request, and memory that does not grow
with the number of cache hits. Timings are in bench/ (bench_builds.py).
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import httpx

from kiisrv.settings import Settings
from tests.helpers import Events, ktype, request, rss_kib, serve


def test_load_keeps_every_request_and_no_5xx(
    docker_settings: Settings, build_containers: Events, tmp_path: Path
) -> None:
    async def scenario(base: str, pid: int) -> dict[str, object]:
        limits = httpx.Limits(max_connections=250, max_keepalive_connections=250)
        async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as http:
            identical = request(ktype(custom="# KIISRV_TEST_SLEEP=2 load"))
            distinct = [request(ktype(custom=f"# load {i}")) for i in range(20)]
            answers = await asyncio.gather(
                *(http.post("/", json=identical) for _ in range(200)),
                *(http.post("/", json=d) for d in distinct),
            )
            sem = asyncio.Semaphore(50)

            async def hit() -> httpx.Response:
                async with sem:
                    return await http.post("/", json=distinct[0])

            warm = await asyncio.gather(*(hit() for _ in range(300)))
            rss_warm = rss_kib(pid)
            flood = await asyncio.gather(*(hit() for _ in range(1500)))
            rss_after = rss_kib(pid)
            return {"answers": answers + warm + flood, "rss": (rss_warm, rss_after)}

    with serve(docker_settings, tmp_path / "server.log") as live:
        result = asyncio.run(scenario(live.base, live.pid))
    answers: list[httpx.Response] = result["answers"]  # type: ignore[assignment]
    statuses = {a.status_code for a in answers}
    assert statuses == {200}, statuses
    # Builds started, from the server's own rows: the engine's event log keeps only its
    # last 256 events, fewer than 21 builds make now (archive calls, volumes).
    with sqlite3.connect(docker_settings.stats_db) as db:
        assert db.execute("SELECT COUNT(*) FROM Builds").fetchone() == (1 + 20,)
    with sqlite3.connect(docker_settings.stats_db) as db:
        rows = db.execute("SELECT COALESCE(SUM(n), 0) FROM Requests").fetchone()[0]
        builds = db.execute("SELECT COUNT(*) FROM Builds").fetchone()[0]
    assert rows == len(answers) == 200 + 20 + 300 + 1500
    assert builds == 21
    rss_warm, rss_after = result["rss"]  # type: ignore[misc]
    assert rss_after - rss_warm < 30 * 1024, f"RSS grew from {rss_warm} to {rss_after} KiB"

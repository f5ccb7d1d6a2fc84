"""Any API server answers for any build (#15.1): real redis-server, PostgreSQL, engine.

Behind a load balancer the Configurator's POST lands on one API server and its GET of
the zip, the build's state or its log on another. Only the server that waited had the
zip (on its disk): the others answered 404. Now workers leave results in the cluster's
result store (results.py) and running builds' output in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import psycopg
from redis.asyncio import Redis

from kiisrv.settings import Settings
from tests.helpers import (
    Events,
    RedisServer,
    eventually,
    ktype,
    redis_contents,
    request,
    serve,
    work,
)


async def _queued_hash(url: str) -> str:
    """The hash of the one build in the queue (arq's job key is named by it)."""
    redis = Redis.from_url(url)
    try:

        async def keys() -> list[bytes]:
            return [k async for k in redis.scan_iter(match="arq:job:*")]

        found = await eventually(keys, timeout=30)
        return found[0].decode().removeprefix("arq:job:")
    finally:
        await redis.aclose()


async def _versions_ready(base: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:

        async def offered() -> bool:
            r = await http.get("/versions")
            return r.status_code == 200 and "latest" in r.json()

        await eventually(offered, timeout=30, interval=0.2)


def test_any_api_server_answers_for_a_build_another_one_queued(
    docker_settings: Settings,
    build_containers: Events,
    redis: RedisServer,
    queue_env: dict[str, str],
    store_url: str,
    tmp_path: Path,
) -> None:
    """POST to A; B answers the state and the live log while it runs, then the zip,
    the state and the log; C, started after a Redis restart that lost everything,
    answers the zip too. No zip is ever in Redis. The worker keeps nothing of it, and
    prunes what a killed worker left (it kept every build's folder)."""
    w = docker_settings.replace(data_dir=tmp_path / "w")
    left = w.config_dir / ("e" * 32)  # a build's inputs, left by a kill an hour ago
    left.mkdir(parents=True)
    (left / "layout.kll").write_text("# left behind")
    os.utime(left, (time.time() - 3600, time.time() - 3600))
    with contextlib.ExitStack() as stack:
        stack.enter_context(work(w, tmp_path / "w.log", KIISRV_PRUNE_INTERVAL="1", **queue_env))
        a, b = (
            stack.enter_context(
                serve(
                    docker_settings.replace(data_dir=tmp_path / n),
                    tmp_path / f"{n}.log",
                    **queue_env,
                )
            )
            for n in ("a", "b")
        )

        async def running() -> dict[str, Any]:
            await asyncio.gather(_versions_ready(a.base), _versions_ready(b.base))
            async with (
                httpx.AsyncClient(base_url=a.base, timeout=120) as on_a,
                httpx.AsyncClient(base_url=b.base, timeout=30) as on_b,
            ):
                body = request(ktype(custom="# KIISRV_TEST_SLEEP=6 any server"))
                answer = asyncio.create_task(on_a.post("/", json=body))
                hash_ = await _queued_hash(redis.url)
                states: list[dict[str, object]] = []

                async def live_log() -> bytes:
                    r = await on_b.get(f"/builds/{hash_}")
                    assert r.status_code == 200, r.text  # was 404: A's build, not B's
                    states.append(r.json())
                    return (await on_b.get(f"/builds/{hash_}/log")).content

                live = await eventually(
                    live_log, lambda text: b"sleeping 6s as asked" in text, timeout=30
                )
                r = await answer
                assert r.status_code == 200, r.text
                name = r.json()["filename"].removeprefix("./tmp/")
                zipped = await on_b.get(f"/tmp/{name}")
                assert zipped.status_code == 200, zipped.text
                done = await on_b.get(f"/builds/{hash_}")
                states.append(done.json())
                log = (await on_b.get(f"/builds/{hash_}/log")).content
                in_redis = await redis_contents(redis.url)
                return {
                    "hash": hash_,
                    "name": name,
                    "states": states,
                    "zip": zipped.content,
                    "log": log,
                    "live": live,
                    "redis": in_redis,
                }

        seen = asyncio.run(running())
        hash_, name, states, zipped = seen["hash"], seen["name"], seen["states"], seen["zip"]
        log, live, in_redis = seen["log"], seen["live"], seen["redis"]
        assert states[0]["state"] in ("queued", "running")
        assert states[-1]["state"] == "succeeded" and states[-1]["hash"] == hash_
        assert b"sleeping 6s as asked" in log and b"sleeping 6s as asked" in live
        with zipfile.ZipFile(io.BytesIO(zipped)) as z:
            assert "kiibohd.dfu.bin" in z.namelist()
        assert zipped not in in_redis and b"kiibohd.dfu.bin" not in in_redis
        assert list(w.config_dir.iterdir()) == [] and list(w.builds_dir.glob("*.zip")) == []

        # Redis restarted empty: the result is still the cluster's, on any server.
        redis.stop()
        redis.start()
        c = stack.enter_context(
            serve(docker_settings.replace(data_dir=tmp_path / "c"), tmp_path / "c.log", **queue_env)
        )
        again = httpx.get(f"{c.base}/tmp/{name}", timeout=30)
        assert again.status_code == 200 and again.content == zipped
        assert httpx.get(f"{c.base}/builds/{hash_}", timeout=30).json()["state"] == "succeeded"
    with psycopg.connect(store_url) as conn:
        assert conn.execute("SELECT COUNT(*) FROM Results").fetchone() == (1,)
    assert len(build_containers.created()) == 1

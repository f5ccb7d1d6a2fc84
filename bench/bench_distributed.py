"""Distributed builds: makespan on one worker against two, and the queue's own cost.

    KIISRV_TEST_DOCKER_HOST_2=unix:///... .venv/bin/python bench/bench_distributed.py

Needs redis-server, the test double image on the first engine (`make test` builds it;
KIISRV_TEST_IMAGE_PREFIX names it) and a second engine holding it (.ci/engine2.sh
starts one; the tests load the image). Each build sleeps 1 s in the container
(KIISRV_TEST_SLEEP) so that the makespan shows capacity, not the test double's speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import docker
import docker.errors
import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.helpers import (  # noqa: E402
    FIXTURE_LAYOUTS,
    TEST_IMAGE_PREFIX,
    RedisServer,
    ktype,
    request,
    serve,
    work,
)

from kiisrv.settings import Settings  # noqa: E402

ENGINE2 = os.environ.get("KIISRV_TEST_DOCKER_HOST_2", "")


async def ready(base: str) -> None:
    async with httpx.AsyncClient(base_url=base) as http:
        for _ in range(300):
            if "latest" in (await http.get("/versions")).json():
                return
            await asyncio.sleep(0.1)
    raise SystemExit(f"{base} never offered latest")


async def makespan(base: str, tag: str, n: int = 20) -> float:
    await ready(base)
    async with httpx.AsyncClient(base_url=base, timeout=300) as http:
        start = time.monotonic()
        rs = await asyncio.gather(
            *(
                http.post("/", json=request(ktype(custom=f"# KIISRV_TEST_SLEEP=1 {tag} {i}")))
                for i in range(n)
            )
        )
        took = time.monotonic() - start
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs if r.status_code != 200]
    return took


async def one_by_one(base: str, tag: str, n: int = 15) -> list[float]:
    await ready(base)
    times = []
    async with httpx.AsyncClient(base_url=base, timeout=300) as http:
        for i in range(n):
            start = time.monotonic()
            r = await http.post("/", json=request(ktype(custom=f"# {tag} {i}")))
            times.append(time.monotonic() - start)
            assert r.status_code == 200, r.text
    return times


def main() -> None:
    if not ENGINE2:
        raise SystemExit("set KIISRV_TEST_DOCKER_HOST_2 to the second engine (.ci/engine2.sh)")
    run = secrets.token_hex(3)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        t = Path(tmp)
        base = Settings(
            data_dir=t / "x",
            layouts_dir=FIXTURE_LAYOUTS,
            docker_url=os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"),
            instance=f"kiisrvbench{run}",
            image_prefix=TEST_IMAGE_PREFIX,
            max_builds=2,
            ccache_volume=f"kiisrvbench{run}-ccache",
            build_memory="256m",
        )
        redis = RedisServer(t / "redis")
        redis.start()
        stack.callback(redis.stop)
        q = {"KIISRV_QUEUE_URL": redis.url}

        def server(name: str, **env: str) -> str:
            s = base.replace(data_dir=t / name, instance=f"{base.instance}{name}")
            return str(stack.enter_context(serve(s, t / f"{name}.log", **env)).base)

        def worker(name: str, url: str) -> None:
            s = base.replace(data_dir=t / name, instance=f"{base.instance}{name}", docker_url=url)
            stack.enter_context(work(s, t / f"{name}.log", **q))

        embedded = server("emb")
        emb = asyncio.run(one_by_one(embedded, f"emb{run}"))
        worker("w1", base.docker_url)
        api = server("api", **q)
        dist = asyncio.run(one_by_one(api, f"dist{run}"))
        one = asyncio.run(makespan(api, f"one{run}"))
        worker("w2", ENGINE2)
        time.sleep(1)
        two = asyncio.run(makespan(api, f"two{run}"))
        for url in (base.docker_url, ENGINE2):  # the bench's ccache volume, on both engines
            client = docker.DockerClient(base_url=url)
            with contextlib.suppress(docker.errors.NotFound):
                client.volumes.get(base.ccache_volume).remove(force=True)
            client.close()
    med_e, med_d = statistics.median(emb), statistics.median(dist)
    print(f"one build, embedded:    median {med_e * 1000:.0f} ms (n={len(emb)})")
    print(f"one build, distributed: median {med_d * 1000:.0f} ms (n={len(dist)})")
    print(f"queue adds (median):    {(med_d - med_e) * 1000:.0f} ms")
    print(
        f"20 distinct builds (1 s each), max 2 at once per worker: one worker {one:.1f} s, "
        f"two workers {two:.1f} s"
    )


if __name__ == "__main__":
    main()

"""Distributed builds: makespan on one worker against two, and the queue's own cost.

    KIISRV_TEST_DOCKER_HOST_2=unix:///... .venv/bin/python bench/bench_distributed.py \
        --out bench/results-distributed.md

Needs redis-server and PostgreSQL (Debian's packages: the result store every API server
and worker shares, KIISRV_STORE_URL), the test double image on the first engine (`make
test` builds it; KIISRV_TEST_IMAGE_PREFIX names it) and a second engine holding the
same image (.ci/engine2.sh starts one; the tests load the image). Each build of the
makespan sleeps 1 s in the container (KIISRV_TEST_SLEEP) so that it shows capacity,
not the test double's speed. One run measures everything side by side: the embedded
server, then the same requests through Redis and one worker, then one worker against
two. The `/stats` figures with 2 M rows are not measured here: --out copies them from
bench/results-stats.md (bench_stats.py), with its date.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import re
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
    TEST_CONTAINERS,
    TEST_IMAGE_PREFIX,
    RedisServer,
    ktype,
    postgres_server,
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


async def one_by_one(
    embedded: str, api: str, tag: str, n: int = 21
) -> tuple[list[float], list[float]]:
    """One new build at a time, taking turns: the embedded server, then the API server
    (through Redis, a worker and the result store), so that whatever else loads the
    machine weighs on both alike."""
    await ready(embedded)
    await ready(api)
    times: tuple[list[float], list[float]] = ([], [])
    async with httpx.AsyncClient(timeout=300) as http:
        for i in range(n):
            for base, kept in zip((embedded, api), times, strict=True):
                body = request(ktype(custom=f"# {tag} {i} {base}"))
                start = time.monotonic()
                r = await http.post(f"{base}/", json=body)
                kept.append(time.monotonic() - start)
                assert r.status_code == 200, r.text
    return times


def same_images(first: str, second: str) -> None:
    """The second engine gets the first's test double under the same names: without
    them its worker offers nothing and every build goes to the first (an earlier run of
    this bench measured one worker twice: 18.3 s against 19.1 s)."""
    src, dst = docker.DockerClient(base_url=first), docker.DockerClient(base_url=second)
    try:
        image = src.images.get(f"{TEST_IMAGE_PREFIX}{TEST_CONTAINERS[0]}:latest")
        try:
            have = dst.images.get(image.id).id
        except docker.errors.ImageNotFound:
            have = None
        if have != image.id:
            dst.images.load(b"".join(image.save(named=False)))
        for container in TEST_CONTAINERS:
            dst.images.get(image.id).tag(f"{TEST_IMAGE_PREFIX}{container}", "latest")
    finally:
        src.close()
        dst.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="write the results as Markdown here")
    args = parser.parse_args()
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
            build_memory="256m",
            rate_limit=0,  # every request comes from this one client
        )
        redis = RedisServer(t / "redis")
        redis.start()
        stack.callback(redis.stop)
        pg = stack.enter_context(postgres_server())
        q = {
            "KIISRV_QUEUE_URL": redis.url,
            "KIISRV_STORE_URL": pg.create_database(f"kiisrv_bench_{run}"),
        }

        def server(name: str, **env: str) -> str:
            s = base.replace(data_dir=t / name, instance=f"{base.instance}{name}")
            return str(stack.enter_context(serve(s, t / f"{name}.log", **env)).base)

        def worker(name: str, url: str) -> None:
            s = base.replace(data_dir=t / name, instance=f"{base.instance}{name}", docker_url=url)
            stack.enter_context(work(s, t / f"{name}.log", **q))

        same_images(base.docker_url, ENGINE2)
        embedded = server("emb")
        worker("w1", base.docker_url)
        api = server("api", **q)
        emb, dist = asyncio.run(one_by_one(embedded, api, f"turns{run}"))
        one = asyncio.run(makespan(api, f"one{run}"))
        worker("w2", ENGINE2)
        time.sleep(1)
        two = asyncio.run(makespan(api, f"two{run}"))
    med_e, med_d = statistics.median(emb), statistics.median(dist)
    print(f"one build, embedded:    median {med_e * 1000:.0f} ms (n={len(emb)})")
    print(f"one build, distributed: median {med_d * 1000:.0f} ms (n={len(dist)})")
    paired = statistics.median(d - e for e, d in zip(emb, dist, strict=True))
    print(f"queue adds (median of each turn's difference): {paired * 1000:.0f} ms")
    print(
        f"20 distinct builds (1 s each), max 2 at once per worker: one worker {one:.1f} s, "
        f"two workers {two:.1f} s"
    )
    if args.out:
        args.out.write_text(report(emb, dist, one, two))
        print(f"wrote {args.out}")


def machine() -> str:
    cores = os.cpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    engine = docker.from_env().version()["Version"]
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{cores} cores, {memory:.0f} GiB, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, Docker {engine}; load average (1/5/15 min) "
        f"at the end: {load}"
    )


def stats_figures() -> str:
    """The PostgreSQL table of bench/results-stats.md ("after": the rollups), as it is."""
    text = (REPO / "bench" / "results-stats.md").read_text()
    dated = re.search(r"\b(20\d\d-\d\d-\d\d)\b", text)
    section = text.split("### PostgreSQL", 1)[1].strip().splitlines()[1:]
    table = [line for line in section if line.startswith("|")]
    return (
        f"Copied from [results-stats.md](results-stats.md) (`bench/bench_stats.py --runs 7 "
        f"--postgres`, {dated.group(1) if dated else 'undated'}; not measured by this run): "
        "2,000,000 Requests rows in the PostgreSQL every API server shares, a real "
        '`kiisrv serve` reading it; "before" is the code before the rollups (#15.4).\n\n'
        + "\n".join(table)
        + "\n"
    )


def report(emb: list[float], dist: list[float], one: float, two: float) -> str:
    med_e, med_d = statistics.median(emb), statistics.median(dist)
    # Each turn's pair (same moment, same load): the median of their differences.
    added = statistics.median(d - e for e, d in zip(emb, dist, strict=True)) * 1000
    rows = "\n".join(
        f"| {what} | {value} |"
        for what, value in (
            ("one build, embedded (`kiisrv serve`, no Redis)", f"median {med_e * 1000:.0f} ms"),
            (
                "one build, distributed (API server → Redis → `kiisrv worker` → result store)",
                f"median {med_d * 1000:.0f} ms (n={len(dist)} each)",
            ),
            (
                "**time the queue adds to one build** (target ≤ 50 ms): median of each turn's "
                "difference",
                f"**{added:.0f} ms** (difference of the medians: {(med_d - med_e) * 1000:.0f} ms)",
            ),
            (
                "makespan, 20 distinct builds of 1 s, ≤ 2 at once per worker: **one worker**",
                f"**{one:.1f} s**",
            ),
            ("the same, **two workers** (one per engine)", f"**{two:.1f} s** ({one / two:.2f}x)"),
        )
    )
    return f"""# Distributed builds: one worker against two, the queue's cost, `/stats` at 2 M rows

    KIISRV_TEST_DOCKER_HOST_2=$(cat /tmp/engine2.host) \\
        .venv/bin/python bench/bench_distributed.py --out bench/results-distributed.md

{datetime.date.today().isoformat()}; {machine()}. Both engines are on this machine (the
second from `.ci/engine2.sh`, in its own network namespace); Redis and PostgreSQL
(the result store, `KIISRV_STORE_URL`) local, from Debian's packages; the test double
controller image, so builds cost the server's and the container's own time, not a
compiler's. One run, side by side: one new build at a time on the embedded server and
through Redis to one worker, taking turns (medians of each), then 20 builds at once on
one worker and on two.

| measure | result |
|---|---|
{rows}

Both engines share the machine's 2 cores, so two workers do not halve the makespan of
real (CPU-bound) builds here; with the 1 s sleeping builds the gain is capacity
(slots), which is what a second host adds. The queue's cost includes the worker's
write of the zip to the result store and the API server's read of it.

## `/stats` with 2 M rows

{stats_figures()}"""


if __name__ == "__main__":
    main()

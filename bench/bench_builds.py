"""Build-path timings over real HTTP against `kiisrv serve` and the test controller image.

    .venv/bin/python bench/bench_builds.py [--out bench/results.md]

Needs a Docker daemon and the test double image `kiisrv-testdouble-controller-057:latest`
(`make test` builds it). Measures: request-to-zip of distinct builds, cache hits,
identical requests arriving together, a flood of cache hits, and the server's memory.
The server runs with a fresh data folder on a free loopback port; nothing else is
contacted. Numbers go to stdout and, with --out, to a Markdown file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import docker
import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.helpers import FIXTURE_LAYOUTS, ktype, request, rss_kib  # noqa: E402

INSTANCE = "kiisrvbench"


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def fmt(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    med, p90 = statistics.median(ms), pct(ms, 90)
    return f"median {med:.1f} ms, p90 {p90:.1f} ms, max {max(ms):.1f} ms (n={len(ms)})"


class ContainerCount:
    """Containers of this bench created while it is open, from the live event stream:
    the daemon keeps only its last 256 events for a query after the fact, fewer than
    30 builds make (create, start, archive calls, die, destroy)."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.created = 0
        self._events = client.events(
            decode=True,
            filters={
                "type": "container",
                "event": "create",
                "label": f"io.kiisrv.instance={INSTANCE}",
            },
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(Exception):  # the stream ends when closed
            for _ in self._events:
                self.created += 1

    def close(self) -> int:
        time.sleep(1)  # the last events on their way
        self._events.close()
        return self.created


async def main(out: Path | None) -> None:
    dclient = docker.DockerClient(version="auto")
    dclient.images.get("kiisrv-testdouble-controller-057:latest")
    data = Path(tempfile.mkdtemp(prefix="kiisrv-bench-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "KIISRV_HOST": "127.0.0.1",
        "KIISRV_PORT": str(port),
        "KIISRV_DATA_DIR": str(data / "data"),
        "KIISRV_LAYOUTS_DIR": str(FIXTURE_LAYOUTS),
        "KIISRV_IMAGE_PREFIX": "kiisrv-testdouble-",
        "KIISRV_RATE_LIMIT": "0",  # one client sends every request
        # ... as many users would: no per-client connection cap or build turns (#23)
        "KIISRV_MAX_CLIENT_CONNECTIONS": "100000",
        "KIISRV_MAX_CLIENT_BUILDS": "1000",
        "KIISRV_INSTANCE": INSTANCE,
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "kiisrv", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    lines: list[str] = []

    def report(line: str) -> None:
        print(line)
        lines.append(line)

    try:
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
        async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as http:
            for _ in range(100):
                try:
                    await http.get("/healthz")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            rss_start = rss_kib(server.pid)

            # 1. distinct builds, one at a time: request to zip on disk, then download.
            cold: list[float] = []
            for i in range(10):
                t = time.perf_counter()
                r = await http.post("/", json=request(ktype(custom=f"# bench {i}")))
                name = r.json()["filename"].rsplit("/", 1)[1]
                assert (await http.get(f"/tmp/{name}")).status_code == 200
                cold.append(time.perf_counter() - t)
            report(f"- build, request to zip downloaded (test double): {fmt(cold)}")

            # 2. cache hits, one at a time.
            warm: list[float] = []
            body = request(ktype(custom="# bench 0"))
            for _ in range(200):
                t = time.perf_counter()
                r = await http.post("/", json=body)
                warm.append(time.perf_counter() - t)
                assert r.status_code == 200
            report(f"- cache hit, request to answer: {fmt(warm)}")

            # 3. identical requests arriving together.
            count = ContainerCount(dclient)
            body = request(ktype(custom="# KIISRV_TEST_SLEEP=1 burst"))
            t = time.perf_counter()
            answers = await asyncio.gather(*(http.post("/", json=body) for _ in range(200)))
            took = time.perf_counter() - t
            codes = sorted({a.status_code for a in answers})
            report(
                f"- 200 identical concurrent requests: {took:.2f} s, statuses {codes}, "
                f"containers started {count.close()}"
            )

            # 4. distinct requests arriving together (queue + slots).
            count = ContainerCount(dclient)
            t = time.perf_counter()
            answers = await asyncio.gather(
                *(http.post("/", json=request(ktype(custom=f"# distinct {i}"))) for i in range(30))
            )
            took = time.perf_counter() - t
            codes = sorted({a.status_code for a in answers})
            report(
                f"- 30 distinct concurrent builds: {took:.2f} s, statuses {codes}, "
                f"containers started {count.close()}"
            )

            # 5. a flood of cache hits, 50 at a time.
            sem = asyncio.Semaphore(50)
            hits: list[float] = []

            async def hit() -> int:
                async with sem:
                    t0 = time.perf_counter()
                    r = await http.post("/", json=request(ktype(custom="# bench 1")))
                    hits.append(time.perf_counter() - t0)
                    return r.status_code

            t = time.perf_counter()
            codes_all = await asyncio.gather(*(hit() for _ in range(2000)))
            took = time.perf_counter() - t
            report(
                f"- 2000 cache hits, concurrency 50: {2000 / took:.0f} req/s, {fmt(hits)}, "
                f"statuses {sorted(set(codes_all))}"
            )
            rss_end = rss_kib(server.pid)
            report(
                f"- server RSS: {rss_start / 1024:.1f} MiB at start, {rss_end / 1024:.1f} MiB after"
            )

    finally:
        server.terminate()
        server.wait(30)
        for c in dclient.containers.list(
            all=True, filters={"label": f"io.kiisrv.instance={INSTANCE}"}
        ):
            c.remove(force=True)
    # Read once the server has stopped: it writes what its batch still holds on the way out.
    with sqlite3.connect(data / "data" / "stats.db") as db:
        # A cache hit is counted in its day's row (Requests.n, #23), not a row each.
        rows = db.execute("SELECT COALESCE(SUM(n), 0) FROM Requests").fetchone()[0]
    expected = 10 + 200 + 200 + 30 + 2000
    report(f"- Requests counted: {rows} (expected {expected})")

    if out:
        header = (
            f"# Build path benchmarks\n\nCommand: `.venv/bin/python bench/bench_builds.py "
            f"--out {out}`\nMachine: {os.cpu_count()} cores; date "
            f"{time.strftime('%Y-%m-%d')}; test double controller image "
            f"(no compiler: the container's own cost, not firmware compile time).\n\n"
        )
        out.write_text(header + "\n".join(lines) + "\n")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=None)
    asyncio.run(main(p.parse_args().out))

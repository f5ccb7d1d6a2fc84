"""``/stats``, ``/stats.json`` and ``/status.json`` with millions of rows, before and after.

    .venv/bin/python bench/bench_stats.py --before-src /tmp/kiisrv-db-before/src \\
        [--requests 2000000] [--builds 300000] [--runs 7] [--postgres] [--out FILE]

Fills a ``stats.db`` as the servers before the rollups left it (Requests and Builds
rows: a year of requests, 300 k distinct builds, 50 k clients, stock and custom
layouts), and with ``--postgres`` also a PostgreSQL (started here from Debian's
binaries, as the tests do) with the same Requests rows. Then, for the code of
``--before-src`` (a checkout before the change: ``git worktree add /tmp/kiisrv-db-before
<commit>``) and for this checkout, each on its own copy of the data (the new code
migrates it on start: timed), a real ``kiisrv serve`` is started and timed:

- each page, ``--runs`` times, median and slowest;
- the build path's storage thread while the pages run: ``GET /builds/<hash>`` reads the
  build's row on the thread that admits builds (``save_job``); its latency alone, and
  while two clients load ``/stats`` back to back.

No engine is needed (the pages and the probe never reach it).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.helpers import FIXTURE_LAYOUTS, PostgresServer, free_port  # noqa: E402

PAGES = ("/stats", "/stats.json", "/status.json")
PROBE = "f" * 32  # a Builds row the probe reads

OLD_SCHEMA = """
CREATE TABLE Requests (id INTEGER PRIMARY KEY AUTOINCREMENT, uid INTEGER,
    ip_addr TEXT NOT NULL, os TEXT NOT NULL, web INTEGER NOT NULL, serial INTEGER,
    hash TEXT NOT NULL, board TEXT NOT NULL, variant TEXT NOT NULL, layers INTEGER NOT NULL,
    container TEXT NOT NULL, success INTEGER NOT NULL, request_time INTEGER NOT NULL,
    build_duration INTEGER);
CREATE TABLE Builds (hash TEXT PRIMARY KEY, stem TEXT NOT NULL, version TEXT NOT NULL,
    container TEXT NOT NULL, state TEXT NOT NULL, error TEXT, created_at TEXT NOT NULL,
    started_at TEXT, finished_at TEXT, duration_ms INTEGER);
"""
COLUMNS = (
    "ip_addr, os, web, hash, board, variant, layers, container, success, request_time,"
    " build_duration"
)


def requests_rows(n: int, builds: int) -> Iterator[tuple[object, ...]]:
    rnd = random.Random(15)
    boards = [("KType", "Standard"), ("WhiteFox", "Default"), ("MDErgo1", "Default")]
    boards += [("Infinity_Ergodox", "Default"), ("KType", "Custom"), ("MD1", "Mine")]
    start = datetime.now(UTC) - timedelta(days=360)
    for i in range(n):
        board, variant = boards[rnd.randrange(len(boards))]
        if rnd.random() < 0.05:
            variant = f"custom{rnd.randrange(20000)}"
        when = start + timedelta(seconds=i * 360 * 86400 / n)
        yield (
            *(f"user{rnd.randrange(50000)}", ("Linux", "Windows", "Mac")[i % 3], i % 2),
            *(f"{rnd.randrange(builds):032x}", board, variant, 1 + i % 4),
            *(("controller-057", "controller-050", "controller-054")[i % 3], int(i % 9 > 0)),
            *(when.isoformat(), None if i % 3 == 0 else 1000 + i % 5000),
        )


def builds_rows(n: int) -> Iterator[tuple[object, ...]]:
    start = datetime.now(UTC) - timedelta(days=300)
    for i in range(n):
        when = (start + timedelta(seconds=i * 300 * 86400 / n)).isoformat()
        state = "failed" if i % 13 == 0 else "succeeded"
        h = PROBE if i == n - 1 else f"{i:032x}"
        yield (
            *(h, f"KType-Standard-{h}", "latest", "controller-057", state),
            *(None, when, when, when, 800 + i % 9000),
        )


def fill_sqlite(path: Path, requests: int, builds: int) -> None:
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(OLD_SCHEMA)
        db.executemany(
            f"INSERT INTO Requests ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            requests_rows(requests, builds),
        )
        db.executemany("INSERT INTO Builds VALUES (?,?,?,?,?,?,?,?,?,?)", builds_rows(builds))


def fill_postgres(url: str, requests: int, builds: int) -> None:
    import psycopg

    from kiisrv.store.requests import POSTGRES_SCHEMA

    with psycopg.connect(url, autocommit=True) as conn:
        for statement in POSTGRES_SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)  # type: ignore[call-overload]
        with conn.cursor() as cur, cur.copy(f"COPY Requests ({COLUMNS}) FROM STDIN") as copy:
            for row in requests_rows(requests, builds):
                copy.write_row(row)
        conn.execute("VACUUM ANALYZE Requests")


@contextmanager
def serve(src: Path, data: Path, log: Path, **extra: str) -> Iterator[tuple[str, float]]:
    """``kiisrv serve`` of the code in ``src``; yields its URL and seconds to start."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(src),
        "KIISRV_DATA_DIR": str(data),
        "KIISRV_LAYOUTS_DIR": str(FIXTURE_LAYOUTS),
        "KIISRV_PORT": str(port),
        "KIISRV_HOST": "127.0.0.1",
        "KIISRV_PRUNE_INTERVAL": "0",
        "DOCKER_HOST": "unix:///nonexistent/docker.sock",
        **extra,
    }
    started = time.monotonic()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kiisrv", "serve"], env=env, stdout=out, stderr=out
        )
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code in (200, 503):
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                raise SystemExit(f"server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield base, time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait(timeout=60)


_clients = threading.local()


def timed(url: str) -> float:
    """Milliseconds of one GET, on this thread's kept-alive connection."""
    client = getattr(_clients, "client", None)
    if client is None:
        client = _clients.client = httpx.Client(timeout=300)
    started = time.perf_counter()
    answer = client.get(url)
    took = (time.perf_counter() - started) * 1000
    assert answer.status_code == 200, (url, answer.status_code, answer.text[:300])
    return took


def measure(base: str, runs: int) -> dict[str, object]:
    figures: dict[str, object] = {}
    for page in PAGES:
        timed(base + page)  # warm: caches, the first connection
        times = [timed(base + page) for _ in range(runs)]
        figures[page] = (statistics.median(times), max(times))
    probe = base + f"/builds/{PROBE}"
    alone = [timed(probe) for _ in range(20)]
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            timed(base + "/stats")

    loaders = [threading.Thread(target=load) for _ in range(2)]
    for t in loaders:
        t.start()
    time.sleep(0.5)
    busy = []
    deadline = time.monotonic() + max(5.0, 3 * statistics.median(alone) / 1000)
    while time.monotonic() < deadline or len(busy) < 20:
        busy.append(timed(probe))
        time.sleep(0.05)
    stop.set()
    for t in loaders:
        t.join()
    figures["probe"] = (statistics.median(alone), max(alone), statistics.median(busy), max(busy))
    return figures


def table(title: str, before: dict[str, object], after: dict[str, object]) -> str:
    lines = [f"### {title}", "", "| | before | after |", "|---|---|---|"]
    lines.append(f"| start (s) | {before['start']:.1f} | {after['start']:.1f} |")
    for page in PAGES:
        (bm, bx), (am, ax) = before[page], after[page]  # type: ignore[misc]
        lines.append(
            f"| `GET {page}` ms, median (slowest) | {bm:,.1f} ({bx:,.1f}) | {am:,.1f} ({ax:,.1f}) |"
        )
    b, a = before["probe"], after["probe"]
    lines.append(
        f"| build path probe alone, ms median (slowest) | {b[0]:.1f} ({b[1]:.1f}) |"  # type: ignore[index]
        f" {a[0]:.1f} ({a[1]:.1f}) |"  # type: ignore[index]
    )
    lines.append(
        f"| build path probe while `/stats` runs, ms median (slowest) | {b[2]:,.1f} ({b[3]:,.1f}) |"  # type: ignore[index]
        f" {a[2]:,.1f} ({a[3]:,.1f}) |"  # type: ignore[index]
    )
    return "\n".join(lines) + "\n"


def run(
    label: str, src: Path, data: Path, work: Path, runs: int, **extra: str
) -> dict[str, object]:
    with serve(src, data, work / f"{label}.log", **extra) as (base, took):
        figures = measure(base, runs)
        figures["start"] = took
        print(label, figures, flush=True)
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before-src", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=2_000_000)
    parser.add_argument("--builds", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kiisrv-bench-stats-"))
    try:
        filled = work / "filled"
        filled.mkdir()
        t = time.monotonic()
        fill_sqlite(filled / "stats.db", args.requests, args.builds)
        print(f"filled SQLite in {time.monotonic() - t:.0f} s", flush=True)
        out = [
            f"{args.requests:,} Requests rows, {args.builds:,} Builds rows; `--runs {args.runs}`.\n"
        ]
        copies = {label: work / label for label in ("before", "after")}
        for where in copies.values():
            shutil.copytree(filled, where)
        results = {
            label: run(
                label,
                args.before_src if label == "before" else REPO / "src",
                where,
                work,
                args.runs,
            )
            for label, where in copies.items()
        }
        out.append(table("SQLite (stats.db)", results["before"], results["after"]))
        if args.postgres:
            pg = PostgresServer()
            try:
                pg.start()
                url = pg.create_database("bench_before")
                t = time.monotonic()
                fill_postgres(url, args.requests, args.builds)
                print(f"filled PostgreSQL in {time.monotonic() - t:.0f} s", flush=True)
                import psycopg

                with psycopg.connect(pg.url(), autocommit=True) as conn:
                    conn.execute("CREATE DATABASE bench_after TEMPLATE bench_before")
                results = {}
                for label in ("before", "after"):
                    where = work / f"pg-{label}"
                    shutil.copytree(filled, where)
                    src = args.before_src if label == "before" else REPO / "src"
                    results[label] = run(
                        f"pg-{label}",
                        src,
                        where,
                        work,
                        args.runs,
                        KIISRV_STATS_URL=pg.url(f"bench_{label}"),
                    )
                out.append(
                    table("PostgreSQL (KIISRV_STATS_URL)", results["before"], results["after"])
                )
            finally:
                pg.cleanup()
        text = "\n".join(out)
        print(text)
        if args.out:
            args.out.write_text(text)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Cache hits per second against the same-stack floor, side by side, with ``hey``.

    .venv/bin/python bench/bench_cache_hits.py [--seconds 6] [--concurrency 64] [--rounds 2]
        [--before-src OTHER_CHECKOUT/src]

Starts ``kiisrv serve`` (fresh data folder, the reference layouts, the test double
controller image) and builds the 46 KB KType-Standard request once, so every request
after that is a real cache hit on a built zip. Then, alternating, ``hey`` POSTs the
same body to kiisrv and to ``floor_app.py`` (FastAPI + uvicorn, a handler that only
parses the body). With ``--before-src``, a second ``kiisrv serve`` runs that checkout's
code (``git worktree add``) on the same image and takes its turn in every round, so a
restructuring is compared with what it replaced in one run. Needs ``hey`` (apt-get
install hey), a Docker daemon and the test image (``make test`` builds it; its name
prefix is KIISRV_TEST_IMAGE_PREFIX).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.helpers import CONFORMANCE, free_port, wait_for_http  # noqa: E402

IMAGE_PREFIX = os.environ.get("KIISRV_TEST_IMAGE_PREFIX", "kiisrv-testdouble-")


def hey(url: str, body: Path, seconds: int, concurrency: int) -> tuple[float, float]:
    """Requests per second and median latency (ms) of one ``hey`` run."""
    out = subprocess.run(
        [
            "hey",
            "-z",
            f"{seconds}s",
            "-c",
            str(concurrency),
            "-m",
            "POST",
            "-T",
            "application/json",
            "-D",
            str(body),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    statuses = re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)
    assert statuses and all(code == "200" for code, _ in statuses), out
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    median = float(re.search(r"50% in ([\d.]+) secs", out).group(1)) * 1000  # type: ignore[union-attr]
    return rps, median


def start(cmd: list[str], env: dict[str, str], log: Path, url: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if not wait_for_http(url, attempts=300):
        proc.terminate()
        raise SystemExit(f"{cmd} did not start:\n{log.read_text()}")
    return proc


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--before-src", type=Path, default=None)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="kiisrv-bench-"))
    layouts = tmp / "layouts"
    shutil.copytree(CONFORMANCE / "layouts", layouts)
    config = json.loads((layouts / "KType-Standard.json").read_bytes())
    body = tmp / "body.json"
    body.write_text(json.dumps({"config": config, "env": "latest"}))
    kport, fport, bport = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "KIISRV_HOST": "127.0.0.1",
        "KIISRV_PORT": str(kport),
        "KIISRV_DATA_DIR": str(tmp / "data"),
        "KIISRV_LAYOUTS_DIR": str(layouts),
        "KIISRV_IMAGE_PREFIX": IMAGE_PREFIX,
        "KIISRV_RATE_LIMIT": "0",  # one client sends every request
        # ... as many users would: no per-client connection cap (#23)
        "KIISRV_MAX_CLIENT_CONNECTIONS": "100000",
        "KIISRV_INSTANCE": "kiisrvbench-cache",
    }
    servers = {"kiisrv": kport}
    procs = [
        start(
            [sys.executable, "-m", "kiisrv", "serve"],
            env,
            tmp / "kiisrv.log",
            f"http://127.0.0.1:{kport}/healthz",
        )
    ]
    try:
        if args.before_src:
            servers = {"before": bport, "kiisrv": kport}
            before_env = {
                **env,
                "KIISRV_PORT": str(bport),
                "KIISRV_DATA_DIR": str(tmp / "data-before"),
                "KIISRV_INSTANCE": "kiisrvbench-cache-before",
                "PYTHONPATH": str(args.before_src),
            }
            procs.append(
                start(
                    [sys.executable, "-m", "kiisrv", "serve"],
                    before_env,
                    tmp / "before.log",
                    f"http://127.0.0.1:{bport}/healthz",
                )
            )
        for name, port in servers.items():
            first = httpx.post(f"http://127.0.0.1:{port}/", content=body.read_bytes(), timeout=300)
            assert first.status_code == 200, first.text
            print(f"{name} built once: {first.json()['filename']} ({body.stat().st_size} bytes)")
        floor_app = REPO / "bench" / "floor_app.py"
        procs.append(
            start(
                [sys.executable, str(floor_app), str(fport)],
                env,
                tmp / "floor.log",
                f"http://127.0.0.1:{fport}/docs",
            )
        )
        for _ in range(args.rounds):
            f = hey(f"http://127.0.0.1:{fport}/", body, args.seconds, args.concurrency)
            cells = [f"floor {f[0]:.0f} req/s (median {f[1]:.1f} ms)"]
            for name, port in servers.items():
                k = hey(f"http://127.0.0.1:{port}/", body, args.seconds, args.concurrency)
                cells.append(
                    f"{name} cache hit {k[0]:.0f} req/s (median {k[1]:.1f} ms, "
                    f"ratio {k[0] / f[0]:.2f})"
                )
            print(" | ".join(cells), flush=True)
        stats = httpx.get(f"http://127.0.0.1:{kport}/stats", timeout=60).text
        print(stats.splitlines()[0])
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    time.sleep(0)
    raise SystemExit(main())

"""`kiisrv verify` on the zip of every layout, at latest and lts, with real images.

    .venv/bin/python bench/bench_verify.py --layouts ../shared/conformance/layouts \
        [--image-prefix kiisrv-] [--image-tag latest] [--out bench/results-verify.md]

Starts ``kiisrv serve`` on those controller images (a fresh data folder), asks it for
every layout at each version as the Configurator does, downloads each zip and runs
``kiisrv verify ZIP --server URL`` on it, one after another: the signature against the
key the server publishes, every file against the manifest, and the firmware built again
from nothing (``KIISRV_WARM=0``) in the image the manifest names. A layout the server
refuses (400) is counted and not verified. Exit status 1 when any zip is not verified.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.helpers import free_port, wait_for_http  # noqa: E402

ENVS = ("latest", "lts")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layouts", type=Path, required=True)
    ap.add_argument("--image-prefix", default="kiisrv-")
    ap.add_argument("--image-tag", default="latest")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="kiisrv-bench-verify-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "KIISRV_HOST": "127.0.0.1",
        "KIISRV_PORT": str(port),
        "KIISRV_DATA_DIR": str(tmp / "data"),
        "KIISRV_LAYOUTS_DIR": str(args.layouts),
        "KIISRV_IMAGE_PREFIX": args.image_prefix,
        "KIISRV_IMAGE_TAG": args.image_tag,
        "KIISRV_RATE_LIMIT": "0",
        "KIISRV_INSTANCE": "kiisrvbenchverify",
    }
    with (tmp / "server.log").open("ab") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "kiisrv", "serve"], env=env, stdout=log, stderr=log
        )
    rows: list[str] = []
    times: list[float] = []
    refused = 0
    bad: list[str] = []
    try:
        if not wait_for_http(f"{base}/healthz", attempts=300):
            raise SystemExit((tmp / "server.log").read_text())
        with httpx.Client(base_url=base, timeout=900) as http:
            for layout in sorted(args.layouts.glob("*.json")):
                config = json.loads(layout.read_bytes())
                for version in ENVS:
                    r = http.post("/", json={"config": config, "env": version})
                    case = f"{layout.stem} @ {version}"
                    if r.status_code == 400:
                        refused += 1
                        continue
                    if r.status_code != 200:
                        bad.append(f"{case}: build answered {r.status_code}")
                        continue
                    name = r.json()["filename"].rsplit("/", 1)[1]
                    zip_path = tmp / name
                    zip_path.write_bytes(http.get(f"/tmp/{name}").content)
                    started = time.perf_counter()
                    done = subprocess.run(
                        [sys.executable, "-m", "kiisrv", "verify", str(zip_path), "--server", base],
                        capture_output=True,
                        text=True,
                        env={k: v for k, v in env.items() if not k.startswith("KIISRV_")},
                    )
                    took = time.perf_counter() - started
                    verdict = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
                    times.append(took)
                    line = f"- {case}: {verdict or done.stderr[-300:]} ({took:.1f} s)"
                    print(line, flush=True)
                    rows.append(line)
                    if done.returncode != 0:
                        bad.append(line)
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)

    verified = len(times) - sum(1 for b in bad if "build answered" not in b)
    summary = (
        f"{verified} of {len(times)} zips verified, {refused} refused before any build; "
        f"time per verify: median {statistics.median(times):.1f} s, "
        f"min {min(times):.1f} s, max {max(times):.1f} s"
        if times
        else "no zip built"
    )
    print(summary)
    if args.out:
        args.out.write_text(
            "# `kiisrv verify` on every layout's zip\n\n"
            f"Command: `.venv/bin/python bench/bench_verify.py --layouts {args.layouts} "
            f"--image-prefix {args.image_prefix} --image-tag {args.image_tag} "
            f"--out {args.out}`\n"
            f"Machine: {os.cpu_count()} cores; date {time.strftime('%Y-%m-%d')}. Each zip "
            "as the server served it, verified one after another with `--server` (the key "
            "the server publishes), the firmware rebuilt from nothing in the manifest's "
            "image.\n\n"
            f"**{summary}**\n\n" + "\n".join(rows + [f"- NOT VERIFIED: {b}" for b in bad]) + "\n"
        )
    return 1 if bad or not times else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Real firmware builds over real HTTP: request to zip, before and after warm trees.

    .venv/bin/python bench/bench_real.py --layouts ../shared/conformance/layouts \\
        [--before kiisrv-controller-057:cold] [--after kiisrv-controller-057:latest] \\
        [--out bench/results-real.md]
    .venv/bin/python bench/bench_real.py --families --layouts ../shared/conformance/layouts \\
        --before <older image> --after kiisrv-controller-057:latest --out bench/results-families.md

Needs real controller images (docker/controller/Dockerfile; not in CI, which cannot
reach GitHub). ``--before`` is an image built without warm trees (``--build-arg
WARM_SCRIPTS=`` gives one, or an image of an older kiisrv) run with the old default of a
1-CPU quota; ``--after`` the image under test with the new default (no quota, CPU
shares). Each figure is a layout never built before: every request changes one key of
the layout, so no build is a cache hit. Changing a key to one the layout already uses
keeps the generated kll_defs.h (counts of distinct results) as the warm tree has it, so
only the objects that include the keymap are compiled; n keys more sending the same key
changes it, and every object that includes it is compiled (the worst case). Both
servers run side by side in one run, taking turns, so the machine's drift hits both.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import io
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import docker
import httpx

KEYS = ["A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M", "N", "O", "P"]


def variant(doc: dict[str, Any], i: int) -> dict[str, Any]:
    """The layout with one ordinary key changed: a build nobody asked for before."""
    out = copy.deepcopy(doc)
    key = out["matrix"][10 + i // len(KEYS)]
    key["layers"]["0"] = {**key["layers"]["0"], "key": KEYS[i % len(KEYS)]}
    out["header"]["Author"] = f"bench {time.time_ns()}"
    return out


def fewer_kinds(doc: dict[str, Any], n: int) -> dict[str, Any]:
    """The layout with n more of its keys all sending A: n kinds of result fewer, so a
    kll_defs.h (counts of distinct results) that no warm tree has: the worst case."""
    out = copy.deepcopy(doc)
    for j in range(n):
        key = out["matrix"][20 + j]
        key["layers"]["0"] = {**key["layers"]["0"], "key": "A"}
    out["header"]["Author"] = f"bench {time.time_ns()}"
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def server(
    image: str,
    layouts: Path,
    cpus: str,
    name: str,
    max_builds: int = 10,
    src: Path | None = None,
    proxy: bool = False,
    log: Path | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """`kiisrv serve` on the images of ``image``'s prefix and tag, in a data folder of its
    own; its containers (and an older kiisrv's ccache volumes) are removed afterwards.

    ``src``: the ``src`` folder of another kiisrv checkout (``git worktree add``) to run
    instead of this one, for a before/after of server code and image together.
    ``proxy``: the server reaches the engine through a `kiisrv socket-proxy` of the same
    code, as `compose.prod.yaml` runs it. ``log``: where the server's output goes.
    """
    repo, _, tag = image.partition(":")
    prefix = repo.rsplit("controller-", 1)[0]
    data = Path(tempfile.mkdtemp(prefix=f"kiisrv-bench-{name}-"))
    port = _free_port()
    env = {
        **os.environ,
        "KIISRV_HOST": "127.0.0.1",
        "KIISRV_PORT": str(port),
        "KIISRV_DATA_DIR": str(data),
        "KIISRV_LAYOUTS_DIR": str(layouts),
        "KIISRV_IMAGE_PREFIX": prefix,
        "KIISRV_IMAGE_TAG": tag or "latest",
        "KIISRV_RATE_LIMIT": "0",  # one client sends every request
        "KIISRV_INSTANCE": f"kiisrvbench{name}",
        "KIISRV_CCACHE_VOLUME": f"kiisrvbench{name}-ccache",  # read by an older kiisrv only
        "KIISRV_BUILD_CPUS": cpus,
        "KIISRV_MAX_BUILDS": str(max_builds),
        # The bench's "new client" requests name their client in X-Forwarded-For.
        "KIISRV_TRUSTED_PROXIES": "127.0.0.1",
        **({"PYTHONPATH": str(src)} if src else {}),
    }
    out = log.open("ab") if log else subprocess.DEVNULL
    helpers: list[subprocess.Popen[bytes]] = []
    if proxy:
        proxy_port = _free_port()
        helpers.append(
            subprocess.Popen(
                [sys.executable, "-m", "kiisrv", "socket-proxy", "--port", str(proxy_port)],
                env={**env, "DOCKER_HOST": "unix:///var/run/docker.sock"},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        )
        env["DOCKER_HOST"] = f"tcp://127.0.0.1:{proxy_port}"
        time.sleep(2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiisrv", "serve"],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    helpers.append(proc)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=900) as http:
            for _ in range(100):
                try:
                    await http.get("/healthz")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            yield http
    finally:
        for p in reversed(helpers):
            p.terminate()
            p.wait(30)
        client = docker.DockerClient(version="auto")
        for c in client.containers.list(
            all=True, filters={"label": f"io.kiisrv.instance=kiisrvbench{name}"}
        ):
            c.remove(force=True)
        for v in client.volumes.list(filters={"name": f"kiisrvbench{name}-ccache"}):
            with suppress(docker.errors.APIError):
                v.remove(force=True)


async def build(
    http: httpx.AsyncClient, doc: dict[str, Any], client: str | None = None
) -> tuple[float, str]:
    """Seconds from request to zip downloaded, and the build log; ``client``: the
    address the request comes from (behind the trusted proxy 127.0.0.1)."""
    t = time.perf_counter()
    headers = {"X-Forwarded-For": client} if client else {}
    r = await http.post("/", json={"config": doc, "env": "latest"}, headers=headers)
    assert r.status_code == 200, r.text[-2000:]
    name = r.json()["filename"].rsplit("/", 1)[1]
    z = await http.get(f"/tmp/{name}")
    took = time.perf_counter() - t
    with zipfile.ZipFile(io.BytesIO(z.content)) as zf:
        log = zf.read("log/build.log").decode("utf-8", "replace")
    return took, log


def med(values: list[float]) -> str:
    return (
        f"median {statistics.median(values):.2f} s "
        f"(min {min(values):.2f}, max {max(values):.2f}, n={len(values)})"
    )


# One stock layout per keyboard family (issue #13: the targets stand for every family,
# variants included): a one-key change of each, request to zip.
FAMILIES = {
    "KType": "KType-Standard",
    "Kira": "Kira-Standard",
    "GeminiDuskDawn": "GeminiDuskDawn-Standard",
    "MD1": "MD1-Hacker",
    "MD1.1": "MD1.1-Standard",
    "MDErgo1": "MDErgo1-Default",
    "WhiteFox": "WhiteFox-VanillaBase",
    "WhiteFox (TrueFox)": "WhiteFox-TheTrueFoxBase",
}


def _server_phases(log: Path, since: int) -> str:
    """The last build's server-side phases (runner.Phases) in a server log, from byte
    ``since``: "inputs 2 ms, create+start 180 ms, ...", or "" (an older kiisrv)."""
    text = log.read_bytes()[since:].decode("utf-8", "replace")
    found = re.findall(r"build [0-9a-f]{12}: (inputs .*)", text)
    return found[-1] if found else ""


async def families(args: argparse.Namespace) -> None:
    """Per family, both servers side by side (taking turns), each with its own image and
    code behind its own socket proxy: a returning client's one-key edits and a new
    client's first edit, request to zip downloaded; and where the time went."""
    lines = [
        "| family (layout) | before: returning | before: new client | after: returning "
        "| after: new client | after: phases (server; container) |",
        "|---|---|---|---|---|---|",
    ]
    logs = {n: Path(tempfile.mkdtemp(prefix="kiisrv-bench-log-")) / f"{n}.log" for n in ("b", "a")}
    async with (
        server(
            args.before, args.layouts, "0", "before", src=args.before_src, proxy=True, log=logs["b"]
        ) as before,
        server(args.after, args.layouts, "0", "after", proxy=True, log=logs["a"]) as after,
    ):
        servers = {"before": before, "after": after}
        for f, (family, name) in enumerate(FAMILIES.items()):
            doc = json.loads((args.layouts / f"{name}.json").read_bytes())
            returning = f"198.51.{f}.250"
            # Warm-up: the stock layout (what `kiisrv canary` or any user downloading it
            # builds), then the returning client's first edit.
            for http in servers.values():
                await build(http, doc)
                await build(http, variant(doc, 0), returning)
            times: dict[str, list[float]] = {}
            how: list[str] = []
            phases: list[str] = []
            server_side = ""
            for i in range(1, args.runs + 1):
                for label, http in servers.items():
                    for who, client in (("returning", returning), ("new", f"198.51.{f}.{i}")):
                        mark = logs["a"].stat().st_size if label == "after" else 0
                        edit = variant(doc, i + 100 * (who == "new"))
                        took, log = await build(http, edit, client)
                        times.setdefault(f"{label} {who}", []).append(took)
                        if label == "after" and who == "new":
                            how += re.findall(r"@@@@@ Build=(\w+)", log)
                            phases = re.findall(r"@@@@@ (?:Prepared|Phases).*", log)
                            server_side = _server_phases(logs["a"], mark) or server_side

            def cell(key: str, bold: bool = False, times: dict[str, list[float]] = times) -> str:
                v = times[key]
                m = f"{statistics.median(v):.2f} s"
                return f"{'**' + m + '**' if bold else m} ({min(v):.2f}-{max(v):.2f})"

            line = (
                f"| {family} ({name}) | {cell('before returning')} | {cell('before new')} "
                f"| {cell('after returning', True)} | {cell('after new', True)} "
                f"| {server_side}; {', '.join(sorted(set(how)))} "
                f"{'; '.join(p.removeprefix('@@@@@ ') for p in phases)} |"
            )
            print(line, flush=True)
            lines.append(line)
    if args.out:
        header = (
            "# Real firmware builds per keyboard family\n\n"
            f"Command: `.venv/bin/python bench/bench_real.py --families --layouts {args.layouts} "
            f"--before {args.before} --after {args.after} --runs {args.runs} --out {args.out}"
            f"{f' --before-src {args.before_src}' if args.before_src else ''}`\n"
            f"Machine: {os.cpu_count()} cores; load average before the run "
            f"{os.getloadavg()[0]:.1f}; date {time.strftime('%Y-%m-%d')}. Medians of "
            f"{args.runs} one-key changes per column (min-max in brackets), request to zip "
            "downloaded, both servers taking turns, each behind its own socket proxy, no "
            "CPU quota. A returning client's edits come from one address (its second and "
            "later edits); a new client's first edit from an address never seen.\n\n"
        )
        args.out.write_text(header + "\n".join(lines) + "\n")


async def main(args: argparse.Namespace) -> None:
    if args.families:
        await families(args)
        return
    ktype = json.loads((args.layouts / "KType-Standard.json").read_bytes())
    ergo = json.loads((args.layouts / "MDErgo1-Default.json").read_bytes())
    lines: list[str] = []

    def report(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    async with (
        server(args.before, args.layouts, "1", "before") as before,
        server(args.after, args.layouts, "0", "after") as after,
    ):
        # Warm-up: the first build of each server (an older kiisrv fills its ccache).
        await build(before, variant(ktype, 0))
        await build(after, variant(ktype, 0))
        times: dict[str, list[float]] = {"before": [], "after": []}
        phases: list[str] = []
        for i in range(1, args.runs + 1):
            for label, http in (("before", before), ("after", after)):
                took, log = await build(http, variant(ktype, i))
                times[label].append(took)
                if label == "after":
                    phases += re.findall(r"@@@@@ (?:Prepared|Phases).*", log)
        b, a = times["before"], times["after"]
        report(f"- KType-Standard, request to zip, before (1-CPU quota, cold): {med(b)}")
        report(f"- KType-Standard, request to zip, after (warm tree, CPU shares): {med(a)}")
        report(f"- ratio after/before: {statistics.median(a) / statistics.median(b):.2f}")
        report("- phases inside the container (after), last run: " + "; ".join(phases[-2:]))

        misses: list[float] = []
        for n in range(1, args.runs + 1):
            took, log = await build(after, fewer_kinds(ktype, n))
            misses.append(took)
            phases += re.findall(r"@@@@@ (?:Prepared|Phases).*", log)
        report(f"- KType-Standard, n kinds of key fewer (kll_defs.h never seen): {med(misses)}")
        report("- phases inside the container, last of those: " + "; ".join(phases[-2:]))

        ergo_times = [(await build(after, variant(ergo, i)))[0] for i in range(1, args.runs + 1)]
        report(f"- MDErgo1-Default (split, both halves), after: {med(ergo_times)}")

        docs = [variant(ktype, 100 + i) for i in range(10)]
        t = time.perf_counter()
        for d in docs:
            await build(after, d)
        sequential = time.perf_counter() - t
        docs = [variant(ktype, 200 + i) for i in range(10)]
        t = time.perf_counter()
        results = await asyncio.gather(*(build(after, d) for d in docs))
        together = time.perf_counter() - t
        report(
            f"- 10 distinct KType builds, after: one after another {sequential:.1f} s; "
            f"all at once {together:.1f} s ({len(results)} succeeded)"
        )

    if args.out:
        header = (
            "# Real firmware build benchmarks\n\n"
            f"Command: `.venv/bin/python bench/bench_real.py --layouts {args.layouts} "
            f"--before {args.before} --after {args.after} --runs {args.runs} --out {args.out}`\n"
            f"Machine: {os.cpu_count()} cores; date {time.strftime('%Y-%m-%d')}.\n\n"
        )
        args.out.write_text(header + "\n".join(lines) + "\n")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--layouts", type=Path, required=True)
    p.add_argument("--before", default="kiisrv-controller-057:cold")
    p.add_argument("--after", default="kiisrv-controller-057:latest")
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--families", action="store_true", help="one-key change per keyboard family")
    p.add_argument(
        "--before-src",
        type=Path,
        default=None,
        help="the src folder of an older checkout (git worktree) to serve --before with",
    )
    asyncio.run(main(p.parse_args()))

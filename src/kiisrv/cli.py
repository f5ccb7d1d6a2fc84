"""Command line: parses options, builds Settings, starts things. No logic lives here."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from kiisrv import __version__
from kiisrv.core import Kiisrv
from kiisrv.errors import KiisrvError
from kiisrv.recipe import kll, layouts
from kiisrv.recipe.layout import parse_layout
from kiisrv.recipe.layouts import LayoutStore
from kiisrv.settings import Settings


def _log_config() -> dict[str, Any]:
    """uvicorn's logging, with access lines that leave the client's address out.

    Its access log printed every client address into the container logs, while
    docs/deployment.md says none is kept (#14.5); statistics keep a keyed hash instead.
    """
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["access"]["fmt"] = '%(levelprefix)s "%(request_line)s" %(status_code)s'
    return config


# Idle keep-alive connections stay open this long. Whoever closes an idle connection must
# be the side that would not reuse it: clients and proxies in front (httpx 5 s, nginx
# upstream 60 s) expire theirs first. At uvicorn's 5 s a pooled request could arrive as
# the server closed and meet a dead socket.
KEEP_ALIVE_SECONDS = 75


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from kiisrv.web.app import create_app
    from kiisrv.web.httpguard import Limits, guarded_protocol

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = settings.replace(**overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    limits = Limits(
        header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        body_min_rate=settings.body_min_rate,
        max_connections=settings.max_connections,
        max_client_connections=settings.max_client_connections,
        trusted=settings.proxies,
        ipv6_prefix=settings.rate_limit_ipv6_prefix,
    )
    # X-Forwarded-For is read by kiisrv itself, from KIISRV_TRUSTED_PROXIES only.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        http=guarded_protocol(limits),
        log_level="info",
        log_config=_log_config(),
        proxy_headers=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
    return 0


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    """Until SIGTERM or SIGINT; builds in flight are stopped and go back to the queue."""
    import asyncio
    import contextlib
    import signal

    from kiisrv import assembly
    from kiisrv.cluster.worker import BuildWorker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    async def main() -> None:
        worker = BuildWorker(settings, assembly.worker(settings))
        task = asyncio.create_task(worker.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
    return 0


def _socket_proxy(args: argparse.Namespace, settings: Settings) -> int:
    from kiisrv.proxy import server as socketproxy

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    socketproxy.run(settings, args.host, args.port, keep_alive=KEEP_ALIVE_SECONDS)
    return 0


def _kll(args: argparse.Namespace, settings: Settings) -> int:
    store = LayoutStore(args.layouts_dir or settings.layouts_dir)
    layout = parse_layout(json.loads(Path(args.layout).read_bytes()))
    lts = args.channel == "lts"
    base = store.load_base(kll.base_file_names(layout, lts))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for f in kll.generate(layout, base, lts):
        (out / f.name).write_text(f.content, encoding="utf-8")
        print(out / f.name)
    return 0


def _layouts_fetch(args: argparse.Namespace, settings: Settings) -> int:
    into = args.into or settings.layouts_dir
    count = layouts.fetch(args.source, args.rev, into)
    print(f"{count} layout files in {into}")
    return 0


def _prune(args: argparse.Namespace, settings: Settings) -> int:
    server = Kiisrv(
        settings.replace(
            retention_days=settings.retention_days
            if args.max_age_days is None
            else args.max_age_days,
            retention_bytes=settings.retention_bytes if args.max_bytes is None else args.max_bytes,
        )
    )
    result = server.prune(dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(
        f"{verb} {result.removed} builds ({result.freed_bytes} bytes); "
        f"kept {result.kept} ({result.kept_bytes} bytes)"
    )
    return 0


def _build(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console

    from kiisrv.tools import oneshot

    return oneshot.run(settings, Path(args.layout), args.env, Path(args.output), Console())


def _verify(args: argparse.Namespace, settings: Settings) -> int:
    from kiisrv.tools import verify

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    verdict = verify.run(
        settings,
        Path(args.zip),
        key_file=Path(args.key) if args.key else None,
        server_url=args.server,
        image=args.image,
        progress=progress,
    )
    print(verdict.text)
    return verdict.status


def _canary(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio
    import tempfile

    from kiisrv.tools import canary

    layouts_dir = args.layouts_dir or settings.layouts_dir
    report_path = args.output or settings.data_dir / canary.REPORT_NAME

    async def run(data_dir: Path) -> canary.Report:
        # Its own data folder and instance name: a server running beside it keeps its
        # builds, containers and statistics to itself.
        server = Kiisrv(
            settings.replace(
                data_dir=data_dir,
                layouts_dir=layouts_dir,
                instance=f"{settings.instance}-canary",
                prune_interval=0,
            )
        )
        await server.start()
        try:
            offered = await server.catalog.available()
            versions = args.version or list(offered)
            info = {
                name: {
                    "image": a.image,
                    "image_id": a.image_id,
                    "channel": a.version.channel,
                    "tag": a.version.git_tag,
                    "release": a.info.as_json() if a.info else None,
                }
                for name, a in offered.items()
                if name in versions
            }

            async def submit(body: dict[str, object]) -> canary.Answer:
                outcome = await server.build(body)
                return canary.Answer(
                    outcome.success, outcome.cached, outcome.filename, outcome.job.error
                )

            def progress(r: canary.CaseResult) -> None:
                detail = f"{r.seconds:.1f} s" if r.outcome == "built" else r.error
                if r.identical is True:
                    detail = f"{detail}, identical to a build from nothing"
                elif r.identical is False:
                    why = ", ".join(r.differing) or r.reference_error
                    detail = f"{detail}, DIFFERS from a build from nothing: {why}"
                print(f"{r.outcome:8} {r.layout} @ {r.version}: {detail}", flush=True)

            return await canary.run(
                submit,
                server.settings.builds_dir,
                canary.layout_files(layouts_dir),
                versions,
                info,
                progress,
                verify=canary.Verifier(server) if args.verify else None,
            )
        finally:
            await server.stop()

    with tempfile.TemporaryDirectory(prefix="kiisrv-canary-") as tmp:
        report = asyncio.run(run(Path(tmp)))
    json_path, md_path = canary.write(report, report_path)
    s = report.summary()
    verified = (
        f" ({s.get('identical', 0)} identical to a build from nothing, "
        f"{s.get('differing', 0)} differ)"
        if args.verify
        else ""
    )
    print(
        f"{s['built']} built{verified}, {s['refused']} refused, {s['failed']} failed: "
        f"{json_path}, {md_path}"
    )
    return 1 if s["failed"] or s.get("differing") else 0


def _warm_inputs(args: argparse.Namespace, settings: Settings) -> int:
    from kiisrv.tools import warmlist

    inputs = warmlist.stock_inputs(
        args.layouts_dir or settings.layouts_dir, warmlist.versions_of(args.tag)
    )
    print(f"{warmlist.write_inputs(inputs, args.output)} stock layouts in {args.output}")
    return 0


def _warm_list(args: argparse.Namespace, settings: Settings) -> int:
    from kiisrv.tools import warmlist

    text = warmlist.render(warmlist.configurations())
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kiisrv", description="Input Club firmware build server")
    p.add_argument("--version", action="version", version=f"kiisrv {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP server (settings: KIISRV_* variables)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.set_defaults(func=_serve)

    work = sub.add_parser(
        "worker", help="run builds from the queue (KIISRV_QUEUE_URL) on this host's engine"
    )
    work.set_defaults(func=_worker)

    proxy = sub.add_parser(
        "socket-proxy",
        help="hold the Docker socket (DOCKER_HOST) and pass only the calls builds need",
    )
    proxy.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    proxy.add_argument("--port", type=int, default=2375, help="port (default: 2375)")
    proxy.set_defaults(func=_socket_proxy)

    gen = sub.add_parser("kll", help="write the .kll files of one layout, without a build")
    gen.add_argument("layout", help="layout JSON file, as the Configurator sends it")
    gen.add_argument("--channel", choices=["latest", "lts"], default="latest")
    gen.add_argument("-o", "--output", required=True, help="folder for the .kll files")
    gen.add_argument(
        "--layouts-dir", type=Path, default=None, help="base layouts (default: KIISRV_LAYOUTS_DIR)"
    )
    gen.set_defaults(func=_kll)

    pr = sub.add_parser("prune", help="remove old build outputs now (KIISRV_RETENTION_*)")
    pr.add_argument("--max-age-days", type=float, default=None)
    pr.add_argument("--max-bytes", type=int, default=None)
    pr.add_argument("--dry-run", action="store_true", help="only say what would go")
    pr.set_defaults(func=_prune)

    one = sub.add_parser("build", help="build one layout's firmware here, without a server")
    one.add_argument("layout", help="layout JSON file, as the Configurator sends it")
    one.add_argument("--env", default="latest", help="version to build with (default: latest)")
    one.add_argument("-o", "--output", default=".", help="folder for the zip (default: here)")
    one.set_defaults(func=_build)

    ver = sub.add_parser(
        "verify",
        help="check a zip: its signature, its files, and its firmware built again from nothing",
    )
    ver.add_argument("zip", help="a zip kiisrv built")
    whose = ver.add_mutually_exclusive_group()
    whose.add_argument("--key", help="the public key file (GET /signing-key of its server)")
    whose.add_argument("--server", help="the server that built it: its /signing-key now")
    ver.add_argument("--image", help="build in this image, not the one the manifest names")
    ver.set_defaults(func=_verify)

    can = sub.add_parser(
        "canary", help="build every layout against every version; write the compatibility report"
    )
    can.add_argument(
        "--version",
        action="append",
        default=None,
        help="a version to build (repeat; default: every offered version)",
    )
    can.add_argument(
        "--layouts-dir", type=Path, default=None, help="layouts (default: KIISRV_LAYOUTS_DIR)"
    )
    can.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="report JSON; the Markdown table goes beside it (default: <data dir>/compat.json)",
    )
    can.add_argument(
        "--verify",
        action="store_true",
        help="also build each built case from nothing and compare every .dfu.bin byte for "
        "byte; exit 1 when one differs",
    )
    can.set_defaults(func=_canary)

    wl = sub.add_parser(
        "warm-list",
        help="the generic warm trees of the controller images (docker/controller/warm.list)",
    )
    wl.add_argument("-o", "--output", default=None, help="file to write (default: stdout)")
    wl.set_defaults(func=_warm_list)

    wi = sub.add_parser(
        "warm-inputs",
        help="the stock layouts as builds see them, for the controller image's warm trees",
    )
    wi.add_argument(
        "--layouts-dir", type=Path, default=None, help="layouts (default: KIISRV_LAYOUTS_DIR)"
    )
    wi.add_argument("--tag", default=None, help="the image's release tag: the versions it builds")
    wi.add_argument("-o", "--output", type=Path, required=True, help="folder to write")
    wi.set_defaults(func=_warm_inputs)

    lay = sub.add_parser("layouts", help="manage the layouts folder")
    lay_sub = lay.add_subparsers(dest="layouts_command", required=True)
    fetch = lay_sub.add_parser("fetch", help="fill the layouts folder from git or a folder")
    fetch.add_argument(
        "--source",
        default=layouts.UPSTREAM_GIT,
        help="git URL or local folder (default: the upstream kiisrv repository)",
    )
    fetch.add_argument("--rev", default=layouts.UPSTREAM_REV, help="git revision (pinned)")
    fetch.add_argument(
        "--into", type=Path, default=None, help="destination (default: KIISRV_LAYOUTS_DIR)"
    )
    fetch.set_defaults(func=_layouts_fetch)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args, Settings.from_env()))
    except KiisrvError as exc:
        print(f"kiisrv: {exc.message}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"kiisrv: {exc}", file=sys.stderr)
        return 2

"""`kiisrv build`: one build from a layout file, without a server.

The same path as a request (planner, queue, runner, the controller image), in a data
folder and under an instance name of its own, so that a server running beside it
keeps its builds, containers and statistics to itself. What the user sees: the phases
(planned, waiting, building), the compiler's output as it comes, and where the zip is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from kiisrv.core import Kiisrv
from kiisrv.errors import KiisrvError
from kiisrv.jobs import Job, JobState
from kiisrv.settings import Settings

POLL = 0.25


async def _follow(server: Kiisrv, hash_: str, console: Console, done: asyncio.Event) -> int:
    """Prints the build's output as the container writes it; how much it printed."""
    shown = 0
    state = None
    while not done.is_set():
        job = server.queue.current(hash_)
        if job is not None and job.state is not state:
            state = job.state
            console.print(
                f"[bold]{'waiting for a slot' if state is JobState.QUEUED else 'building'}[/]"
            )
        try:
            live = await server.queue.live_log(hash_)
        except KiisrvError:  # following the output must never fail the build
            live = None
        if live is not None and len(live) > shown:
            console.out(live[shown:].decode("utf-8", "replace"), end="", highlight=False)
            shown = len(live)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), POLL)
    return shown


async def _build(settings: Settings, body: dict[str, object], console: Console) -> tuple[Job, Path]:
    server = Kiisrv(settings)
    await server.start()
    try:
        plan = await server.plan(body)
        console.print(
            f"[bold]planned[/] {plan.board} {plan.variant}: {plan.layers} layer(s), "
            f"{plan.target.version.name} ({plan.target.image}), build {plan.job.hash}"
        )
        done = asyncio.Event()
        follower = asyncio.create_task(_follow(server, plan.job.hash, console, done))
        try:
            job = await server.queue.submit(plan)
        finally:
            done.set()
            shown = await follower
        if not shown:  # over before the first look: its output is in the zip's log
            with contextlib.suppress(KiisrvError):
                log = await server.runner.read_log(job)
                console.print("[bold]building[/]")
                console.out(log.decode("utf-8", "replace"), end="", highlight=False)
        return job, settings.builds_dir / job.zip_name
    finally:
        await server.stop()


def run(settings: Settings, layout: Path, env: str, out_dir: Path, console: Console) -> int:
    """0 when the firmware was built; 1 when the build failed; the zip is copied either way."""
    body = {"config": json.loads(layout.read_bytes()), "env": env}
    with tempfile.TemporaryDirectory(prefix="kiisrv-build-") as tmp:
        own = settings.replace(
            data_dir=Path(tmp),
            instance=f"{settings.instance}-cli-{os.getpid()}",
            prune_interval=0,
        )
        try:
            job, made = asyncio.run(_build(own, body, console))
        except KiisrvError as exc:
            console.print(f"[bold red]refused[/] ({exc.status}): {escape(exc.message)}")
            return 2
        out_dir.mkdir(parents=True, exist_ok=True)
        kept = None
        if made.is_file():
            kept = out_dir / made.name
            shutil.copyfile(made, kept)
    if job.state is JobState.SUCCEEDED:
        console.print(f"[bold green]built[/] {kept}")
        return 0
    console.print(f"[bold red]failed[/]: {escape(job.error or '')}")
    if kept:
        console.print(f"log and inputs: {kept}")
    return 1

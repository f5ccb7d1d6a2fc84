"""The compatibility canary: every layout of a folder against every offered version.

Each case goes through the same code path as a request (plan, queue, container, zip),
so the report says what a Configurator user would get: built, refused up front with a
4xx, or failed in the compiler. The report is written as JSON (served by ``GET /compat``)
and as a Markdown table for the docs.

A zip with firmware in it is not proof that the firmware is right: a warm tree
configured for another variant compiles cleanly and ships another board's scan codes
(BUILD_CONTRACT.md, "The firmware is a function of the inputs"). With ``verify`` each
built case is also built from nothing (``Verifier``) and every ``.dfu.bin`` compared.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import zipfile
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kiisrv import __version__
from kiisrv.errors import ClientError, KiisrvError, NotFound
from kiisrv.recipe.diagnose import first_error_line
from kiisrv.recipe.planner import Plan
from kiisrv.store.artifacts import artifact_path
from kiisrv.tools import verify
from kiisrv.tools.verify import Reference

if TYPE_CHECKING:
    from kiisrv.core import Kiisrv

Outcome = Literal["built", "refused", "failed"]
REPORT_NAME = "compat.json"
# What is flashed, for the size column (a board has one image or two halves). The
# comparison covers more: every ``*.dfu.bin`` of the zip (``firmware``), so that
# ``kiibohd.secure.dfu.bin`` and its halves, or a name a new image adds, cannot slip by.
FIRMWARE_FILES = ("kiibohd.dfu.bin", "left_kiibohd.dfu.bin", "right_kiibohd.dfu.bin")
FIRMWARE_SUFFIX = ".dfu.bin"


@dataclass(frozen=True)
class CaseResult:
    layout: str
    version: str
    outcome: Outcome
    seconds: float
    status: int
    firmware_bytes: int | None = None
    error: str | None = None
    cached: bool = False
    filename: str | None = None
    # Only with --verify: the same bytes as a build from nothing (None: not verified),
    # the .dfu.bin files that differ, and why the build from nothing gave none.
    identical: bool | None = None
    differing: tuple[str, ...] = ()
    reference_error: str | None = None


@dataclass
class Report:
    generated_at: str
    kiisrv: str
    versions: dict[str, Any]
    results: list[CaseResult] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return any(r.identical is not None for r in self.results)

    def summary(self) -> dict[str, int]:
        """Outcomes; with --verify also how many built cases are identical or differ."""
        counts = {"built": 0, "refused": 0, "failed": 0}
        for r in self.results:
            counts[r.outcome] += 1
        if self.verified:
            counts["identical"] = sum(r.identical is True for r in self.results)
            counts["differing"] = sum(r.identical is False for r in self.results)
        return counts

    def as_json(self) -> dict[str, Any]:
        return {
            "generated_at": self.generated_at,
            "kiisrv": self.kiisrv,
            "versions": self.versions,
            "summary": self.summary(),
            "results": [asdict(r) for r in self.results],
        }

    def markdown(self) -> str:
        versions = list(dict.fromkeys(r.version for r in self.results))
        layouts = list(dict.fromkeys(r.layout for r in self.results))
        cell = {(r.layout, r.version): r for r in self.results}
        s = self.summary()
        lines = [
            "# Compatibility: every layout against every version",
            "",
            f"Made by `kiisrv canary` (kiisrv {self.kiisrv}) on {self.generated_at}: "
            f"{s['built']} built, {s['refused']} refused before any build, "
            f"{s['failed']} failed.",
            "",
        ]
        if self.verified:
            lines += [
                f"Verified (`--verify`): {s['identical']} built cases identical to a build "
                f"from nothing (`KIISRV_WARM=0`, no ccache), **{s['differing']} differing**.",
                "",
            ]
        for name, info in self.versions.items():
            lines.append(
                f"- `{name}`: {info.get('image', '?')} ({info.get('tag') or 'unknown tag'})"
            )
        lines += ["", "| layout | " + " | ".join(versions) + " |"]
        lines.append("|---|" + "---|" * len(versions))
        for layout in layouts:
            row = [_cell(cell.get((layout, v))) for v in versions]
            lines.append(f"| {layout} | " + " | ".join(row) + " |")
        lines.append("")
        return "\n".join(lines)


def _cell(r: CaseResult | None) -> str:
    if r is None:
        return ""
    if r.outcome == "built":
        size = f", {r.firmware_bytes / 1024:.0f} KiB" if r.firmware_bytes else ""
        how = "cached" if r.cached else f"{r.seconds:.1f} s"
        built = f"built ({how}{size})"
        if r.identical is True:
            return f"{built}, identical"
        if r.identical is False:
            why = ", ".join(r.differing) or (r.reference_error or "").replace("|", "\\|")
            return f"{built}, **DIFFERS** from a build from nothing: {why}"
        return built
    text = (r.error or "").replace("|", "\\|")
    return f"**{r.outcome}** {r.status}: {text}"


def layout_files(folder: Path) -> list[Path]:
    """The layouts a user can pick: every JSON file but aliases and LTS base files."""
    aliases: set[str] = set()
    alias_file = folder / "ALIASES.txt"
    if alias_file.is_file():
        for line in alias_file.read_text(encoding="utf-8").splitlines():
            alias, sep, _ = line.partition("->")
            if sep:
                aliases.add(alias.strip())
    return sorted(
        p
        for p in folder.glob("*.json")
        if p.is_file()
        and not p.is_symlink()
        and p.name not in aliases
        and not p.name.endswith(".lts.json")
    )


def firmware_size(builds_dir: Path, filename: str) -> int | None:
    """Bytes of firmware in a finished zip (both halves of a split board)."""
    try:
        with zipfile.ZipFile(artifact_path(builds_dir, Path(filename).name)) as z:
            names = set(z.namelist())
            sizes = [z.getinfo(n).file_size for n in FIRMWARE_FILES if n in names]
    except (OSError, zipfile.BadZipFile, NotFound):
        return None
    return sum(sizes) if sizes else None


def firmware(zip_path: Path) -> dict[str, bytes]:
    """Every ``.dfu.bin`` of a zip by name; empty when the zip is missing or broken."""
    try:
        with zipfile.ZipFile(zip_path) as z:
            return {
                n: z.read(n) for n in z.namelist() if n.endswith(FIRMWARE_SUFFIX) and "/" not in n
            }
    except (OSError, zipfile.BadZipFile):
        return {}


def differing(served: dict[str, bytes], reference: dict[str, bytes]) -> tuple[str, ...]:
    """The files not byte-identical in both, a file only one of them has included."""
    return tuple(
        sorted(n for n in served.keys() | reference.keys() if served.get(n) != reference.get(n))
    )


def build_log(builds_dir: Path, filename: str) -> str:
    try:
        with zipfile.ZipFile(artifact_path(builds_dir, Path(filename).name)) as z:
            return z.read("log/build.log").decode("utf-8", "replace")
    except (OSError, KeyError, zipfile.BadZipFile, NotFound):
        return ""


@dataclass(frozen=True)
class Answer:
    """What one build request came to, whatever the queue behind it."""

    success: bool
    cached: bool
    filename: str
    error: str | None


Submit = Callable[[dict[str, Any]], Awaitable[Answer]]


Verify = Callable[[dict[str, Any]], Awaitable[Reference]]


class Verifier:
    """Builds a request from nothing on the canary's own server, bypassing its queue and
    cache (a oneshot run of the runner), and leaves no zip, input or container behind.

    A request is built from nothing once per run: versions that name the same image
    (nightly, latest, v0.5.7) plan the same hash, and their zips are compared with it.
    """

    def __init__(self, server: Kiisrv) -> None:
        self.server = server
        self._slots = asyncio.Semaphore(1)
        self._made: dict[str, Reference] = {}

    async def __call__(self, body: dict[str, Any]) -> Reference:
        plan = await self.server.plan(body)
        made = self._made.get(plan.job.hash)
        if made is None:
            made = self._made[plan.job.hash] = await self._build(plan)
        return made

    async def _build(self, plan: Plan) -> Reference:
        made = await verify.rebuild(self.server, plan, self._slots)
        if made.error is None:
            return made
        return Reference({}, f"the build from nothing failed: {first_error_line(made.error)}")


async def run(
    submit: Submit,
    builds_dir: Path,
    layouts: Iterable[Path],
    versions: Sequence[str],
    version_info: dict[str, Any],
    progress: Callable[[CaseResult], None] = lambda r: None,
    verify: Verify | None = None,
) -> Report:
    """Builds each layout for each version, one at a time (so the seconds mean something).

    With ``verify``, each built case is then built from nothing, outside its seconds.
    """
    report = Report(
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        kiisrv=__version__,
        versions=version_info,
    )
    for path in layouts:
        config = json.loads(path.read_bytes())
        for version in versions:
            started = time.monotonic()
            try:
                body = {"config": config, "env": version}
                answer = await submit(body)
            except ClientError as exc:
                result = CaseResult(
                    path.name, version, "refused", 0.0, exc.status, error=exc.message
                )
            except KiisrvError as exc:
                result = CaseResult(
                    path.name,
                    version,
                    "failed",
                    time.monotonic() - started,
                    exc.status,
                    error=exc.message.splitlines()[0],
                )
            else:
                seconds = round(time.monotonic() - started, 2)
                if answer.success:
                    result = CaseResult(
                        path.name,
                        version,
                        "built",
                        seconds,
                        200,
                        firmware_bytes=firmware_size(builds_dir, answer.filename),
                        cached=answer.cached,
                        filename=answer.filename,
                    )
                    if verify is not None:
                        result = await _verified(result, verify, builds_dir, body)
                else:
                    log = build_log(builds_dir, answer.filename) or (answer.error or "")
                    said = (answer.error or "").split("\n", 1)[0]  # diagnose.py's sentence
                    if said.startswith(("the build", "could not")) or not said:
                        said = first_error_line(log)
                    result = CaseResult(
                        path.name,
                        version,
                        "failed",
                        seconds,
                        422,
                        error=said,
                        filename=answer.filename,
                    )
            report.results.append(result)
            progress(result)
    return report


async def _verified(
    result: CaseResult, verify: Verify, builds_dir: Path, body: dict[str, Any]
) -> CaseResult:
    """The case with the served zip's firmware compared to a build from nothing."""
    try:
        reference = await verify(body)
    except KiisrvError as exc:  # the engine or the disk: not proof either way
        reference = Reference({}, f"no build from nothing: {exc.message.splitlines()[0]}")
    served = firmware(builds_dir / Path(result.filename or "").name)
    if reference.error is not None:
        return dataclasses.replace(result, identical=False, reference_error=reference.error)
    diff = differing(served, reference.firmware)
    if not served:
        diff = diff or ("(no .dfu.bin in either zip)",)
    return dataclasses.replace(result, identical=not diff, differing=diff)


def write(report: Report, path: Path) -> tuple[Path, Path]:
    """The JSON report at ``path`` and the Markdown table beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    md = path.with_suffix(".md")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report.as_json(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    md.write_text(report.markdown(), encoding="utf-8")
    return path, md

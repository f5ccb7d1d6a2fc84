"""The compatibility canary: every layout of a folder against every offered version.

Each case goes through the same code path as a request (plan, queue, container, zip),
so the report says what a Configurator user would get: built, refused up front with a
4xx, or failed in the compiler. The report is written as JSON (served by ``GET /compat``)
and as a Markdown table for the docs.
"""

from __future__ import annotations

import json
import re
import time
import zipfile
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from kiisrv import __version__
from kiisrv.artifacts import artifact_path
from kiisrv.errors import ClientError, KiisrvError, NotFound

Outcome = Literal["built", "refused", "failed"]
REPORT_NAME = "compat.json"
FIRMWARE_FILES = ("kiibohd.dfu.bin", "left_kiibohd.dfu.bin", "right_kiibohd.dfu.bin")

# Lines that say a build went wrong without saying why, or that are noise (CMake's
# developer warnings name "missing" things on every build).
_GENERIC = re.compile(
    r"Build Completed \[ERROR|Error in (build|cmake)\. Exiting|ninja: build stopped|"
    r"^FAILED: |the build failed \(exit status|^make(\[\d+\])?: \*\*\*|Build Result:|"
    r"BYPRODUCTS|CMake Warning|Project authors|-Wno-dev",
)
# The first line that matches wins, strongest first: a compiler's or the KLL compiler's
# own error line, a Python exception, then anything that sounds like a failure.
_ERRORS = (
    re.compile(r"\berror\b\s*:|^ERROR:"),
    re.compile(r"^[A-Za-z_.]*(Error|Exception): "),
    re.compile(r"error|invalid|undeclared|not found|missing", re.IGNORECASE),
)


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


@dataclass
class Report:
    generated_at: str
    kiisrv: str
    versions: dict[str, Any]
    results: list[CaseResult] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        counts = {"built": 0, "refused": 0, "failed": 0}
        for r in self.results:
            counts[r.outcome] += 1
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
        return f"built ({how}{size})"
    text = (r.error or "").replace("|", "\\|")
    return f"**{r.outcome}** {r.status}: {text}"


def first_error_line(text: str) -> str:
    """The line of a log most worth showing: the first that names an error."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    useful = [ln for ln in lines if not _GENERIC.search(ln)]
    for pattern in _ERRORS:
        for line in useful:
            if pattern.search(line):
                return line[:300]
    return lines[-1][:300] if lines else ""


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


async def run(
    submit: Submit,
    builds_dir: Path,
    layouts: Iterable[Path],
    versions: Sequence[str],
    version_info: dict[str, Any],
    progress: Callable[[CaseResult], None] = lambda r: None,
) -> Report:
    """Builds each layout for each version, one at a time (so the seconds mean something)."""
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
                answer = await submit({"config": config, "env": version})
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


def write(report: Report, path: Path) -> tuple[Path, Path]:
    """The JSON report at ``path`` and the Markdown table beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    md = path.with_suffix(".md")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report.as_json(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    md.write_text(report.markdown(), encoding="utf-8")
    return path, md

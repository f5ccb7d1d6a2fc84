"""Build outputs on disk: where zips live, how they appear, how clients reach them.

A zip becomes visible in the served folder only by ``os.replace`` from a sibling
folder on the same filesystem, so a crash or a full disk can never leave a partial
zip that a later request would take for a finished build.
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from pathlib import Path

from kiisrv.errors import NotFound

_ARTIFACT_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,200}\.zip$")


def artifact_path(builds_dir: Path, name: str) -> Path:
    """The served file for ``GET /tmp/<name>``: a plain zip inside the folder, or NotFound."""
    if not _ARTIFACT_RE.match(name) or name.startswith("."):
        raise NotFound(f"no build artifact named {name!r}")
    path = builds_dir / name
    if path.is_symlink() or not path.is_file():
        raise NotFound(f"no build artifact named {name!r}")
    return path


def publish(src: Path, dest: Path) -> None:
    os.replace(src, dest)


def write_zip(dest: Path, members: dict[str, bytes]) -> None:
    """Write a zip atomically: a temporary file beside ``dest``, then a rename."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".zip", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def log_tail(log: bytes, lines: int = 40) -> str:
    text = log.decode("utf-8", "replace").rstrip("\n")
    return "\n".join(text.splitlines()[-lines:])


def write_bytes(dest: Path, data: bytes) -> None:
    """Write a file atomically: a temporary file beside ``dest``, then a rename."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".zip", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def hash_of(zip_name: str) -> str | None:
    """The build hash a zip name ends with (``<stem>-<hash>[_error].zip``)."""
    stem = zip_name.removesuffix(".zip").removesuffix("_error")
    tail = stem.rsplit("-", 1)[-1]
    return tail if len(tail) == 32 and all(c in "0123456789abcdef" for c in tail) else None

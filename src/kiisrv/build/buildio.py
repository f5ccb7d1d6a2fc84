"""What crosses into and out of a build container, as tar archives of the Engine API.

Build containers mount no host folder (``containers.py``), so a build's files travel by
``PUT /containers/{id}/archive`` (before start) and ``GET /containers/{id}/archive``
(after exit). The output archive is written by the build, which runs a client's
layout through a compiler: it is hostile. Extraction accepts plain files directly in
the output folder and nothing else (no link, device, sub-folder, absolute or ``..``
name), checks every member before it writes one, and never follows a link, so nothing
lands outside the work folder. Pure functions; the runner calls them off the loop.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from kiisrv.build.containers import IN_DIR, IO_DIR, OUT_DIR

# Largest output archive accepted. A real build's zip (firmware, headers, log) is
# 0.1-2 MB; the build log inside it is whatever the compiler printed.
MAX_OUTPUT_BYTES = 64 * 1024 * 1024
# The archive read from the engine: the files and their tar headers.
MAX_ARCHIVE_BYTES = MAX_OUTPUT_BYTES + 64 * 1024

_IN = PurePosixPath(IN_DIR).relative_to(IO_DIR)
_OUT = PurePosixPath(OUT_DIR).relative_to(IO_DIR)
_PLAIN = re.compile(r"^[A-Za-z0-9_.-]+$")
_COPY_CHUNK = 1024 * 1024


class UnsafeOutput(Exception):
    """The build's output archive was refused; the message says why."""


def _plain(name: str) -> bool:
    """A name build.sh could have written: what its zip names are made of."""
    return bool(_PLAIN.match(name)) and name not in (".", "..")


def _one_part(name: str) -> bool:
    """A file name, not a path: layout names may hold spaces and more (kll.file_text)."""
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name


def input_archive(job_dir: str, files: Mapping[str, bytes], build_user: str) -> bytes:
    """The tar to upload into ``IO_DIR``: the files under ``config/<job_dir>/`` (read-only
    to the build, root's), and the output folder, owned by the build user.

    The owner comes from the headers: the engine keeps them. A build user given by name
    (no uid to write) gets a folder anyone may write, as its old bind mount was.
    """
    if not _plain(job_dir):
        raise ValueError(f"job folder {job_dir!r} is not a plain name")
    for name in files:
        if not _one_part(name):
            raise ValueError(f"input {name!r} is not a plain file name")
    uid_gid = build_user.split(":", 1) if build_user else ["0"]
    numeric = all(part.isdigit() for part in uid_gid)
    uid = int(uid_gid[0]) if numeric else 0
    gid = int(uid_gid[-1]) if numeric else 0
    now = int(time.time())

    def entry(name: PurePosixPath, mode: int, owner: tuple[int, int] = (0, 0)) -> tarfile.TarInfo:
        info = tarfile.TarInfo(str(name))
        info.mode, info.mtime = mode, now
        info.uid, info.gid = owner
        return info

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for folder in (_IN, _IN / job_dir):
            info = entry(folder, 0o755)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in files.items():
            info = entry(_IN / job_dir / name, 0o644)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        out = entry(_OUT, 0o755 if numeric else 0o777, (uid, gid))
        out.type = tarfile.DIRTYPE
        tar.addfile(out)
    return buf.getvalue()


def _checked(tar: tarfile.TarFile, max_bytes: int) -> list[tuple[tarfile.TarInfo, str]]:
    """Every member, each a plain file directly in the output folder (or the folder)."""
    files: list[tuple[tarfile.TarInfo, str]] = []
    total = 0
    for member in tar.getmembers():
        path = PurePosixPath(member.name)
        if member.name == str(_OUT) and member.isdir():
            continue
        if not member.isreg():
            raise UnsafeOutput(f"{member.name!r} is not a plain file (a link, folder or device)")
        if path.is_absolute() or len(path.parts) != 2 or path.parts[0] != str(_OUT):
            raise UnsafeOutput(f"{member.name!r} is not a file directly in the output folder")
        if not _plain(path.name):
            raise UnsafeOutput(f"{member.name!r} is not a plain file name")
        total += member.size
        if total > max_bytes:
            raise UnsafeOutput(f"the output is larger than {max_bytes} bytes")
        files.append((member, path.name))
    return files


def extract_output(archive: bytes, dest: Path, *, max_bytes: int = MAX_OUTPUT_BYTES) -> list[str]:
    """Write the output archive's files into ``dest`` (created); their names.

    Checks the whole archive before writing anything: a refused one leaves ``dest``
    empty. Files are created new (``O_EXCL``) and never through a link (``O_NOFOLLOW``).
    """
    if len(archive) > max_bytes + (MAX_ARCHIVE_BYTES - MAX_OUTPUT_BYTES):
        raise UnsafeOutput(f"the output is larger than {max_bytes} bytes")
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            files = _checked(tar, max_bytes)
            dest.mkdir(parents=True, exist_ok=True)
            for member, name in files:
                source = tar.extractfile(member)
                if source is None:  # pragma: no cover - isreg() members always have data
                    raise UnsafeOutput(f"{member.name!r} has no data")
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                fd = os.open(dest / name, flags, 0o644)
                with os.fdopen(fd, "wb") as out:
                    while chunk := source.read(_COPY_CHUNK):
                        out.write(chunk)
    except tarfile.TarError as exc:
        raise UnsafeOutput(f"the output is not a readable tar archive: {exc}") from None
    return [name for _, name in files]


def single_file(archive: bytes, name: str, *, max_bytes: int) -> bytes:
    """The content of the one plain file ``name`` that ``GET .../archive?path=<a file>``
    answers with; UnsafeOutput for anything else (a link, a folder, more members, a
    file over ``max_bytes``): an image's file is only read, never extracted."""
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            members = tar.getmembers()
            if len(members) != 1 or members[0].name != name or not members[0].isreg():
                found = [(m.name, m.type.decode(errors="replace")) for m in members[:3]]
                raise UnsafeOutput(f"not the one plain file {name!r}: {found}")
            if members[0].size > max_bytes:
                raise UnsafeOutput(f"{name!r} is larger than {max_bytes} bytes")
            source = tar.extractfile(members[0])
            if source is None:  # pragma: no cover - isreg() members always have data
                raise UnsafeOutput(f"{name!r} has no data")
            return source.read()
    except tarfile.TarError as exc:
        raise UnsafeOutput(f"not a readable tar archive: {exc}") from None

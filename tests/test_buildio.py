"""What crosses into and out of a build container, without Docker: the input archive
and the extraction of the output archive (which the build wrote, so it is hostile)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from kiisrv.build.buildio import MAX_OUTPUT_BYTES, UnsafeOutput, extract_output, input_archive
from kiisrv.build.containers import IN_DIR, IO_DIR, OUT_DIR

HASH = "0123456789abcdef0123456789abcdef"


def _members(archive: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as t:
        return {m.name: m for m in t.getmembers()}


def test_the_input_archive_holds_the_files_and_an_output_folder_the_build_owns() -> None:
    archive = input_archive(HASH, {"KType-Mine-0.kll": b"Name = KType;\n"}, "1000:1000")
    members = _members(archive)
    kll_dir = os.path.relpath(f"{IN_DIR}/{HASH}", IO_DIR)
    out_dir = os.path.relpath(OUT_DIR, IO_DIR)
    assert set(members) == {
        *(os.path.relpath(IN_DIR, IO_DIR), kll_dir, out_dir),
        f"{kll_dir}/KType-Mine-0.kll",
    }
    kll = members[f"{kll_dir}/KType-Mine-0.kll"]
    assert kll.isfile() and kll.mode == 0o644 and (kll.uid, kll.gid) == (0, 0)
    out = members[out_dir]
    assert out.isdir() and (out.uid, out.gid) == (1000, 1000) and out.mode == 0o755
    assert all(not m.issym() and not m.islnk() for m in members.values())


def test_a_build_user_by_name_or_root_gets_an_open_output_folder() -> None:
    for user in ("", "builder"):
        out = _members(input_archive(HASH, {}, user))[os.path.relpath(OUT_DIR, IO_DIR)]
        assert (out.uid, out.mode) == (0, 0o777 if user else 0o755)


@pytest.mark.parametrize("bad", ["../x.kll", "a/b.kll", "/etc/x", "", ".", ".."])
def test_the_input_archive_refuses_names_that_are_not_plain(bad: str) -> None:
    with pytest.raises(ValueError):
        input_archive(HASH, {bad: b"x"}, "1000:1000")


def _output(*entries: tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]) -> bytes:
    """An output archive as GET /containers/{id}/archive answers: the folder first."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        top = tarfile.TarInfo("builds")
        top.type = tarfile.DIRTYPE
        t.addfile(top)
        for entry in entries:
            info, data = entry if isinstance(entry, tuple) else (entry, b"")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def test_the_output_zip_is_extracted_into_the_work_folder(tmp_path: Path) -> None:
    work = tmp_path / "work" / HASH
    names = extract_output(_output((_file("builds/KType-0.zip"), b"PK zip")), work)
    assert names == ["KType-0.zip"]
    assert (work / "KType-0.zip").read_bytes() == b"PK zip"


@pytest.mark.parametrize(
    ("what", "entry"),
    [
        ("a symlink to the host's root", _link("builds/KType-0.zip", "/")),
        ("a symlink out of the folder", _link("builds/KType-0.zip", "../../../etc/passwd")),
        ("a hard link", _link("builds/KType-0.zip", "/etc/passwd", tarfile.LNKTYPE)),
        ("a ../ member", (_file("builds/../../escaped.zip"), b"x")),
        ("a member outside the folder", (_file("../escaped.zip"), b"x")),
        ("an absolute member", (_file("/tmp/escaped.zip"), b"x")),
        ("a sub-folder", (_file("builds/sub/KType-0.zip"), b"x")),
        ("a device", _link("builds/null", "", tarfile.CHRTYPE)),
        ("a fifo", _link("builds/fifo", "", tarfile.FIFOTYPE)),
    ],
)
def test_an_output_with_anything_but_plain_files_is_refused_whole(
    tmp_path: Path, what: str, entry: tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]
) -> None:
    """Attack: the build leaves a link (or a path) in its output folder, so that the
    server would write through it. Refused: nothing is written anywhere, not even the
    plain file beside it."""
    work = tmp_path / "a" / "b" / "work"
    archive = _output((_file("builds/first.zip"), b"PK"), entry)
    with pytest.raises(UnsafeOutput):
        extract_output(archive, work)
    assert list(tmp_path.rglob("*")) == []


def test_an_output_larger_than_the_cap_is_refused(tmp_path: Path) -> None:
    big = _file("builds/big.zip")
    archive = _output((big, b"x" * 2048))
    with pytest.raises(UnsafeOutput, match="larger"):
        extract_output(archive, tmp_path / "w", max_bytes=1024)
    assert MAX_OUTPUT_BYTES >= 16 * 1024 * 1024  # a real zip with its logs fits


def test_an_output_that_is_not_a_tar_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafeOutput):
        extract_output(b"not a tar at all" * 100, tmp_path / "w")

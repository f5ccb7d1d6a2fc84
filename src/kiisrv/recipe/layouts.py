"""The layouts folder: the files ``GET /layouts`` serves and the bases KLL is laid over.

A name from a client is only ever used after it has been checked against a strict
pattern and resolved inside the folder, symlinks included, so no request reads
outside it. Aliases come from ``ALIASES.txt`` (``alias -> target``) or from symlinks,
as in the upstream repository.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from kiisrv.errors import InvalidLayout, NotFound
from kiisrv.recipe.layout import Layout, parse_layout

_FILE_RE = re.compile(r"^[A-Za-z0-9_.\- ]{1,128}\.json$")
# The upstream kiisrv repository's layouts, pinned: the files the Configurator expects.
UPSTREAM_GIT = "https://github.com/kiibohd/kiisrv.git"
UPSTREAM_REV = "d75c1089f35d50d6b294a29a66280c8fa4c7ec71"

_REV_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/~^-]{0,99}$")


class LayoutStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _aliases(self) -> dict[str, str]:
        path = self.root / "ALIASES.txt"
        if not path.is_file():
            return {}
        aliases = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            alias, sep, target = line.partition("->")
            if sep:
                aliases[alias.strip()] = target.strip()
        return aliases

    def _alias_pairs(self) -> list[tuple[str, str]]:
        """Every alias, from ALIASES.txt and from symlinks in the folder."""
        pairs = list(self._aliases().items())
        for path in self.root.glob("*.json"):
            if path.is_symlink():
                pairs.append((path.name, Path(os.readlink(path)).name))
        return pairs

    def board_aliases(self) -> dict[str, str]:
        """Keyboard names the aliases rename: ``K-Type-Standard -> KType-Standard`` gives
        ``K-Type -> KType``, so a layout named K-Type finds KType's base layouts too."""
        boards: dict[str, str] = {}
        for alias, target in self._alias_pairs():
            for i, c in enumerate(alias):
                rest = alias[i:]
                if c == "-" and target.endswith(rest) and len(target) > len(rest):
                    if alias[:i] != target[: -len(rest)]:
                        boards.setdefault(alias[:i], target[: -len(rest)])
                    break
        return boards

    def resolve(self, name: str) -> Path:
        """The file behind ``name``, guaranteed inside the folder, or NotFound."""
        if not _FILE_RE.match(name) or name.startswith("."):
            raise NotFound(f"no layout named {name!r}")
        name = self._aliases().get(name, name)
        root = self.root.resolve()
        path = (root / name).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise NotFound(f"no layout named {name!r}")
        return path

    def read(self, name: str, rev: str | None = None) -> bytes:
        path = self.resolve(name)
        if rev is None:
            return path.read_bytes()
        return self._read_rev(path, rev)

    def _read_rev(self, path: Path, rev: str) -> bytes:
        if not _REV_RE.match(rev):
            raise NotFound(f"no revision {rev!r}")
        top = _git(self.root, "rev-parse", "--show-toplevel")
        if top is None:
            if rev == "HEAD":
                return path.read_bytes()
            raise NotFound(f"revision {rev!r}: the layouts folder is not a git checkout")
        rel = path.relative_to(Path(top.decode().strip()).resolve())
        # Exactly one commit, by git's own reading: a range (HEAD~3..HEAD), a set
        # (HEAD^@) or anything else that is not one revision is no revision at all
        # (`git show` of a range answered nothing, which was served as an empty 200).
        commit = _git(self.root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
        if commit is None or not re.fullmatch(rb"[0-9a-f]{40,64}\n?", commit):
            raise NotFound(f"no revision {rev!r}")
        content = _git(self.root, "show", f"{commit.decode().strip()}:{rel.as_posix()}")
        if content is None:
            raise NotFound(f"no layout {path.name!r} at revision {rev!r}")
        return content

    def load_base(self, names: str | Sequence[str]) -> Layout:
        """The first of ``names`` that exists, parsed (and cached while unchanged)."""
        return self.load_base_file(names)[0]

    def load_base_file(self, names: str | Sequence[str]) -> tuple[Layout, BaseFile]:
        """The base layout and which file, as it was, it came from.

        A keyboard name the client knows as an alias (``K-Type``) falls back to the
        target's base (``KType-Base.json``): the reference had none for it.
        """
        candidates = [names] if isinstance(names, str) else list(names)
        boards = self.board_aliases()
        renamed = [
            f"{target}{name[len(alias) :]}"
            for name in candidates
            for alias, target in boards.items()
            if name.startswith(f"{alias}-")
        ]
        for name in [*candidates, *renamed]:
            try:
                path = self.resolve(name)
            except NotFound:
                continue
            stat = path.stat()
            stamp = BaseFile(path, stat.st_mtime_ns, stat.st_size)
            return _parse_cached(path, stat.st_mtime_ns, stat.st_size), stamp
        raise InvalidLayout(
            f"header.Base: the server has no base layout {candidates[0]!r} for this keyboard"
        )


@dataclass(frozen=True)
class BaseFile:
    """A base layout file as it was read: one stat tells whether it changed since."""

    path: Path
    mtime_ns: int
    size: int

    def unchanged(self) -> bool:
        try:
            stat = self.path.stat()
        except OSError:
            return False
        return (stat.st_mtime_ns, stat.st_size) == (self.mtime_ns, self.size)


@lru_cache(maxsize=128)
def _parse_cached(path: Path, mtime_ns: int, size: int) -> Layout:
    return parse_layout(json.loads(path.read_bytes()), f" in base file {path.name}")


def _git(cwd: Path, *args: str) -> bytes | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(cwd), *args], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def fetch(source: str, rev: str, into: Path) -> int:
    """Fill ``into`` with layout files from a folder or a git repository's ``layouts/``.

    Symlinks (aliases upstream) are kept as symlinks. Returns the number of files.
    Replaces the folder's content only once the new content is complete.
    """
    into = into.absolute()
    into.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=into.parent, prefix=".layouts-") as tmp:
        staged = Path(tmp) / "layouts"
        local = Path(source)
        if local.is_dir() and any(local.glob("*.json")):
            shutil.copytree(local, staged, symlinks=True)
        else:
            checkout = Path(tmp) / "repo"
            for args in (
                ["clone", "-q", "--filter=blob:none", "--no-checkout", source, str(checkout)],
                ["-C", str(checkout), "sparse-checkout", "set", "layouts"],
                ["-C", str(checkout), "checkout", "-q", rev],
            ):
                done = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise OSError(f"git {args[0]} failed: {done.stderr.strip()}")
            shutil.copytree(checkout / "layouts", staged, symlinks=True)
        count = sum(1 for p in staged.iterdir() if p.suffix == ".json")
        if count == 0:
            raise OSError(f"no layout files in {source}")
        if into.exists():
            shutil.rmtree(into)
        staged.rename(into)
    return count

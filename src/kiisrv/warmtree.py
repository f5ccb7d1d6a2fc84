"""Which warm tree a firmware build may start from: the rule that keeps the fast path honest.

A warm tree (docker/controller/warm.sh) is a build folder configured and compiled at
image build time. Reusing one is only right when the request's configure would be the
very same configure: a tree configured for WhiteFox ``truefox`` compiles a ``vanilla``
request cleanly and ships another board's scancode map (BUILD_CONTRACT.md, "The
firmware is a function of the inputs"). So the key of a tree is not a list of inputs
someone keeps by hand but what the configure was actually given: the wrapper
``docker/controller/bin/cmake`` records the working folder, every argument and the
environment of each configure, and build.sh gets the same record for a request by
running the keyboard script in probe mode (it stops at its cmake call).

- same key: the tree is copied and ninja alone runs (``warm``);
- else a tree of the same folder whose configure differs only in the *values* of the
  same ``-D`` options, under the same environment: the script runs in a copy of it and
  CMake reconfigures (``reconfigure``). Values given on the command line override the
  cache; an option the request lacks would silently keep the tree's cached value, and
  the environment (CFLAGS, ...) is read only at a tree's first configure, so neither
  may differ;
- else from nothing (``cold``).

Stdlib only and runnable as a script: the controller images carry a copy of this file
(``/usr/local/lib/kiisrv/warmtree.py``) and run it with their own python3.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

RECORD_NAME = ".kiisrv-configure"

# Environment variables left out of a configure's key, each with why it cannot change
# what the configure writes. Everything else counts, so a new variable is safe by
# default: at worst it makes a request reconfigure.
IGNORED_ENV: Mapping[str, str] = {
    "HOSTNAME": "the container's id",
    "HOME": "a scratch folder, /tmp in requests",
    "PWD": "the working folder, recorded as cwd",
    "OLDPWD": "the shell's previous folder",
    "SHLVL": "the shell's nesting depth",
    "_": "the shell's last command",
    "CCACHE_DIR": "where ccache keeps objects; never part of an output",
    "CCACHE_DISABLE": "ccache on or off; ccache returns what the compiler would",
    # Set for builds that may only read the shared ccache (containers.py).
    "CCACHE_READONLY": "ccache adds nothing; it returns what the compiler would",
    "CCACHE_TEMPDIR": "where ccache keeps its temporary files",
    "CCACHE_NOSTATS": "whether ccache counts hits",
    # The shared ccache as secondary storage, a client's own as primary (containers.py).
    "CCACHE_REMOTE_STORAGE": "where else ccache looks for objects",
    "CCACHE_REMOTE_ONLY": "whether ccache keeps objects only there",
    "CCACHE_MAXSIZE": "when ccache evicts objects",
    "KIISRV_WARM": "build.sh's switch for warm trees",
    "KIISRV_WARMING": "set while the image builds its trees",
    "KIISRV_CONFIGURE_PROBE": "the probe's own output file",
    "IN_DIR": "where build.sh reads the request",
    "OUT_DIR": "where build.sh writes the zip",
    # The keyboard scripts' own inputs. The scripts turn them into cmake arguments
    # (LayoutName, BaseMap, PRODUCT_ID, DefaultMap, PartialMaps), which are recorded;
    # CMake itself reads none of them (the controller's CMake reads $ENV only for
    # GITHUB_APIKEY). Keyboards whose script ignores Layout share trees across layouts.
    "Layout": "reaches CMake as arguments, which are keyed",
    "DefaultMapOverride": "reaches CMake as arguments, which are keyed",
    "PartialMapsExpandedOverride": "reaches CMake as arguments, which are keyed",
    "SPLIT_KEYBOARD": "chooses the -l/-r script, whose cwd and arguments are keyed",
}

How = Literal["warm", "reconfigure", "cold"]


@dataclass(frozen=True)
class Record:
    """One configure: where it ran, what it was given, under which environment."""

    cwd: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, raw: bytes) -> Record:
        cwd = ""
        args: list[str] = []
        env: dict[str, str] = {}
        for item in raw.decode("utf-8", "surrogateescape").split("\0"):
            kind, _, value = item.partition("=")
            if kind == "cwd":
                cwd = value
            elif kind == "arg":
                args.append(value)
            elif kind == "env":
                name, _, val = value.partition("=")
                env[name] = val
        if not cwd:
            raise ValueError("not a configure record: no cwd")
        return cls(cwd, tuple(args), tuple(sorted(env.items())))

    @classmethod
    def read(cls, path: Path) -> Record:
        return cls.parse(path.read_bytes())

    def keyed_env(self) -> dict[str, str]:
        return {k: v for k, v in self.env if k not in IGNORED_ENV}

    def options(self) -> dict[str, str]:
        """The ``-D<name>=<value>`` options; the other arguments by position."""
        out: dict[str, str] = {}
        for i, arg in enumerate(self.args):
            if arg.startswith("-D"):
                name, _, value = arg[2:].partition("=")
                out[name] = value
            else:
                out[f"#{i}"] = arg
        return out

    def key(self) -> str:
        material = json.dumps(
            {"cwd": self.cwd, "args": self.args, "env": self.keyed_env()},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(material.encode("utf-8", "surrogateescape")).hexdigest()[:24]


@dataclass(frozen=True)
class Choice:
    how: How
    tree: Path | None = None
    differs: tuple[str, ...] = ()


def _reconfigurable(request: Record, tree: Record) -> tuple[str, ...] | None:
    """The options whose values differ, or None when the tree cannot be reconfigured."""
    if request.cwd != tree.cwd or request.keyed_env() != tree.keyed_env():
        return None
    mine, theirs = request.options(), tree.options()
    if mine.keys() != theirs.keys():
        return None
    return tuple(sorted(k for k in mine if mine[k] != theirs[k]))


def pick(request: Record, trees: Iterable[tuple[Path, Record]]) -> Choice:
    """The tree to start from: the same configure, else the nearest, else none."""
    key = request.key()
    best: Choice | None = None
    for path, record in sorted(trees, key=lambda t: str(t[0])):
        if record.key() == key:
            return Choice("warm", path)
        differs = _reconfigurable(request, record)
        if differs is not None and (best is None or len(differs) < len(best.differs)):
            best = Choice("reconfigure", path, differs)
    return best or Choice("cold")


def trees_of(folder: Path) -> list[tuple[Path, Record]]:
    """The warm trees of one keyboard script, ``<folder>/<key>/``, with their records."""
    found = []
    if folder.is_dir():
        for tree in folder.iterdir():
            record = tree / RECORD_NAME
            if record.is_file():
                try:
                    found.append((tree, Record.read(record)))
                except ValueError:
                    continue
    return found


def differences(a: Record, b: Record) -> list[str]:
    """What keeps two configures from sharing a key, one line each (for the logs)."""
    out = [f"cwd: {a.cwd} != {b.cwd}"] if a.cwd != b.cwd else []
    oa, ob = a.options(), b.options()
    out += [
        f"{k}: {oa.get(k)!r} != {ob.get(k)!r}"
        for k in sorted(oa.keys() | ob.keys())
        if oa.get(k) != ob.get(k)
    ]
    ea, eb = a.keyed_env(), b.keyed_env()
    out += [
        f"${k}: {ea.get(k)!r} != {eb.get(k)!r}"
        for k in sorted(ea.keys() | eb.keys())
        if ea.get(k) != eb.get(k)
    ]
    return out


def main(argv: Sequence[str]) -> int:
    """``key <record>`` | ``pick <record> <script's warm folder>`` | ``diff <record> <record>``"""
    if len(argv) == 3 and argv[0] == "diff":
        print("\n".join(differences(Record.read(Path(argv[1])), Record.read(Path(argv[2])))))
        return 0
    if len(argv) == 2 and argv[0] == "key":
        print(Record.read(Path(argv[1])).key())
        return 0
    if len(argv) == 3 and argv[0] == "pick":
        choice = pick(Record.read(Path(argv[1])), trees_of(Path(argv[2])))
        differs = ",".join(choice.differs)
        print(f"{choice.how}\t{choice.tree or ''}\t{differs}")
        return 0
    print(main.__doc__, file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

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

Among the trees of one key (several stock layouts configure alike), the one whose
layer files differ from the request's in the fewest lines is copied: a one-key change of a
stock layout starts from that very layout.

What the objects of a tree keep, and which of them a change reaches, is objects.py's.

The request's own maps are renamed ``layer-0``, ``layer-1``, ... (``canon``): layer
names are compiled into the firmware, so a tree is only reusable by requests that use
the same names, and build.sh, warm.sh and the server's warm list
(tools/warmlist.py) all name them by this one rule.

Stdlib only and runnable as a script: the controller images carry a copy of this file
(``/usr/local/lib/kiisrv/warmtree.py``) and run it with their own python3.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
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
    "KIISRV_KLL_TIMEOUT": "how long the KLL step may take (bin/kll-limit)",
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


def differing_lines(request: Mapping[str, str], tree: Path) -> int:
    """How many lines of the layer files (canonical name -> text) the request and the
    tree do not have in common, either way: how much of the tree a build redoes. A tree
    with more than the request (another release's animation, say) differs too: counting
    only shared lines, it tied with the very same layers and could win."""
    differ = 0
    for name, text in request.items():
        try:
            theirs = (tree / name).read_text(errors="replace").splitlines()
        except OSError:
            theirs = []
        mine: dict[str, int] = {}
        lines = text.splitlines()
        for line in lines:
            mine[line] = mine.get(line, 0) + 1
        shared = 0
        for line in theirs:
            if mine.get(line, 0) > 0:
                mine[line] -= 1
                shared += 1
        differ += len(lines) + len(theirs) - 2 * shared
    return differ


def pick(
    request: Record,
    trees: Iterable[tuple[Path, Record]],
    layers: Mapping[str, str] | None = None,
) -> Choice:
    """The tree to start from: the same configure (of those, the one whose layer files
    differ least from the request's ``layers``), else the nearest, else none."""
    key = request.key()
    best: Choice | None = None
    same: list[Path] = []
    for path, record in sorted(trees, key=lambda t: str(t[0])):
        if record.key() == key:
            same.append(path)
            continue
        differs = _reconfigurable(request, record)
        if differs is not None and (best is None or len(differs) < len(best.differs)):
            best = Choice("reconfigure", path, differs)
    if same:
        chosen = min(same, key=lambda p: differing_lines(layers or {}, p)) if layers else same[0]
        return Choice("warm", chosen)
    return best or Choice("cold")


def trees_of(folder: Path) -> list[tuple[Path, Record]]:
    """The warm trees of one keyboard script with their records: ``<folder>/<key>/<label>/``
    (one per stock layout configured alike), or ``<folder>/<key>/`` (older images)."""
    found = []
    if folder.is_dir():
        candidates = [t for d in folder.iterdir() if d.is_dir() for t in (d, *_subfolders(d))]
        for tree in candidates:
            record = tree / RECORD_NAME
            if record.is_file():
                try:
                    found.append((tree, Record.read(record)))
                except ValueError:
                    continue
    return found


def _subfolders(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]


# -- the request's maps, as a tree names them --------------------------------------------


@dataclass(frozen=True)
class Canon:
    """The maps as a build names them: ``renamed`` (a request's stem -> ``layer-<n>``),
    the DefaultMapOverride and PartialMapsExpandedOverride a keyboard script is given."""

    renamed: dict[str, str]
    default: str
    partial: str

    def shell(self) -> str:
        """As env.sh sets them (``eval``): ``CANON`` (an associative array), ``CANON_DEFAULT``,
        ``CANON_PARTIAL``."""
        pairs = " ".join(f"[{shlex.quote(k)}]={shlex.quote(v)}" for k, v in self.renamed.items())
        return (
            f"CANON=({pairs})\n"
            f"CANON_DEFAULT={shlex.quote(self.default)}\n"
            f"CANON_PARTIAL={shlex.quote(self.partial)}\n"
        )


def canonical_maps(default: str, partial: str, own: Iterable[str]) -> Canon:
    """The request's own maps (``own``: the stems it has a ``.kll`` file of) renamed
    ``layer-0``, ``layer-1``, ... in the order the two overrides name them; other maps
    (stdFuncMap, infinity_ergodox/lcdFuncMap) keep their names. Layers are split on
    ``;`` as bash's ``read -a`` splits them (a final empty field dropped, an empty
    field before any map gives no separator); ``;`` is kept as what it means to a
    keyboard script, no partial maps at all (an empty override would be its own stock
    layers)."""
    mine = set(own)
    renamed: dict[str, str] = {}

    def rename(word: str) -> str:
        return renamed.setdefault(word, f"layer-{len(renamed)}") if word in mine else word

    canon_default = " ".join(rename(w) for w in default.split())
    fields = partial.split(";") if partial else []
    if fields and fields[-1] == "":
        fields.pop()
    canon_partial = ""
    for layer in fields:
        words = " ".join(rename(w) for w in layer.split())
        canon_partial += (";" if canon_partial else "") + words
    if not canon_partial and partial:
        canon_partial = ";"
    return Canon(renamed, canon_default, canon_partial)


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


def _layers(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text(errors="replace") for p in sorted(folder.glob("layer-*.kll"))}


def main(argv: Sequence[str]) -> int:
    """``key <record>`` | ``pick <record> <script's warm folder> [<request layers folder>]``
    | ``diff <record> <record>`` | ``canon <kll folder>`` (the overrides from the
    environment)"""
    if len(argv) == 2 and argv[0] == "canon":
        own = [p.stem for p in Path(argv[1]).glob("*.kll")]
        canon = canonical_maps(
            os.environ.get("DefaultMapOverride", ""),  # noqa: SIM112 (the scripts' name)
            os.environ.get("PartialMapsExpandedOverride", ""),  # noqa: SIM112
            own,
        )
        print(canon.shell(), end="")
        return 0
    if len(argv) == 4 and argv[0] == "pick":
        choice = pick(Record.read(Path(argv[1])), trees_of(Path(argv[2])), _layers(Path(argv[3])))
        print(f"{choice.how}\t{choice.tree or ''}\t{','.join(choice.differs)}")
        return 0
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

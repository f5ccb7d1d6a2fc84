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

**What a changed ``kll_defs.h`` reaches.** The sources are compiled with ``-ggdb3``, so
every macro of the generated ``kll_defs.h`` is in every object's debug information, and
ninja recompiles every object that includes it (32 of KType's 37) when any macro
changes, which a one-key change does (one result fewer: ``ResultMacroNum_KLL``). Yet
an object's *code* is a function of its preprocessed tokens, which depend only on the
macros its preprocessing expanded or tested; the firmware (``.dfu.bin``, loadable
sections only) never carries debug information. So at image build the macro names
each object's preprocessing used are recorded (``usage``: ``gcc -E -dU``, which lists
every macro expanded or tested, defined or not), and when the KLL step writes a
``kll_defs.h`` with other definitions, only the objects that used a changed name are
removed (``prune``) and the header keeps its old timestamp: ninja rebuilds those, and
the firmware is byte for byte that of a build from nothing (``kiisrv canary --verify``).
A tree without the record rebuilds every includer, as before.

**Smaller objects, the same link.** A tree's objects keep their debug sections, emptied
(``shrink``): ``objcopy --strip-debug`` would remove them and so renumber every input
section after them, and GNU ld names the long-branch veneers it adds (the SAM4S boards
call functions in RAM) after the number of the calling section, then lays them out in
the order of those names: Kira's and GeminiDuskDawn's firmware came out with two
veneers swapped, different bytes from a build from nothing. Emptied, the objects are a
fifth of their size and every section keeps its number.

Stdlib only and runnable as a script: the controller images carry a copy of this file
(``/usr/local/lib/kiisrv/warmtree.py``) and run it with their own python3.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

RECORD_NAME = ".kiisrv-configure"
# A tree's record of the macro names each object's preprocessing used (``usage``).
USAGE_NAME = ".kiisrv-macros.json.gz"

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


# -- what a changed kll_defs.h reaches -----------------------------------------------------

_DEFINE = re.compile(r"^\s*#\s*define\s+(\w+)(.*)$")
_USED = re.compile(rb"^#(?:define|undef)\s+(\w+)", re.MULTILINE)
# Options of a compile that only say where its outputs go (dropped with their argument).
_OUTPUT_OPTIONS = {"-o", "-MF", "-MT", "-MQ"}
_OUTPUT_FLAGS = {"-c", "-MD", "-MMD"}


def defines(text: str) -> dict[str, str]:
    """A header's macros: name -> definition (parameters and body, spacing normalised;
    continued lines joined)."""
    found: dict[str, str] = {}
    for line in text.replace("\\\n", " ").splitlines():
        matched = _DEFINE.match(line)
        if matched:  # F(x) is a function-like macro, F (x) an object-like one
            kind = "(" if matched[2].startswith("(") else " "
            found[matched[1]] = kind + " ".join(matched[2].split())
    return found


def changed_macros(old: str, new: str) -> set[str]:
    """The names defined differently (or only) in one of two versions of a header."""
    a, b = defines(old), defines(new)
    return {name for name in a.keys() | b.keys() if a.get(name) != b.get(name)}


# Recorded for an object whose preprocessing could not be run: any change reaches it.
ANY = "*"


def stale_objects(usage: Mapping[str, Iterable[str]], changed: set[str]) -> list[str]:
    """The objects whose preprocessing used one of the ``changed`` macros."""
    if not changed:
        return []
    return sorted(
        obj for obj, names in usage.items() if ANY in (used := set(names)) or changed & used
    )


def preprocess_command(command: Sequence[str]) -> tuple[str, list[str]]:
    """The object a compile command writes, and the command that preprocesses its
    source instead, listing the macros used (``-E -dU``, to stdout; no ccache)."""
    args = list(command)
    obj = ""
    out: list[str] = []
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg in _OUTPUT_OPTIONS:
            skip = True
            if arg == "-o" and i + 1 < len(args):
                obj = args[i + 1]
            continue
        if arg in _OUTPUT_FLAGS:
            continue
        out.append(arg)
    if not obj or not out:
        raise ValueError(f"not a compile command: {shlex.join(args)[:200]}")
    out[0] = os.path.basename(out[0])  # the compiler itself, not ccache's link to it
    return obj, [*out, "-E", "-dU", "-o", "-"]


def used_macros(preprocessed: bytes) -> list[str]:
    """The names ``-dU`` output says were expanded or tested (defined or not)."""
    return sorted({m.decode() for m in _USED.findall(preprocessed)})


def write_usage(tree: Path) -> int:
    """Records, for every compile of ``tree`` (compile_commands.json), the macro names its
    preprocessing used; how many objects. Warm time only: it runs the compiler."""
    names: dict[str, int] = {}
    objects: dict[str, list[int]] = {}
    for entry in json.loads((tree / "compile_commands.json").read_text()):
        command = entry.get("arguments") or shlex.split(entry.get("command", ""))
        try:
            obj, preprocess = preprocess_command(command)
        except ValueError:
            continue  # not a compile (the test double's stand-in): nothing it writes is kept
        done = subprocess.run(preprocess, cwd=entry["directory"], capture_output=True)
        used = used_macros(done.stdout) if done.returncode == 0 else [ANY]
        objects[obj] = [names.setdefault(n, len(names)) for n in used]
    table = sorted(names, key=names.__getitem__)
    doc = {"names": table, "objects": objects}
    (tree / USAGE_NAME).write_bytes(gzip.compress(json.dumps(doc).encode(), mtime=0))
    return len(objects)


def read_usage(tree: Path) -> dict[str, list[str]] | None:
    """Object -> macro names used, or None when the tree has no record."""
    try:
        doc = json.loads(gzip.decompress((tree / USAGE_NAME).read_bytes()))
    except (OSError, ValueError, EOFError):
        return None
    table = doc["names"]
    return {obj: [table[i] for i in idx] for obj, idx in doc["objects"].items()}


def prune(tree: Path, old_defs: Path, new_defs: Path) -> list[str] | None:
    """Removes the objects a new ``kll_defs.h`` reaches; the ones removed, or None when
    the tree has no usage record (then nothing is removed: every includer rebuilds)."""
    usage = read_usage(tree)
    if usage is None:
        return None
    changed = changed_macros(
        old_defs.read_text(errors="surrogateescape"), new_defs.read_text(errors="surrogateescape")
    )
    gone = stale_objects(usage, changed)
    for obj in gone:
        (tree / obj).unlink(missing_ok=True)
    return gone


# -- smaller objects, the same link ------------------------------------------------------

_SECTION = re.compile(r"^\s*\[\s*\d+\]\s+(\S+)\s", re.M)


def debug_sections(listing: str) -> list[str]:
    """The distinct debug section names in ``readelf -SW`` output (relocations apart)."""
    return sorted({n for n in _SECTION.findall(listing) if n.startswith(".debug_")})


def shrink_command(objcopy: str, obj: Path, names: Iterable[str], empty: Path) -> list[str]:
    """``objcopy`` emptying ``obj``'s debug sections and dropping their relocations in
    place, every section kept (its number is what the link goes by: see above).
    ``--update-section`` empties the first section of a name, which holds nearly all of
    it; the small ``.debug_macro`` sections of one header each stay."""
    update = [arg for n in names for arg in ("--update-section", f"{n}={empty}")]
    return [objcopy, "--remove-relocations=.debug_*", *update, str(obj)]


def shrink(tree: Path, objcopy: str, readelf: str) -> int:
    """Empties the debug sections of every object of ``tree``, keeping each object's
    timestamp (ninja would otherwise rebuild it); how many objects. Warm time only."""
    empty = tree / ".kiisrv-empty"
    empty.write_bytes(b"")
    count = 0
    try:
        for obj in sorted(tree.rglob("*.obj")):
            listing = subprocess.run(
                [readelf, "-SW", str(obj)], capture_output=True, text=True, check=True
            ).stdout
            names = debug_sections(listing)
            if not names:
                continue
            stat = obj.stat()
            subprocess.run(shrink_command(objcopy, obj, names, empty), check=True)
            os.utime(obj, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            count += 1
    finally:
        empty.unlink()
    return count


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
    | ``diff <record> <record>`` | ``usage <tree>`` | ``prune <tree> <old defs> <new defs>``"""
    if len(argv) == 2 and argv[0] == "usage":
        print(f"{write_usage(Path(argv[1]))} objects")
        return 0
    if len(argv) == 4 and argv[0] == "shrink":
        print(f"{shrink(Path(argv[1]), argv[2], argv[3])} objects")
        return 0
    if len(argv) == 4 and argv[0] == "prune":
        gone = prune(Path(argv[1]), Path(argv[2]), Path(argv[3]))
        if gone is None:
            return 1
        print(f"kll_defs.h changed: {len(gone)} object(s) to rebuild {' '.join(gone)}")
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

"""What a warm tree's objects keep, and which of them a changed ``kll_defs.h`` reaches.

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

Stdlib only and runnable as a script, like warmtree.py: the controller images carry a
copy (``/usr/local/lib/kiisrv/objects.py``); warm.sh runs ``usage`` and ``shrink`` on
each tree, bin/kll runs ``prune`` when the KLL step writes a new ``kll_defs.h``.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

# A tree's record of the macro names each object's preprocessing used (``usage``).
USAGE_NAME = ".kiisrv-macros.json.gz"

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


def main(argv: Sequence[str]) -> int:
    """``usage <tree>`` | ``prune <tree> <old defs> <new defs>``
    | ``shrink <tree> <objcopy> <readelf>``"""
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
    print(main.__doc__, file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

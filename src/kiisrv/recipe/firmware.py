"""What each firmware version offers a layout: capabilities per keyboard, function-map keys.

A key the firmware lacks (``ledTest`` with one argument where v0.5.7 declares two,
``storage_control`` on a keyboard without storage, an LED key on a board without LEDs)
used to start a container and fail in the KLL compiler. The facts that decide it are in
the sources: each keyboard script names its modules, each module's ``setup.cmake``
adds more, and each module's ``capabilities.kll`` declares its functions with their
arguments. The KLL compiler package ships the function maps (``stdFuncMap``,
``infinity_ergodox/lcdFuncMap``) whose keys a layer can only use with the map named.

The server needs neither the controller sources nor the ``kll`` package at run time:
``firmware.json`` beside this module is derived from them by ``python -m
kiisrv.recipe.firmware`` (see ``main``), and a test re-derives it when the sources are at hand.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

DATA = Path(__file__).with_name("firmware.json")

# The keyboard scripts the server runs (kll.BUILD_SCRIPTS); ergodox.bash builds two halves.
SCRIPTS = (
    "infinity.bash",
    "infinity_led.bash",
    "icpad.bash",
    "ergodox.bash",
    "whitefox.bash",
    "k-type.bash",
    "kira.bash",
    "geminiduskdawn.bash",
)
_HALVES = {"ergodox.bash": ("ergodox-l.bash", "ergodox-r.bash")}
FUNCTION_MAPS = ("stdFuncMap", "infinity_ergodox/lcdFuncMap")

_MODULE_VAR = re.compile(r'^(Scan|Macro|Output|Debug)Module="?([^"\s]+)"?', re.MULTILINE)
_ADD_MODULE = re.compile(r"^\s*AddModule\s*\(\s*(\w+)\s+([\w./-]+)\s*\)", re.MULTILINE)
_CAPABILITY = re.compile(r"^\s*(\w+)\s*=>\s*\w+_capability\s*\(([^)]*)\)", re.MULTILINE)
_FUNCMAP_KEY = re.compile(r'^\s*U"([^"]+)"\s*::', re.MULTILINE)

Reader = Callable[[str], str | None]


def _capabilities(text: str) -> dict[str, list[str]]:
    """``name => C_capability( arg : width, ... );`` -> {name: [arg, ...]}."""
    found = {}
    for name, args in _CAPABILITY.findall(text):
        found[name] = [a.split(":")[0].strip() for a in args.split(",") if a.strip()]
    return found


def _script_capabilities(read: Reader, script: str) -> dict[str, list[str]] | None:
    """Every capability the script's modules declare, as CMake's AddModule collects them."""
    text = read(f"Keyboards/{script}")
    if text is None:
        return None
    found: dict[str, list[str]] = {}
    seen: set[str] = set()
    todo = [f"{kind}/{name}" for kind, name in _MODULE_VAR.findall(text)]
    while todo:
        module = todo.pop(0)
        if module in seen:
            continue
        seen.add(module)
        setup = read(f"{module}/setup.cmake") or ""
        todo += [f"{kind}/{name}" for kind, name in _ADD_MODULE.findall(setup)]
        found.update(_capabilities(read(f"{module}/capabilities.kll") or ""))
    return found


def derive_capabilities(read: Reader) -> dict[str, dict[str, list[str]]]:
    """Per keyboard script: capability name -> argument names (one source tree)."""
    table = {}
    for script in SCRIPTS:
        parts = [_script_capabilities(read, s) for s in _HALVES.get(script, (script,))]
        if any(p is None for p in parts):
            continue
        # A split board runs one firmware per half: a key must build on both.
        merged = dict(parts[0] or {})
        for other in parts[1:]:
            merged = {k: v for k, v in merged.items() if (other or {}).get(k) == v}
        table[script] = dict(sorted(merged.items()))
    return table


def derive_function_maps(kll_package: Path) -> dict[str, list[str]]:
    """The keys each function map defines, uppercased as the KLL compiler compares them."""
    maps = {}
    for name in FUNCTION_MAPS:
        text = (kll_package / "layouts" / f"{name}.kll").read_text(encoding="utf-8")
        maps[name] = sorted({k.upper() for k in _FUNCMAP_KEY.findall(text)})
    return maps


def git_reader(repo: Path, rev: str) -> Reader:
    def read(path: str) -> str | None:
        done = subprocess.run(
            ["git", "-C", str(repo), "show", f"{rev}:{path}"],
            capture_output=True,
            check=False,
        )
        return done.stdout.decode("utf-8", "replace") if done.returncode == 0 else None

    return read


def derive(controller: Path, kll_packages: dict[str, Path]) -> dict[str, Any]:
    """The whole table: ``{tag: {"capabilities": ..., "function_maps": ...}}``."""
    return {
        tag: {
            "capabilities": derive_capabilities(git_reader(controller, tag)),
            "function_maps": derive_function_maps(package),
        }
        for tag, package in sorted(kll_packages.items())
    }


@cache
def table() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DATA.read_text(encoding="utf-8"))
    return data


def tags() -> list[str]:
    """The versions the table knows, newest first."""
    return sorted(table(), key=lambda t: [int(n) for n in re.findall(r"\d+", t)], reverse=True)


def capabilities(tag: str, script: str) -> dict[str, list[str]] | None:
    """What ``script``'s firmware at ``tag`` declares; None when the table does not know."""
    found: dict[str, list[str]] | None = table().get(tag, {}).get("capabilities", {}).get(script)
    return found


def known_capabilities() -> frozenset[str]:
    """Every capability any keyboard of any version declares."""
    return frozenset(
        name
        for version in table().values()
        for caps in version["capabilities"].values()
        for name in caps
    )


@cache
def function_map_keys(map_name: str, tag: str | None = None) -> frozenset[str]:
    """The keys (uppercased) the function map defines at ``tag``; without one, any version's.

    Both KLL packages the images install define the same keys, so the server names the
    map by what any version's map defines.
    """
    versions: Iterable[dict[str, Any]] = (
        [table()[tag]] if tag in table() else list(table().values())
    )
    return frozenset(k for v in versions for k in v["function_maps"].get(map_name, []))


def main(argv: Sequence[str] | None = None) -> int:
    """Re-derive firmware.json from a controller git repository and KLL packages."""
    parser = argparse.ArgumentParser(
        prog="python -m kiisrv.recipe.firmware",
        description="Derive firmware.json: capabilities per keyboard script and version "
        "from a kiibohd/controller git repository, function-map keys from the kll package "
        "each version's image installs (the folder holding layouts/stdFuncMap.kll).",
    )
    parser.add_argument("controller", type=Path, help="kiibohd/controller git directory")
    parser.add_argument(
        "--version",
        action="append",
        required=True,
        metavar="TAG=KLL_DIR",
        help="e.g. v0.5.7=/path/site-packages/kll (repeat per version)",
    )
    parser.add_argument("-o", "--output", type=Path, default=DATA)
    args = parser.parse_args(argv)
    packages = {}
    for item in args.version:
        tag, sep, folder = item.partition("=")
        if not sep:
            parser.error(f"--version {item!r}: expected TAG=KLL_DIR")
        packages[tag] = Path(folder)
    data = derive(args.controller, packages)
    args.output.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The house's shape, checked: layers that import only downwards, no import circles, and
pure parts that load nothing of I/O (docs/architecture.md).

Every import counts, wherever it is written: at the top, inside a function (a lazy
import is still a dependency) or under ``TYPE_CHECKING`` (mypy reads it).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from tests.helpers import REPO

SRC = REPO / "src"
PACKAGE = SRC / "kiisrv"

# Lowest first: a unit may import its own modules and those of units below it, never
# above. A unit is a subpackage or a top-level module.
LAYERS: list[set[str]] = [
    {"errors", "jobs", "privacy", "controller"},  # controller: the image's, stdlib only
    {"clients", "signing"},
    {"settings"},
    {"recipe"},
    {"store"},
    {"build"},
    {"proxy", "cluster"},
    {"assembly"},
    {"core"},
    {"tools"},
    {"web"},
    {"cli"},
    {"__main__"},
]
RANK = {unit: n for n, layer in enumerate(LAYERS) for unit in layer}

# Parts that decide what a build is, or what the engine may be asked, and nothing else:
# a test, the image, or the socket proxy loads them without any client library.
PURE = ["kiisrv.recipe", "kiisrv.proxy.policy", "kiisrv.controller.warmtree", "kiisrv.clients"]
IO_LIBRARIES = ["redis", "docker", "httpx", "psycopg", "arq", "anyio", "starlette", "uvicorn"]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The kiisrv modules ``path`` imports, from anywhere in the file."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("kiisrv"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    out.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
    out.discard("kiisrv")
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def _unit(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_every_unit_has_a_layer() -> None:
    units = {_unit(m) for m in _modules() if m != "kiisrv"}
    assert units - set(RANK) == set(), "add the new unit to LAYERS (and docs/architecture.md)"


def test_every_import_goes_downwards() -> None:
    upwards = sorted(
        f"{module} -> {target}"
        for module, targets in _graph().items()
        for target in targets
        if module != "kiisrv"
        and _unit(module) != _unit(target)
        and RANK[_unit(module)] <= RANK[_unit(target)]
    )
    assert upwards == []


def test_there_are_no_import_circles() -> None:
    """Tarjan's strongly connected components over every module's imports."""
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert circles == []


def test_the_checks_see_a_circle_and_an_upward_import(tmp_path: Path) -> None:
    """The walk above finds imports in functions and under TYPE_CHECKING too."""
    a = tmp_path / "a.py"
    a.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from kiisrv.core import Kiisrv\n"
        "def f():\n    from kiisrv.store import storage\n"
    )
    modules = {"kiisrv.core": a, "kiisrv.store": a, "kiisrv.store.storage": a}
    assert _imports(a, modules) == {"kiisrv.core", "kiisrv.store.storage"}


def _pure_modules() -> list[str]:
    return sorted(m for m in _modules() if any(m == p or m.startswith(p + ".") for p in PURE))


@pytest.mark.parametrize("module", _pure_modules())
def test_pure_parts_import_nothing_of_io(module: str) -> None:
    """Imported in a fresh interpreter where every I/O client library fails to import:
    a pure part that pulls one in (even through another module) fails here."""
    blocker = (
        "import sys\n"
        "class Block:\n"
        f"    names = {IO_LIBRARIES!r}\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in self.names:\n"
        "            raise ImportError(f'{name} is I/O: not for a pure part')\n"
        "        return None\n"
        "sys.meta_path.insert(0, Block())\n"
        f"import {module}\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & set(Block.names))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", blocker], capture_output=True, text=True, cwd=SRC, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_layers_are_documented() -> None:
    """docs/architecture.md maps every unit; a new one is added there and here."""
    doc = (REPO / "docs" / "architecture.md").read_text()
    missing = [u for u in RANK if u != "__main__" and f"`{u}" not in doc]
    assert missing == []


# Every setting, declared once with its documentation (the datasette way): its length is
# the list of settings, not a second concept.
LONG_BY_NATURE = {"kiisrv.settings"}


def test_modules_stay_small() -> None:
    """One concept per module: none past 420 lines (a reader's afternoon)."""
    lines: dict[str, int] = defaultdict(int)
    for name, path in _modules().items():
        if name not in LONG_BY_NATURE:
            lines[name] = len(path.read_text().splitlines())
    assert {n: c for n, c in lines.items() if c > 420} == {}

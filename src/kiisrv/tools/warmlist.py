"""Which warm trees a controller image gets: the configurations the layouts folder uses.

A warm tree only serves requests whose configure is the same (warmtree.py), so one
tree per keyboard script is not enough: WhiteFox has six scancode maps and the Infinity
60% boards three, and a one-layer Blank layout leaves the script's stock layers in
(``PartialMapsExpandedOverride`` empty) where an edited one does not. The list is
made by the server's own rules (kll.build_params) from every stock layout, on both
channels, plus generic trees (1-3 layers, the script's default layout) for layouts a
user starts from scratch; it is committed as ``docker/controller/warm.list`` and
read by warm.sh at image build time (``kiisrv warm-list`` writes it; a test checks the
committed file against the conformance layouts).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kiisrv.controller import warmtree
from kiisrv.errors import KiisrvError
from kiisrv.recipe import kll
from kiisrv.recipe.layout import parse_layout
from kiisrv.recipe.layouts import LayoutStore
from kiisrv.recipe.versions import Version

# The scripts the images warm for any layout; icpad.bash is not in every release.
GENERIC_SCRIPTS = (
    "infinity.bash",
    "infinity_led.bash",
    "ergodox.bash",
    "whitefox.bash",
    "k-type.bash",
    "kira.bash",
    "geminiduskdawn.bash",
)
GENERIC_LAYERS = (1, 2, 3)
SPLIT_SCRIPTS = frozenset({"ergodox.bash"})


@dataclass(frozen=True, order=True)
class WarmConfig:
    """One warm tree: a keyboard script run with these canonical maps and Layout."""

    script: str  # as run: ergodox-l.bash, not ergodox.bash
    layout: str  # "" leaves the script's default
    default_map: str
    partial_maps: str

    def line(self) -> str:
        """Tab-separated; ``-`` for an empty field (the shell's read collapses tabs)."""
        fields = (self.script, self.layout, self.default_map, self.partial_maps)
        return "\t".join(f or "-" for f in fields)


def canonical(params: kll.BuildParams, stems: list[str]) -> tuple[str, str]:
    """The maps as build.sh names them inside the container: the image's own rule
    (controller/warmtree.py canonical_maps, which env.sh runs)."""
    canon = warmtree.canonical_maps(params.default_map, params.partial_maps, stems)
    return canon.default, canon.partial


def _scripts(params: kll.BuildParams) -> list[str]:
    if not params.split:
        return [params.script]
    stem = params.script.removesuffix(".bash")
    return [f"{stem}-l.bash", f"{stem}-r.bash"]


def _generic() -> Iterable[WarmConfig]:
    for script in GENERIC_SCRIPTS:
        fmap = "infinity_ergodox/lcdFuncMap" if script in SPLIT_SCRIPTS else "stdFuncMap"
        params_split = script in SPLIT_SCRIPTS
        for count in GENERIC_LAYERS:
            partial = ";".join(f"layer-{n}" for n in range(1, count))
            params = kll.BuildParams(script, params_split, f"{fmap} layer-0", partial, "")
            for run in _scripts(params):
                yield WarmConfig(run, "", params.default_map, partial)


def configurations() -> list[WarmConfig]:
    """The generic configurations (1-3 layers of each script's default), sorted: the
    stock layouts' own trees come from their inputs (``stock_inputs``)."""
    return sorted(set(_generic()))


# -- the stock layouts themselves, as requests --------------------------------------------


@dataclass(frozen=True)
class WarmInput:
    """A stock layout exactly as a request for it builds: its ``.kll`` files and build
    parameters. warm.sh configures *and compiles* a tree with them, so a one-key change
    of that layout rebuilds only what its change reaches (warmtree.py)."""

    label: str  # names the tree among those of one configure: the layout file's stem
    files: tuple[kll.KllFile, ...]
    params: kll.BuildParams

    def environment(self) -> str:
        return "".join(f"{k}={v}\n" for k, v in sorted(self.params.environment().items()))

    def script(self) -> str:
        return f"script={self.params.script}\n"


def versions_of(tag: str | None) -> list[Version]:
    """The versions one image (its release tag) builds; for a tag none of them has (the
    test double's), the latest and lts channels."""
    from kiisrv.recipe.versions import DEFAULT_VERSIONS

    found = [v for v in DEFAULT_VERSIONS if tag and v.git_tag == tag]
    return found or [v for v in DEFAULT_VERSIONS if v.name in ("latest", "lts")]


def stock_inputs(layouts_dir: Path, versions: Iterable[Version]) -> list[WarmInput]:
    """Every stock layout a user can pick, as each of ``versions`` builds it (what the
    server would refuse for a version is left out); the same inputs once."""
    from kiisrv.recipe import support
    from kiisrv.tools.canary import layout_files

    store = LayoutStore(layouts_dir)
    seen: set[tuple[tuple[kll.KllFile, ...], kll.BuildParams]] = set()
    found = []
    for path in layout_files(layouts_dir):
        layout = parse_layout(json.loads(path.read_bytes()), path.name)
        for version in versions:
            lts = version.lts
            try:
                support.check(layout, version)
                base = store.load_base(kll.base_file_names(layout, lts))
                support.check_keys(layout, base, version)
                generated = kll.generate(layout, base, lts)
                files = tuple(kll.KllFile(kll.sanitise(f.name), f.content) for f in generated)
                params = kll.build_params(layout, list(files))
            except KiisrvError:
                continue  # not buildable by this version: nothing to warm
            if (files, params) in seen:
                continue
            seen.add((files, params))
            label = path.stem.replace(".", "_") + ("-lts" if lts else "")
            found.append(WarmInput(label, files, params))
    return found


def write_inputs(inputs: Iterable[WarmInput], out: Path) -> int:
    """One folder per input: its ``.kll`` files and ``env`` (``NAME=value`` lines), as
    warm.sh reads them; how many."""
    n = 0
    for item in inputs:
        folder = out / item.label
        folder.mkdir(parents=True, exist_ok=True)
        for f in item.files:
            (folder / f.name).write_text(f.content, encoding="utf-8")
        (folder / "env").write_text(item.environment(), encoding="utf-8")
        (folder / "script").write_text(item.script(), encoding="utf-8")
        n += 1
    return n


def render(configs: Iterable[WarmConfig]) -> str:
    lines = [
        "# Warm trees of the controller images (docker/controller/warm.sh), one a line:",
        "# script <TAB> Layout <TAB> DefaultMapOverride <TAB> PartialMapsExpandedOverride",
        "# (- for empty: the script's default Layout; the script's own stock partial maps)",
        "# Generic trees only: the stock layouts' own come from `kiisrv warm-inputs`.",
        "# Made by `kiisrv warm-list` (src/kiisrv/tools/warmlist.py): do not edit.",
    ]
    lines += [c.line() for c in configs]
    return "\n".join(lines) + "\n"

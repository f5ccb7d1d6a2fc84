"""Layout -> ``.kll`` files, byte for byte as the reference server wrote them.

Pure: the caller reads the base layout and passes it in. The rules are in
``shared/spec/KLL_GENERATION.md``; the conformance tests hold this module to the
reference output. Quirks of the reference (the key order of the blocks, the blank
lines, what LTS comments out) are reproduced on purpose, since the
controller sources of each version were written against them.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from kiisrv.errors import InvalidLayout, UnknownKeyboard
from kiisrv.recipe import firmware
from kiisrv.recipe.layout import Layout, MatrixKey

# header.Name lowercased -> the controller's build script.
BUILD_SCRIPTS: dict[str, str] = {
    "md1": "infinity.bash",
    "md1.1": "infinity_led.bash",
    "infinity": "infinity.bash",
    "icpad": "icpad.bash",
    "mdergo1": "ergodox.bash",
    "ergodox": "ergodox.bash",
    "whitefox": "whitefox.bash",
    "ktype": "k-type.bash",
    "k-type": "k-type.bash",
    "kira": "kira.bash",
    "gemini": "geminiduskdawn.bash",
    "geminidusk": "geminiduskdawn.bash",
    "geminidawn": "geminiduskdawn.bash",
    "geminiduskdawn": "geminiduskdawn.bash",
}
SPLIT_KEYBOARDS = frozenset({"mdergo1"})
_NOT_FILE_CHAR = re.compile(r"[^A-Za-z0-9_.\- ]")


@dataclass(frozen=True)
class KllFile:
    name: str
    content: str

    @property
    def stem(self) -> str:
        return self.name.removesuffix(".kll")


@dataclass(frozen=True)
class BuildParams:
    """What the controller container needs besides the files (BUILD_CONTRACT.md)."""

    script: str
    split: bool
    default_map: str
    partial_maps: str
    layout: str

    def environment(self) -> dict[str, str]:
        env = {
            "DefaultMapOverride": self.default_map,
            "PartialMapsExpandedOverride": self.partial_maps,
            "Layout": self.layout,
        }
        if self.split:
            env["SPLIT_KEYBOARD"] = "1"
        return env


def sanitise(value: str | None) -> str:
    return (value or "").replace(" ", "_")


def ascii_text(value: str | None) -> str:
    """``value`` in printable ASCII: accents dropped (``Ç`` -> ``C``), anything else ``_``.

    A layout's ``Layout`` and ``Variant`` may be any printable text (a user typed
    ``ÇaVa`` into an imported layout); they reach file names, the keyboard script's
    ``Layout`` and KLL strings, which the controller's tools read as ASCII.
    """
    text = unicodedata.normalize("NFKD", value or "")
    return "".join(c if " " <= c <= "~" else "_" for c in text if not unicodedata.combining(c))


def file_text(value: str | None) -> str:
    """``value`` as part of a file name: the characters the reference allowed, spaces kept."""
    return _NOT_FILE_CHAR.sub("_", ascii_text(value))


def file_part(value: str | None) -> str:
    """``value`` as part of a file name or a build parameter: no spaces either."""
    return sanitise(file_text(value))


def _kll_text(value: str) -> str:
    """``value`` inside a KLL string: ASCII, no ``"``."""
    return ascii_text(value).replace('"', "'")


def board_name(layout: Layout) -> str:
    return sanitise(layout.header.Name)


def base_file_names(layout: Layout, lts: bool) -> list[str]:
    """The base layouts to lay the user's map over, the first that exists.

    WhiteFox on LTS takes ``<name>-<Base>.lts.json`` (KLL_GENERATION.md). The layouts
    folder has none for the AllBlank and Blank bases, and the reference answered 400;
    their own ``.json`` is the natural base there (for AllBlank it is the very file
    every ``.lts.json`` alias points to), and real v0.5.0 builds of both succeed with it.
    """
    name = board_name(layout)
    plain = f"{name}-{layout.header.Base}.json"
    if lts and name.lower() == "whitefox":
        return [f"{name}-{layout.header.Base}.lts.json", plain]
    return [plain]


def build_script(layout: Layout) -> str:
    name = board_name(layout)
    try:
        return BUILD_SCRIPTS[name.lower()]
    except KeyError:
        known = ", ".join(sorted({n for n in BUILD_SCRIPTS}))
        raise UnknownKeyboard(
            f"header.Name: no build script for keyboard {name!r} (known: {known})"
        ) from None


def format_key(value: str) -> str:
    if value.startswith("CONS:"):
        return f'CONS"{value[5:]}"'
    if value.startswith("SYS:"):
        return f'SYS"{value[4:]}"'
    return f'U"{value}"'


def _default_key(base: MatrixKey, where: str) -> str:
    action = base.layers.get(0)
    if action is None:
        raise InvalidLayout(f"base layout key {where} (code {base.code}) has no layer 0")
    return action.key


def pairs(layout: Layout, base: Layout) -> list[list[tuple[str, str]]]:
    """(default key, user's key) per layer, layers dense from 0 to the highest used."""
    layers: list[list[tuple[str, str]]] = []
    by_code = board_name(layout).lower() == "whitefox"
    index = {k.code: k for k in reversed(base.matrix)} if by_code else {}
    for i, key in enumerate(layout.matrix):
        if by_code:
            found = index.get(key.code)
            if found is None:
                continue  # the reference skips keys the base does not know
            default = _default_key(found, f"for code {key.code}")
        else:
            if i >= len(base.matrix):
                raise InvalidLayout(
                    f"matrix: {len(layout.matrix)} keys, but the base layout has "
                    f"only {len(base.matrix)}"
                )
            default = _default_key(base.matrix[i], f"#{i}")
        for number, action in key.layers.items():
            while len(layers) <= number:
                layers.append([])
            layers[number].append((default, action.key))
    return layers


# v0.5.0 declares ledControl(mode, amount) with modes 0-8, as v0.5.7 does: such calls
# are kept; any other ledControl action would fail v0.5.0's KLL compiler.
_LTS_LED_CONTROL = re.compile(r"#:ledControl\(\s*[0-8]\s*,\s*-?\d+\s*\)")


def commented_out(right: str, lts: bool) -> bool:
    """Whether the LTS rules turn this raw action into a comment (KLL_GENERATION.md)."""
    if not lts or not right.startswith("#:"):
        return False
    if "ledControl" in right:
        return not _LTS_LED_CONTROL.fullmatch(right)
    return "animation_control" in right


def _line(left: str, right: str, lts: bool) -> str:
    key = format_key(left)
    if not right.startswith("#:"):
        return f"{key} : {format_key(right)};"
    if commented_out(right, lts):
        return f"#{key} : {right};"
    return f"{key} : {right[2:]};"


def _header_block(layout: Layout) -> str:
    h = layout.header
    items = [
        ("Name", h.Name),
        ("Variant", file_part(h.Variant)),
        ("Layout", _kll_text(h.Layout)),
        ("Base", h.Base),
        ("Version", h.Version),
        ("Author", h.Author),
        ("KLL", h.KLL),
        ("Date", h.Date),
        ("Generator", h.Generator),
    ]
    return "\n".join(f'{k} = "{v}";' for k, v in items)


def _leading_comments(frame: str) -> tuple[str, str]:
    """A frame's leading ``#`` lines, and the frame after them.

    The reference copied a frame that starts with ``#`` as a whole, as a comment. The
    Configurator's editor saves frames split at ``;``, so a comment typed above a frame
    arrives as one element, ``"# comment\nP[...]"``: copied whole, its second line was a
    bare pixel list and the KLL compiler could not read the file. A frame with no line
    after its comments is copied as before (every reference layout's comment frames).
    """
    if not frame.startswith("#"):
        return "", frame
    lines = frame.split("\n")
    n = 0
    while n < len(lines) and (lines[n].startswith("#") or not lines[n].strip()):
        n += 1
    rest = "\n".join(lines[n:]).strip()
    if not rest:
        return frame, ""
    return "\n".join(lines[:n]).rstrip("\n"), rest


def _animations_block(layout: Layout, lts: bool) -> str:
    if lts or not layout.animations:
        return ""
    entries = []
    for name, anim in layout.animations.items():
        text = f"A[{name}] <= {anim.settings};\n"
        i = 1
        for frame in anim.frames:
            comment, rest = _leading_comments(frame)
            if comment:
                text += f"{comment}\n"
            if rest:
                text += f"A[{name}, {i}] <= {rest};\n"
                i += 1
        entries.append(text if i > 1 else f"### {name} is empty, skipping")
    return "\n".join(entries)


# The released Configurator (v1.1.0) writes a macro's system keys with `substring(5)`
# for the 4-character prefix `SYS:`: POWER DOWN, SLEEP and WAKE UP reach the server as
# SYS"OWER DOWN", SYS"LEEP", SYS"AKE UP", which no firmware knows. These are its only
# system keys, and no key is named like the cut ones: they are put back.
_CLIENT_CUT_SYS = {
    "OWER DOWN": "POWER DOWN",
    "OWERDOWN": "POWERDOWN",
    "LEEP": "SLEEP",
    "AKE UP": "WAKE UP",
    "AKEUP": "WAKEUP",
}
_SYS_KEY = re.compile(r'SYS"([^"\n]*)"')


def _custom_text(text: str) -> str:
    """A layer's custom KLL, with the client's cut system key names put back."""
    return _SYS_KEY.sub(lambda m: f'SYS"{_CLIENT_CUT_SYS.get(m[1], m[1])}"', text)


def generate(layout: Layout, base: Layout, lts: bool) -> list[KllFile]:
    """One file per layer, named ``<name>-<Layout>-<n>.kll``."""
    name = board_name(layout)
    if not name or not layout.header.Layout:
        return []
    header = _header_block(layout)
    defines = "\n".join(f'{d.name} = "{d.value}";' for d in layout.defines or [])
    animations = _animations_block(layout, lts)
    custom = layout.custom or {}
    files = []
    for n, layer in enumerate(pairs(layout, base)):
        lines = "\n".join(_line(left, right, lts) for left, right in layer)
        extra = f"\n\n{_custom_text(custom[n])}" if n in custom else ""
        if n == 0:
            text = f"{header}\n\n{defines}\n\n{lines}\n\n{extra}\n\n{animations}\n\n"
        else:
            text = f"{header}\n\n{lines}\n\n{extra}\n\n"
        files.append(KllFile(f"{name}-{file_text(layout.header.Layout)}-{n}.kll", text))
    return files


# A raw action that switches layers, such as `#:layerShift(1)`.
_LAYER_ACTION = re.compile(r"^#:.*layer", re.IGNORECASE)
# PartialMapsExpandedOverride that names no map: an empty one would make the keyboard
# script use its own stock layers.
NO_PARTIAL_MAPS = ";"


def function_map(layout: Layout) -> str:
    """The function map a build names before its layers (KLL_GENERATION.md)."""
    split = board_name(layout).lower() == "mdergo1"
    return "infinity_ergodox/lcdFuncMap" if split else "stdFuncMap"


def _function_key(value: str, keys: frozenset[str]) -> bool:
    """A key the function map defines: the KLL compiler compares names uppercased."""
    return not value.startswith("#:") and value.upper() in keys


def reaches_other_layers(layout: Layout) -> bool:
    keys = firmware.function_map_keys(function_map(layout))
    return any(
        _LAYER_ACTION.search(action.key) or _function_key(action.key, keys)
        for key in layout.matrix
        for number, action in key.layers.items()
        if number == 0
    )


_QUOTED_KEY = re.compile(r'\bU"([^"\n]+)"')


def custom_function_keys(text: str, keys: frozenset[str]) -> list[str]:
    """The function-map keys a layer's custom KLL names (``U"NEXT LAYER"``)."""
    return [m[1] for m in _QUOTED_KEY.finditer(text) if m[1].upper() in keys]


def _uses_function_keys(layout: Layout, number: int) -> bool:
    """A key of the layer, or its custom KLL, names a key of the function map."""
    keys = firmware.function_map_keys(function_map(layout))
    custom = (layout.custom or {}).get(number, "")
    return any(
        _function_key(action.key, keys)
        for key in layout.matrix
        for n, action in key.layers.items()
        if n == number
    ) or bool(custom_function_keys(custom, keys))


def build_params(layout: Layout, files: list[KllFile]) -> BuildParams:
    """The environment of a build (BUILD_CONTRACT.md).

    A partial layer that puts a function-map key (FUNCTION2, LOCK1, NEXT LAYER, ...: the
    keys the map itself defines, firmware.json) on a key names the function map before
    its own file, as the default map does: the KLL compiler cannot resolve those keys
    otherwise ("missing FuncMap layout", GeminiDuskDawn's FUNCTION2 on layer 1). Other
    layers are left as the reference named them, so their firmware does not change.

    A one-layer layout keeps the keyboard's stock layers (the script's own PartialMaps)
    when its layer 0 can switch to them: the Configurator's Blank layouts put FUNCTION1
    on layer 0 and rely on the stock Fn layer. When nothing can reach them they are left
    out, which changes nothing a user can press, and lets KType-Base build on v0.5.7,
    whose stock layers use animations that only KType's stock layer 0 defines.
    """
    name = board_name(layout).lower()
    extra_map = function_map(layout)
    stems = [f.stem for f in files]
    partial = ";".join(
        f"{extra_map} {stem}" if _uses_function_keys(layout, n) else stem
        for n, stem in enumerate(stems[1:], start=1)
    )
    if len(stems) == 1 and not reaches_other_layers(layout):
        partial = NO_PARTIAL_MAPS
    return BuildParams(
        script=build_script(layout),
        split=name in SPLIT_KEYBOARDS,
        default_map=" ".join([extra_map, *stems[:1]]),
        partial_maps=partial,
        layout=file_part(layout.header.Variant),
    )

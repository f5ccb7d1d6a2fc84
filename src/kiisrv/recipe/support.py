"""Which firmware version can build which layout: refusals before any container starts.

Found by real builds (``kiisrv canary``, the table in bench/compat.md). A request that
a version cannot build is answered with a 400 naming what can build it, instead of a
compiler error after a container ran. Each rule says why; a rule whose ``uses`` is
empty holds for every layout of the keyboard, otherwise only for layouts whose keys,
custom KLL or animations mention one of those words.

``check_keys`` goes to the key: a function a key or a custom KLL line calls must be one
the keyboard's firmware declares, with as many arguments (``firmware.json``, derived
from the controller sources), and on lts an animation a key starts must survive the
LTS rules, which drop the layout's animations.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from kiisrv.errors import Unsupported
from kiisrv.recipe import firmware, kll
from kiisrv.recipe.kll import board_name
from kiisrv.recipe.layout import Layout
from kiisrv.recipe.versions import DEFAULT_VERSIONS, Version


@dataclass(frozen=True)
class Rule:
    boards: frozenset[str]  # header.Name, lowercased
    container: str  # the controller image that cannot build it
    reason: str
    lts_only: bool = False
    uses: tuple[str, ...] = ()


_GEMINI = frozenset({"gemini", "geminidusk", "geminidawn", "geminiduskdawn"})

RULES: tuple[Rule, ...] = (
    Rule(
        frozenset({"kira"}),
        "controller-050",
        "the lts rules drop a layout's animations, and Kira's firmware refers to them "
        "(its pixel map names kira_wave, keys_color_cycle, ...)",
        lts_only=True,
    ),
    Rule(
        frozenset({"kira"}),
        "controller-050",
        "this layout's animations use replace:clearactive, which v0.5.0's KLL compiler "
        "does not know",
        uses=("clearactive",),
    ),
    Rule(
        _GEMINI,
        "controller-050",
        "this layout uses LED fades (fade_control, KLL_LED_Fade...), which v0.5.0 does not have",
        uses=("fade_control", "fade_layer_highlight", "KLL_LED_Fade"),
    ),
)


def _text(layout: Layout) -> str:
    """Everything of a layout that becomes KLL, to look for a feature's name in."""
    parts = [a.key for k in layout.matrix for a in k.layers.values()]
    parts += (layout.custom or {}).values()
    for anim in (layout.animations or {}).values():
        parts.append(anim.settings)
        parts += anim.frames
    return "\n".join(parts)


def check(layout: Layout, version: Version) -> None:
    """Raises Unsupported when ``version`` cannot build ``layout``."""
    board = board_name(layout).lower()
    text: str | None = None
    for rule in RULES:
        if board not in rule.boards or version.container != rule.container:
            continue
        if rule.lts_only and not version.lts:
            continue
        if rule.uses:
            text = _text(layout) if text is None else text
            if not any(word in text for word in rule.uses):
                continue
        raise Unsupported(
            f"{board_name(layout)} cannot be built with {version.name} "
            f"({version.git_tag}): {rule.reason}. Build it with latest (v0.5.7)."
        )


# Keyboard script -> the name the Configurator shows, for "what can build it".
_BOARDS = {
    "k-type.bash": "KType",
    "kira.bash": "Kira",
    "geminiduskdawn.bash": "GeminiDuskDawn",
    "infinity.bash": "MD1",
    "infinity_led.bash": "MD1.1",
    "ergodox.bash": "MDErgo1",
    "whitefox.bash": "WhiteFox",
    "icpad.bash": "ICPad",
}
# `name(args)`: a capability call (the arguments of every capability are numbers).
_CALL = re.compile(r"\b([A-Za-z_]\w*)\s*\(([^()]*)\)")
# `A[name]` not followed by `<=`: a use of an animation (start it, stop it, a trigger).
_ANIMATION_USE = re.compile(r"\bA\[\s*(\w+)\s*\](?!\s*<=)")
_ANIMATION_DEF = re.compile(r"\bA\[\s*(\w+)\s*\]\s*<=")


@dataclass(frozen=True)
class _Use:
    where: str  # "Layer 1, key ESC" or "Layer 1, custom KLL line 3"
    text: str  # the KLL as the user wrote it


def _code(line: str) -> str:
    """A KLL line without its comment (``#`` outside a quoted name)."""
    quoted = False
    for i, c in enumerate(line):
        if c == '"':
            quoted = not quoted
        elif c == "#" and not quoted:
            return line[:i]
    return line


def _uses(layout: Layout, base: Layout, lts: bool) -> Iterator[_Use]:
    """Every raw action that reaches the compiler, and where it is."""
    for n, layer in enumerate(kll.pairs(layout, base)):
        for left, right in layer:
            if right.startswith("#:") and not kll.commented_out(right, lts):
                yield _Use(f"Layer {n}, key {left}", right[2:].strip())
    for n, text in (layout.custom or {}).items():
        for i, line in enumerate(text.splitlines(), start=1):
            code = _code(line).strip()
            if code:
                yield _Use(f"Layer {n}, custom KLL line {i}", code.rstrip(";").strip())


def _split_mapping(code: str) -> tuple[str, str, str]:
    """``trigger : result`` at the first ``:`` outside quotes (``::``, ``:+`` alike)."""
    quoted = False
    for i, c in enumerate(code):
        if c == '"':
            quoted = not quoted
        elif c == ":" and not quoted:
            return code[:i], ":", code[i:].lstrip(":+-")
    return code, "", ""


def _label(tag: str) -> str:
    names = [v.name for v in DEFAULT_VERSIONS if v.git_tag == tag and v.name in ("latest", "lts")]
    return f"{names[0]} ({tag})" if names else tag


def _who_has(name: str, arity: int | None, first: str) -> str:
    """The keyboards and versions whose firmware declares ``name`` (with ``arity`` args)."""
    found: dict[str, list[str]] = {}
    for tag in firmware.tags():
        for script, board in _BOARDS.items():
            args = firmware.capabilities(tag, script) or {}
            if name in args and (arity is None or len(args[name]) == arity):
                found.setdefault(board, []).append(_label(tag))
    if not found:
        return ""
    order = sorted(found, key=lambda b: (b != first, b))
    return "; ".join(f"{b} with {', '.join(found[b])}" for b in order)


def _arguments(args: str) -> int:
    return len([a for a in args.split(",") if a.strip()])


def check_keys(layout: Layout, base: Layout, version: Version) -> None:
    """Raises Unsupported, naming the layer and key, for what the firmware cannot compile."""
    script = kll.build_script(layout)
    board = _BOARDS.get(script, board_name(layout))
    declared = firmware.capabilities(version.git_tag, script)
    known = firmware.known_capabilities()
    animations = layout.animations or {}
    in_custom = {
        name
        for text in (layout.custom or {}).values()
        for line in text.splitlines()
        for name in _ANIMATION_DEF.findall(_code(line))
    }
    here = f"the {board} firmware of {_label(version.git_tag)}"
    fkeys = firmware.function_map_keys(kll.function_map(layout))
    for use in _uses(layout, base, version.lts):
        trigger, sep, result = _split_mapping(use.text)
        if sep and "+" in re.sub(r'"[^"]*"', '""', trigger):
            named = kll.custom_function_keys(result, fkeys)
            if named:
                raise Unsupported(
                    f"{use.where}: `{use.text}`: a combination of keys cannot "
                    f"send {named[0]}, a key of the function map (the KLL compiler cannot "
                    "resolve it). Put it on a single key, or send the action it stands "
                    "for (layerShift, layerRotate, ...) instead."
                )
        if version.lts:
            for name in _ANIMATION_USE.findall(use.text):
                if name in animations and name not in in_custom:
                    raise Unsupported(
                        f"{use.where}: `{use.text}` uses animation '{name}', but lts builds "
                        "leave out a layout's animations, so the firmware would not have "
                        "it. Build it with latest (v0.5.7), or take the key out."
                    )
        if declared is None:
            continue  # a version the table does not know: the compiler will tell
        needs: list[tuple[str, int | None]] = [
            (m[1], _arguments(m[2])) for m in _CALL.finditer(use.text) if m[1] in known
        ]
        if _ANIMATION_USE.search(use.text):
            needs.append(("animation", None))
        for name, count in needs:
            args = declared.get(name)
            if args is None:
                what = "LED animations" if name == "animation" else name
                who = _who_has(name, count, board)
                raise Unsupported(
                    f"{use.where}: `{use.text}` needs {what}, which {here} does not have. "
                    + (f"Firmware that has it: {who}." if who else "No firmware has it.")
                )
            if count is not None and count != len(args):
                who = _who_has(name, count, board)
                raise Unsupported(
                    f"{use.where}: `{use.text}` passes {count} argument(s) to {name}, but "
                    f"{here} declares {name}({', '.join(args)}). "
                    + (
                        f"Firmware that takes {count}: {who}."
                        if who
                        else f"No firmware takes {name} with {count}."
                    )
                )

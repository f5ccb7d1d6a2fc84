"""Which firmware version can build which layout: refusals before any container starts.

Found by real builds (``kiisrv canary``, the table in bench/compat.md). A request that
a version cannot build is answered with a 400 naming what can build it, instead of a
compiler error after a container ran. Each rule says why; a rule whose ``uses`` is
empty holds for every layout of the keyboard, otherwise only for layouts whose keys,
custom KLL or animations mention one of those words.
"""

from __future__ import annotations

from dataclasses import dataclass

from kiisrv.errors import Unsupported
from kiisrv.kll import board_name
from kiisrv.layout import Layout
from kiisrv.versions import Version


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

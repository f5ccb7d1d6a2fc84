"""Errors that point at the key: real compiler output (tests/fixtures/compiler/*.log).

Each log is what a real v0.5.7 build of KType-Standard printed after the change named
here (captured with the entrypoint in kiisrv-controller-057; the layout comes from the
reference set, so these tests skip without it).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from kiisrv.recipe import diagnose, kll
from kiisrv.recipe.layout import parse_layout
from kiisrv.recipe.layouts import LayoutStore
from tests.helpers import CONFORMANCE, NO_CONFORMANCE, REPO

LOGS = REPO / "tests" / "fixtures" / "compiler"


def _key(n: int, layer: str, value: str) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        doc["matrix"][n]["layers"][layer] = {"key": value}

    return change


def _custom(doc: dict[str, Any]) -> None:
    doc["custom"] = {"1": 'U"A" : U"B";\nU"C" : : U"D";\n'}


def _frame(doc: dict[str, Any]) -> None:
    doc["animations"]["rainbow_wave"]["frames"][3] = "P[c:0%] (0,255"


CASES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "key": (_key(7, "1", "NOTAKEY"), "Layer 1, key F7: 'NOTAKEY' is not a USB HID key name"),
    "raw": (
        _key(7, "1", "#:notAFunction(3)"),
        "Layer 1, key F7: 'notAFunction' is not a function this firmware has "
        "(in `notAFunction(3)`)",
    ),
    "rawsyntax": (
        _key(7, "0", "#:ledControl(1, "),
        "Layer 0, key F7: `ledControl(1, ` is not valid KLL (it cannot be read)",
    ),
    "custom": (_custom, 'Layer 1, custom KLL line 2: syntax error in `U"C" : : U"D"`'),
    "anim": (
        _key(7, "1", "#:A[nosuch_anim](start)"),
        "Layer 1, key F7: animation 'nosuch_anim' is not defined in this layout",
    ),
    "animsyntax": (
        _frame,
        "Animation rainbow_wave, frame 4: `A[rainbow_wave, 4] <= P[c:0%] (0,255` is not "
        "valid KLL (it cannot be read)",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_failed_build_names_the_layer_and_key(case: str) -> None:
    layouts = CONFORMANCE / "layouts"
    if not layouts.is_dir():
        pytest.skip(NO_CONFORMANCE)
    change, expected = CASES[case]
    doc = copy.deepcopy(json.loads((layouts / "KType-Standard.json").read_bytes()))
    change(doc)
    layout = parse_layout(doc)
    base = LayoutStore(layouts).load_base(kll.base_file_names(layout, False))
    files = kll.generate(layout, base, False)
    custom = {int(k): v for k, v in (doc.get("custom") or {}).items()}
    log = (LOGS / f"{case}.log").read_text()
    assert diagnose.explain(log, files, custom) == expected


def test_an_unknown_failure_says_nothing_rather_than_guess() -> None:
    assert diagnose.explain("ninja: build stopped: subcommand failed.\n", [], {}) is None
    assert diagnose.explain((LOGS / "key.log").read_text(), [], {}) == (
        "'NOTAKEY' is not a USB HID key name"
    )


@pytest.mark.parametrize("name", ["splitchord.log", "splitchord-lts.log"])
def test_a_chord_across_the_halves_of_a_split_keyboard_names_the_custom_line(name: str) -> None:
    """Real v0.5.7 and v0.5.0 builds of MDErgo1-Default with `U"LCTRL" + U"P" : U"X";` as
    layer 1's custom KLL: the KLL compiler crashes with an IndexError naming no line."""
    log = (LOGS / name).read_text()
    custom = {1: '# U"A" + U"B" : U"C";\nU"Q" : U"W";\nU"LCTRL" + U"P" : U"X";'}
    assert diagnose.explain(log, [], custom) == (
        'Layer 1, custom KLL line 3: the KLL compiler crashes on the combination `U"LCTRL" + '
        'U"P" : U"X"` (IndexError); on a split keyboard every key of a combination must be '
        "on the same half, since each half has its own firmware"
    )
    assert diagnose.explain(log, [], {1: 'U"Q" : U"W";'}) is None
    assert diagnose.explain("IndexError: list index out of range\n", [], custom) is None

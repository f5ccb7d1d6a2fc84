"""Property-based tests: the validator only ever accepts or says why, and every layout
it accepts becomes KLL in which each generated line is exactly one statement."""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiisrv.errors import InvalidLayout
from kiisrv.recipe import kll
from kiisrv.recipe.layout import parse_layout, parse_request
from kiisrv.recipe.planner import request_hash
from kiisrv.recipe.versions import Available, Version
from tests.helpers import FIXTURE_LAYOUTS, header

BASE = parse_layout(json.loads((FIXTURE_LAYOUTS / "KType-TestBase.json").read_bytes()))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
# Text that likes the characters that could break out of a KLL statement.
nasty_text = st.text(alphabet=st.sampled_from("aZ09 _-.:#\";\n\r\x00/\\()[]<>=+,'"), max_size=24)
key_text = st.one_of(
    nasty_text, st.sampled_from(["A", "CONS:MUTE", "SYS:SLEEP", "#:layerShift(1)"])
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_any_json_is_accepted_or_rejected_with_a_reason(data: Any) -> None:
    for candidate in (data, {"config": data, "env": "latest"}):
        try:
            parse_request(candidate)
        except InvalidLayout as exc:
            assert exc.message.startswith("invalid request: ")


@st.composite
def layouts(draw: st.DrawFn) -> dict[str, Any]:
    h = header(
        layout=draw(st.one_of(st.just("Mine"), nasty_text)),
        Variant=draw(st.one_of(st.none(), nasty_text)),
        Author=draw(nasty_text),
        Date=draw(nasty_text),
    )
    matrix = []
    for code in ("0x01", "0x02", "0x03", "0x04")[: draw(st.integers(1, 4))]:
        layer_numbers = draw(st.lists(st.integers(0, 5), min_size=1, max_size=3, unique=True))
        matrix.append(
            {"code": code, "layers": {str(n): {"key": draw(key_text)} for n in layer_numbers}}
        )
    doc: dict[str, Any] = {"header": h, "matrix": matrix}
    if draw(st.booleans()):
        doc["defines"] = [
            {"name": draw(st.sampled_from(["a", "b_c", "x y"])), "value": draw(nasty_text)}
        ]
    return doc


MAP_LINE = re.compile(r'^#?(U|CONS|SYS)"[^"\n]*" : [^\n]*;$')
HEADER_LINE = re.compile(r'^[A-Za-z_][A-Za-z0-9_]* = "[^"\n]*";$')


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(layouts(), st.booleans())
def test_accepted_layouts_give_one_statement_per_line(doc: dict[str, Any], lts: bool) -> None:
    try:
        layout = parse_layout(doc)
    except InvalidLayout:
        return
    files = kll.generate(layout, BASE, lts)
    assert [f.name for f in files] == [
        f"KType-{kll.file_text(layout.header.Layout)}-{n}.kll" for n in range(len(files))
    ]
    for f in files:
        assert "\x00" not in f.content and "\r" not in f.content
        head, _, rest = f.content.partition("\n\n")
        assert all(HEADER_LINE.match(line) for line in head.split("\n")), head
        for line in rest.split("\n"):
            if line.startswith(("U", "CONS", "SYS", "#U", "#CONS", "#SYS")):
                assert MAP_LINE.match(line), line
            else:
                assert line == "" or HEADER_LINE.match(line), line
        # Every pair is on a line of its own: as many statements as keys on that layer.
        n = int(f.name.rsplit("-", 1)[1].removesuffix(".kll"))
        pairs = sum(1 for key in layout.matrix if n in key.layers)
        assert sum(1 for line in rest.split("\n") if MAP_LINE.match(line)) == pairs


def _shuffled(value: Any, rnd: Any) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: _shuffled(v, rnd) for k, v in items}
    if isinstance(value, list):
        return [_shuffled(v, rnd) for v in value]
    return value


TARGET = Available(Version("latest", "stable", "controller-057", "v0.5.7"), "img", "sha256:1", None)


@given(layouts(), st.randoms())
def test_hash_ignores_key_order_but_not_animation_order(doc: dict[str, Any], rnd: Any) -> None:
    assert request_hash(TARGET, doc) == request_hash(TARGET, _shuffled(doc, rnd))
    a = {
        **doc,
        "animations": {"x": {"settings": "", "frames": []}, "y": {"settings": "", "frames": []}},
    }
    b = {**doc, "animations": dict(reversed(list(a["animations"].items())))}
    assert request_hash(TARGET, a) != request_hash(TARGET, b)
    assert request_hash(TARGET, doc) != request_hash(
        Available(TARGET.version, "img", "sha256:2", None), doc
    )

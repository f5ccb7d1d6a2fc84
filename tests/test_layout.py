"""Validation at the edge: every rejection names the field; odd but valid input passes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kiisrv.errors import InvalidLayout
from kiisrv.recipe.layout import parse_layout, parse_request
from tests.helpers import CONFORMANCE, NO_CONFORMANCE, ktype, request


@pytest.mark.skipif(not (CONFORMANCE / "layouts").is_dir(), reason=NO_CONFORMANCE)
def test_every_reference_layout_is_valid() -> None:
    for path in (CONFORMANCE / "layouts").glob("*.json"):
        parse_layout(json.loads(path.read_bytes()))


def test_unknown_keys_are_accepted() -> None:
    doc = ktype()
    doc["macros"] = {"0": [{"x": 1}]}
    doc["matrix"][0]["board"] = "left"
    parse_request(request(doc))


def _mutate(path: list[Any], value: Any) -> dict[str, Any]:
    doc = request(ktype())
    target: Any = doc
    for step in path[:-1]:
        target = target[step]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (["config", "header", "Name"], KeyError, "config.header.Name"),
        (["config", "header", "Layout"], 5, "config.header.Layout"),
        (["config", "header", "Base"], "../../etc/x", "config.header.Base"),
        (["config", "header", "Base"], "/etc/passwd", "config.header.Base"),
        (["config", "header", "Layout"], "a\x00b", "config.header.Layout"),
        (["config", "header", "Variant"], "a\nb", "config.header.Variant"),
        (["config", "header", "Author"], 'me"; evil', "config.header.Author"),
        (["config", "header", "Date"], "x" * 300, "config.header.Date"),
        (["config", "matrix"], "nope", "config.matrix"),
        (["config", "matrix", 0, "layers"], {"40": {"key": "A"}}, "config.matrix.0.layers.40"),
        (["config", "matrix", 0, "layers"], {"-1": {"key": "A"}}, "config.matrix.0.layers.-1"),
        (["config", "matrix", 0, "layers"], {"x": {"key": "A"}}, "config.matrix.0.layers.x"),
        (
            ["config", "matrix", 0, "layers", "0", "key"],
            'A\nU"B" : U"C"',
            "config.matrix.0.layers.0.key",
        ),
        (["config", "matrix", 0, "layers", "0", "key"], 'A"', "config.matrix.0.layers.0.key"),
        (["config", "matrix", 0, "code"], None, "config.matrix.0.code"),
        (["config", "defines"], [{"name": "a b", "value": "1"}], "config.defines.0.name"),
        (["config", "animations"], {"a]b": {"settings": "", "frames": []}}, "config.animations"),
        (["config", "custom"], {"0": 1}, "config.custom.0"),
        (["env"], "../latest", "env"),
        (["config"], KeyError, "config"),
    ],
)
def test_rejections_name_the_field(path: list[Any], value: Any, field: str) -> None:
    with pytest.raises(InvalidLayout) as info:
        parse_request(_mutate(path, value))
    assert field in info.value.message


def test_raw_actions_may_hold_quotes() -> None:
    parse_request(_mutate(["config", "matrix", 0, "layers", "0", "key"], '#:U"Mute" + CONS"Mute"'))


def test_size_caps() -> None:
    doc = request(ktype())
    doc["config"]["matrix"] = doc["config"]["matrix"] * 300
    with pytest.raises(InvalidLayout, match=r"config\.matrix"):
        parse_request(doc)

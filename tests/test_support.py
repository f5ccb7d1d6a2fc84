"""Refusals before any container starts (support.py), as the canary found them."""

from __future__ import annotations

from typing import Any

import pytest

from kiisrv import support
from kiisrv.errors import Unsupported
from kiisrv.layout import Layout, parse_layout
from kiisrv.versions import DEFAULT_VERSIONS
from tests.helpers import header, key

VERSIONS = {v.name: v for v in DEFAULT_VERSIONS}


def layout(name: str, custom: str | None = None, *keys: str) -> Layout:
    doc: dict[str, Any] = {"header": header(name=name), "matrix": [key("0x01", "A", *keys)]}
    if custom:
        doc["custom"] = {"0": custom}
    return parse_layout(doc)


def test_kira_on_lts_is_refused_whatever_the_layout() -> None:
    with pytest.raises(Unsupported, match=r"Kira cannot be built with lts \(v0\.5\.0\)") as exc:
        support.check(layout("Kira"), VERSIONS["lts"])
    assert "Build it with latest (v0.5.7)" in exc.value.message
    assert exc.value.status == 400
    support.check(layout("Kira"), VERSIONS["latest"])
    support.check(layout("Kira"), VERSIONS["v0.5.0"])


def test_features_v050_lacks_are_refused_only_where_used() -> None:
    kira = parse_layout(
        {
            "header": header(name="Kira"),
            "matrix": [key("0x01", "A")],
            "animations": {"a": {"type": "", "settings": "replace:clearactive", "frames": []}},
        }
    )
    with pytest.raises(Unsupported, match="clearactive"):
        support.check(kira, VERSIONS["v0.5.0"])
    for name in ("GeminiDuskDawn", "Gemini", "GeminiDusk"):
        with pytest.raises(Unsupported, match="LED fades"):
            support.check(
                layout(name, None, "#:fade_control(0, 3, 15)"),
                VERSIONS["lts"],
            )
        with pytest.raises(Unsupported, match="LED fades"):
            support.check(
                layout(name, "KLL_LED_FadePeriod[0] = 1;"),
                VERSIONS["v0.5.0"],
            )
        support.check(layout(name), VERSIONS["lts"])
        support.check(
            layout(name, None, "#:fade_control(0, 3, 15)"),
            VERSIONS["latest"],
        )


def test_the_canary_shows_the_line_that_says_what_broke() -> None:
    from kiisrv.canary import first_error_line

    log = (
        "CMake Warning (dev):\n  missing BYPRODUCTS\nProject authors should add the missing\n"
        "[12/36] Building C object x.obj\n"
        "/tmp/b/generatedPixelmap.c:348:29: error: 'Animation__x' undeclared here\n"
        "ninja: build stopped: subcommand failed.\nError in build. Exiting...\n"
    )
    assert first_error_line(log).endswith("error: 'Animation__x' undeclared here")
    assert first_error_line("Traceback:\n  File x\nKeyError: 'fade_control'\n") == (
        "KeyError: 'fade_control'"
    )
    assert first_error_line("all went\nwell\n") == "well"

"""Refusals before any container starts (support.py), as the canary found them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kiisrv.errors import UnknownKeyboard, Unsupported
from kiisrv.recipe import kll, support
from kiisrv.recipe.layout import Layout, parse_layout
from kiisrv.recipe.layouts import LayoutStore
from kiisrv.recipe.versions import DEFAULT_VERSIONS
from tests.helpers import CONFORMANCE, FIXTURE_LAYOUTS, NO_CONFORMANCE, header, key, ktype

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
    from kiisrv.recipe.diagnose import first_error_line

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


# -- at the key: what the firmware declares (firmware.json) ----------------------------


def _base() -> Layout:
    return parse_layout(json.loads((FIXTURE_LAYOUTS / "KType-TestBase.json").read_bytes()))


def _keys(name: str, value: str, **extra: Any) -> Layout:
    """A four-key layout whose key B (the third) has ``value`` on layer 1."""
    doc = ktype(name=name)
    doc["matrix"][2]["layers"]["1"] = {"key": value}
    doc.update(extra)
    return parse_layout(doc)


def test_a_function_the_firmware_lacks_is_refused_at_the_key() -> None:
    with pytest.raises(Unsupported) as exc:
        support.check_keys(_keys("KType", "#:storage_control(1)"), _base(), VERSIONS["latest"])
    message = exc.value.message
    assert message.startswith("Layer 1, key B: `storage_control(1)` needs storage_control")
    assert "the KType firmware of latest (v0.5.7) does not have" in message
    assert "Kira with latest (v0.5.7), lts (v0.5.0)" in message
    assert exc.value.status == 400
    support.check_keys(_keys("Kira", "#:storage_control(1)"), _base(), VERSIONS["latest"])


def test_led_and_animation_keys_on_md1_which_has_no_leds() -> None:
    for value in ("#:ledControl(1, 15)", "#:A[wave](start)", "#:animation_control(0)"):
        with pytest.raises(Unsupported, match="the MD1 firmware of latest"):
            support.check_keys(_keys("MD1", value), _base(), VERSIONS["latest"])
        support.check_keys(_keys("MD1.1", value), _base(), VERSIONS["latest"])
    support.check_keys(_keys("MD1", "#:layerShift(2)"), _base(), VERSIONS["latest"])
    support.check_keys(_keys("MD1", "#:flashMode()"), _base(), VERSIONS["lts"])


def test_led_test_takes_two_arguments_on_v057_and_is_absent_on_v050() -> None:
    with pytest.raises(Unsupported) as exc:
        support.check_keys(_keys("KType", "#:ledTest(1)"), _base(), VERSIONS["latest"])
    assert exc.value.message == (
        "Layer 1, key B: `ledTest(1)` passes 1 argument(s) to ledTest, but the KType "
        "firmware of latest (v0.5.7) declares ledTest(test, index). No firmware takes "
        "ledTest with 1."
    )
    support.check_keys(_keys("KType", "#:ledTest(1, 0)"), _base(), VERSIONS["latest"])
    with pytest.raises(
        Unsupported, match=r"does not have\. Firmware that has it: KType with latest"
    ):
        support.check_keys(_keys("KType", "#:ledTest(1, 0)"), _base(), VERSIONS["lts"])


def test_custom_kll_is_checked_line_by_line_without_its_comments() -> None:
    custom = {"1": '# storage_control(1) is Kira only\nU"A" : U"B";\nU"C" : storage_control(2);'}
    layout = _keys("KType", "A", custom=custom)
    with pytest.raises(Unsupported, match=r"^Layer 1, custom KLL line 3: `U\"C\" : storage_"):
        support.check_keys(layout, _base(), VERSIONS["latest"])
    layout = _keys("KType", "A", custom={"1": '# storage_control(1)\nU"#" : U"B"; # x(1)'})
    support.check_keys(layout, _base(), VERSIONS["latest"])


def test_versions_the_table_does_not_know_are_left_to_the_compiler() -> None:
    support.check_keys(_keys("KType", "#:ledTest(1)"), _base(), VERSIONS["v0.5.6"])


ANIMATION = {"all_on": {"type": "", "settings": "start", "frames": ["P[1](255,255,255)"]}}


def test_lts_refuses_keys_that_start_the_animations_it_drops() -> None:
    layout = _keys("KType", "#:A[all_on](start)", animations=ANIMATION)
    with pytest.raises(Unsupported) as exc:
        support.check_keys(layout, _base(), VERSIONS["lts"])
    assert exc.value.message.startswith(
        "Layer 1, key B: `A[all_on](start)` uses animation 'all_on', but lts builds leave "
        "out a layout's animations"
    )
    assert "Build it with latest (v0.5.7)" in exc.value.message
    support.check_keys(layout, _base(), VERSIONS["latest"])
    custom = _keys("KType", "A", animations=ANIMATION, custom={"0": 'U"Q" : A[all_on](stop);'})
    with pytest.raises(Unsupported, match=r'^Layer 0, custom KLL line 1: `U"Q" : A\[all_on'):
        support.check_keys(custom, _base(), VERSIONS["lts"])
    # Defined by the custom KLL itself, the animation stays on lts.
    own = 'A[all_on] <= start;\nA[all_on, 1] <= P[1](9,9,9);\nU"Q" : A[all_on](stop);'
    support.check_keys(
        _keys("KType", "A", animations=ANIMATION, custom={"0": own}), _base(), VERSIONS["lts"]
    )


def _conformance_cases() -> list[Any]:
    layouts = CONFORMANCE / "layouts"
    if not layouts.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=NO_CONFORMANCE))]
    return [pytest.param(p.name, id=p.stem) for p in sorted(layouts.glob("*.json"))]


@pytest.mark.parametrize("name", _conformance_cases())
def test_the_reference_layouts_pass_where_they_build(name: str) -> None:
    """Every reference layout the canary builds passes check_keys on both channels."""
    store = LayoutStore(CONFORMANCE / "layouts")
    layout = parse_layout(json.loads((CONFORMANCE / "layouts" / name).read_bytes()))
    try:
        kll.build_script(layout)
    except UnknownKeyboard:
        pytest.skip("no build script (Azio Fokal)")
    for version in (VERSIONS["latest"], VERSIONS["lts"]):
        try:
            support.check(layout, version)
        except Unsupported:
            continue  # refused as a whole already (Kira, Gemini fades on lts)
        base = store.load_base(kll.base_file_names(layout, version.lts))
        support.check_keys(layout, base, version)


def test_a_combination_sending_a_function_map_key_is_refused_at_its_line() -> None:
    """`U"Y" + U"PAGEDOWN" : U"NEXT LAYER";` fails on real v0.5.7 builds ("missing
    FuncMap layout") even on layer 0, whose maps begin with stdFuncMap; one key works."""
    combo = ktype(custom='U"A" : U"B";\nU"Y" + U"PAGEDOWN" : U"NEXT LAYER";')
    with pytest.raises(Unsupported) as exc:
        support.check_keys(parse_layout(combo), _base(), VERSIONS["latest"])
    assert exc.value.message.startswith(
        'Layer 0, custom KLL line 2: `U"Y" + U"PAGEDOWN" : U"NEXT LAYER"`: a combination'
    )
    single = ktype(custom='U"Y" : U"NEXT LAYER";\nU"+" : U"F1";\nU"Y" + U"P" : U"Q";')
    support.check_keys(parse_layout(single), _base(), VERSIONS["latest"])

"""The KLL generator: byte-identical to the reference files, and each rule on its own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kiisrv.errors import InvalidLayout, UnknownKeyboard
from kiisrv.recipe import kll
from kiisrv.recipe.layout import Layout, parse_layout
from kiisrv.recipe.layouts import LayoutStore
from tests.helpers import CONFORMANCE, FIXTURE_LAYOUTS, NO_CONFORMANCE, header, key, ktype


def _conformance_files() -> list[Any]:
    root = CONFORMANCE / "kll"
    if not root.is_dir():
        return [pytest.param(None, None, None, marks=pytest.mark.skip(reason=NO_CONFORMANCE))]
    return [
        pytest.param(
            channel,
            case.name,
            path.relative_to(case).as_posix(),
            id=f"{channel}/{case.name}/{path.relative_to(case).as_posix()}",
        )
        for channel in ("latest", "lts")
        for case in sorted((root / channel).iterdir())
        for path in sorted(case.rglob("*.kll"))
    ]


_generated: dict[tuple[str, str], dict[str, str]] = {}


def _generate_case(channel: str, case: str) -> dict[str, str]:
    if (channel, case) not in _generated:
        store = LayoutStore(CONFORMANCE / "layouts")
        layout = parse_layout(json.loads((CONFORMANCE / "layouts" / f"{case}.json").read_bytes()))
        lts = channel == "lts"
        base = store.load_base(kll.base_file_names(layout, lts))
        _generated[(channel, case)] = {f.name: f.content for f in kll.generate(layout, base, lts)}
    return _generated[(channel, case)]


@pytest.mark.parametrize(("channel", "case", "rel"), _conformance_files())
def test_conformance_file_is_byte_identical(channel: str, case: str, rel: str) -> None:
    expected = (CONFORMANCE / "kll" / channel / case / rel).read_bytes()
    # Split boards keep a copy per half (left/, right/): the same generated file.
    generated = _generate_case(channel, case)
    name = Path(rel).name
    assert name in generated, f"{name} not generated; got {sorted(generated)}"
    assert generated[name].encode() == expected


@pytest.mark.skipif(not (CONFORMANCE / "kll").is_dir(), reason=NO_CONFORMANCE)
def test_conformance_cases_generate_no_extra_files() -> None:
    for channel in ("latest", "lts"):
        for case in (CONFORMANCE / "kll" / channel).iterdir():
            expected = {p.name for p in case.rglob("*.kll")}
            assert set(_generate_case(channel, case.name)) == expected, (channel, case.name)


# -- the rules, on small layouts ------------------------------------------------------------


def base(name: str = "KType") -> Layout:
    return parse_layout(json.loads((FIXTURE_LAYOUTS / f"{name}-TestBase.json").read_bytes()))


def gen(doc: dict[str, Any], lts: bool = False, base_name: str = "KType") -> dict[str, str]:
    return {f.name: f.content for f in kll.generate(parse_layout(doc), base(base_name), lts)}


HEADER_BLOCK = (
    'Name = "KType";\nVariant = "test";\nLayout = "Mine";\nBase = "TestBase";\n'
    'Version = "0.1";\nAuthor = "kiisrv tests";\nKLL = "0.5c";\nDate = "2026-11-26";\n'
    'Generator = "kiisrv tests";'
)


def test_layer_files_pair_default_keys_by_position() -> None:
    files = gen(ktype())
    assert sorted(files) == ["KType-Mine-0.kll", "KType-Mine-1.kll"]
    lines0 = 'U"ESC" : U"ESC";\nU"A" : U"Q";\nU"B" : U"B";\nU"C" : U"C";'
    assert files["KType-Mine-0.kll"] == f"{HEADER_BLOCK}\n\n\n\n{lines0}\n\n\n\n\n\n"
    lines1 = 'U"ESC" : U"F1";\nU"B" : layerShift(1);'
    assert files["KType-Mine-1.kll"] == f"{HEADER_BLOCK}\n\n{lines1}\n\n\n\n"


def test_custom_kll_goes_to_its_layer_only() -> None:
    doc = ktype()
    doc["custom"] = {"1": '# custom one\nU"A" : U"Z";'}
    files = gen(doc)
    assert files["KType-Mine-1.kll"].endswith('\n\n\n\n# custom one\nU"A" : U"Z";\n\n')
    assert "custom one" not in files["KType-Mine-0.kll"]


def test_defines_block_on_layer_zero() -> None:
    doc = ktype()
    doc["defines"] = [{"name": "ledFadeSpeed", "value": "3"}, {"name": "x_y", "value": "a b"}]
    files = gen(doc)
    assert (
        f'{HEADER_BLOCK}\n\nledFadeSpeed = "3";\nx_y = "a b";\n\nU"ESC"'
        in files["KType-Mine-0.kll"]
    )
    assert "ledFadeSpeed" not in files["KType-Mine-1.kll"]


def test_animations_comment_frames_and_empty_animations() -> None:
    doc = ktype()
    doc["animations"] = {
        "wave": {
            "type": "animation",
            "settings": "loop",
            "frames": ["# first", "P[1](1,2,3)", "# mid", "P[2](4,5,6)"],
        },
        "blank": {"settings": "loop", "frames": ["# only a comment"]},
        "none": {"settings": "start", "frames": []},
    }
    text = gen(doc)["KType-Mine-0.kll"]
    expected = (
        "A[wave] <= loop;\n# first\nA[wave, 1] <= P[1](1,2,3);\n# mid\nA[wave, 2] <= P[2](4,5,6);\n"
        "\n### blank is empty, skipping\n### none is empty, skipping\n\n"
    )
    assert text.endswith(expected)
    assert "A[wave]" not in gen(doc, lts=True)["KType-Mine-0.kll"]


def test_animation_order_follows_the_json_object() -> None:
    doc = ktype()
    doc["animations"] = {n: {"settings": "s", "frames": ["f"]} for n in ("zeta", "alpha")}
    text = gen(doc)["KType-Mine-0.kll"]
    assert text.index("A[zeta]") < text.index("A[alpha]")


def test_gap_in_layer_numbers_writes_an_empty_layer() -> None:
    doc = ktype()
    doc["matrix"][0]["layers"] = {"0": {"key": "ESC"}, "3": {"key": "F3"}}
    doc["matrix"][2]["layers"] = {"0": {"key": "B"}}
    files = gen(doc)
    assert sorted(files) == [f"KType-Mine-{n}.kll" for n in range(4)]
    assert files["KType-Mine-1.kll"] == f"{HEADER_BLOCK}\n\n\n\n\n\n"
    assert 'U"ESC" : U"F3";' in files["KType-Mine-3.kll"]


def test_key_formatting() -> None:
    assert kll.format_key("CONS:VOLUMEUP") == 'CONS"VOLUMEUP"'
    assert kll.format_key("SYS:SLEEP") == 'SYS"SLEEP"'
    assert kll.format_key("A") == 'U"A"'
    assert kll.format_key("") == 'U""'


def test_lts_keeps_two_argument_led_control_and_comments_out_the_rest() -> None:
    """v0.5.0 declares ledControl(mode, amount), modes 0-8 (KLL_GENERATION.md)."""
    doc = ktype()
    doc["matrix"][0]["layers"]["1"] = {"key": "#:ledControl( 0, 15 )"}
    doc["matrix"][1]["layers"]["1"] = {"key": "#:ledControl(1,15)"}
    doc["matrix"][2]["layers"]["1"] = {"key": "#:ledControl( 8, 1 )"}
    doc["matrix"][3]["layers"]["1"] = {"key": "#:animation_control( 0 )"}
    lts = gen(doc, lts=True)["KType-Mine-1.kll"]
    assert 'U"ESC" : ledControl( 0, 15 );' in lts
    assert 'U"A" : ledControl(1,15);' in lts
    assert 'U"B" : ledControl( 8, 1 );' in lts
    assert '#U"C" : #:animation_control( 0 );' in lts
    doc["matrix"][0]["layers"]["1"] = {"key": "#:ledControl( 9, 1 )"}
    doc["matrix"][1]["layers"]["1"] = {"key": "#:ledControl( 3, 15, 0 )"}
    doc["matrix"][2]["layers"]["1"] = {"key": "#:ledControl( 1, 15 ), ledTest(1, 0)"}
    lts = gen(doc, lts=True)["KType-Mine-1.kll"]
    assert '#U"ESC" : #:ledControl( 9, 1 );' in lts
    assert '#U"A" : #:ledControl( 3, 15, 0 );' in lts
    assert '#U"B" : #:ledControl( 1, 15 ), ledTest(1, 0);' in lts
    latest = gen(doc)["KType-Mine-1.kll"]
    assert 'U"ESC" : ledControl( 9, 1 );' in latest
    assert 'U"C" : animation_control( 0 );' in latest


def test_whitefox_pairs_by_scan_code_and_skips_unknown_codes() -> None:
    doc = {
        "header": header(name="WhiteFox", layout="Mine"),
        "matrix": [key("0x12", "X"), key("0x99", "Y"), key("0x10", "Z")],
    }
    files = gen(doc, base_name="WhiteFox")
    assert files["WhiteFox-Mine-0.kll"].count(" : ") == 2
    assert 'U"B" : U"X";\nU"ESC" : U"Z";' in files["WhiteFox-Mine-0.kll"]
    assert kll.base_file_names(parse_layout(doc), lts=True)[0] == "WhiteFox-TestBase.lts.json"
    assert kll.base_file_names(parse_layout(doc), lts=False) == ["WhiteFox-TestBase.json"]
    lts_base = parse_layout(
        json.loads((FIXTURE_LAYOUTS / "WhiteFox-TestBase.lts.json").read_bytes())
    )
    lts = {f.name: f.content for f in kll.generate(parse_layout(doc), lts_base, lts=True)}
    assert 'U"LTS_B" : U"X";\nU"LTS_ESC" : U"Z";' in lts["WhiteFox-Mine-0.kll"]


def test_names_with_spaces() -> None:
    doc = ktype()
    doc["header"].update(Name="My Board", Variant="my variant", Layout="My Layout")
    files = kll.generate(parse_layout(doc), base(), lts=False)
    assert [f.name for f in files] == ["My_Board-My Layout-0.kll", "My_Board-My Layout-1.kll"]
    assert files[0].content.startswith(
        'Name = "My Board";\nVariant = "my_variant";\nLayout = "My Layout";'
    )


def test_no_files_without_a_name_or_layout() -> None:
    doc = ktype()
    doc["header"]["Name"] = " "  # sanitises to "_": still a name
    assert gen(doc)
    layout = parse_layout(ktype())
    empty = layout.model_copy(update={"header": layout.header.model_copy(update={"Layout": ""})})
    assert kll.generate(empty, base(), lts=False) == []


def test_triggers_are_accepted_and_produce_nothing() -> None:
    doc = ktype()
    doc["matrix"][0]["triggers"] = {"0": {"action": "x", "label": "y", "type": "z"}}
    assert gen(doc) == gen(ktype())


def test_more_keys_than_the_base_is_a_clear_error() -> None:
    doc = ktype()
    doc["matrix"].append(key("0x05", "D"))
    with pytest.raises(InvalidLayout, match="only 4"):
        gen(doc)


def test_build_parameters() -> None:
    files = kll.generate(parse_layout(ktype()), base(), lts=False)
    params = kll.build_params(parse_layout(ktype()), files)
    assert params.script == "k-type.bash"
    assert params.environment() == {
        "DefaultMapOverride": "stdFuncMap KType-Mine-0",
        "PartialMapsExpandedOverride": "KType-Mine-1",
        "Layout": "test",
    }


def test_build_parameters_of_a_dotted_name_and_a_split_board() -> None:
    doc = ktype()
    doc["header"].update(Name="MD1.1", Variant="hacker blank")
    files = [kll.KllFile(f"MD1.1-Mine-{n}.kll", "") for n in range(3)]
    params = kll.build_params(parse_layout(doc), files)
    # The reference lost "-0" here (it took the stem of "MD1.1-Mine-0" twice).
    assert params.default_map == "stdFuncMap MD1.1-Mine-0"
    assert params.partial_maps == "MD1.1-Mine-1;MD1.1-Mine-2"
    assert params.layout == "hacker_blank"
    assert params.script == "infinity_led.bash"
    doc["header"]["Name"] = "MDErgo1"
    split = kll.build_params(parse_layout(doc), files[:1])
    assert split.environment() == {
        "DefaultMapOverride": "infinity_ergodox/lcdFuncMap MD1.1-Mine-0",
        "PartialMapsExpandedOverride": ";",  # nothing on layer 0 reaches the stock layers
        "Layout": "hacker_blank",
        "SPLIT_KEYBOARD": "1",
    }
    assert split.script == "ergodox.bash"


@pytest.mark.parametrize(
    ("name", "script"),
    [
        ("md1", "infinity.bash"),
        ("K-Type", "k-type.bash"),
        ("GeminiDawn", "geminiduskdawn.bash"),
        ("kira", "kira.bash"),
        ("ICPad", "icpad.bash"),
        ("Infinity", "infinity.bash"),
    ],
)
def test_build_script_by_keyboard_name(name: str, script: str) -> None:
    assert kll.build_script(parse_layout(ktype(name=name))) == script


def test_unknown_keyboard_is_a_client_error() -> None:
    with pytest.raises(UnknownKeyboard, match="Fokal"):
        kll.build_script(parse_layout(ktype(name="Fokal")))


def test_one_layer_keeps_the_stock_layers_only_when_layer_0_can_reach_them() -> None:
    doc = ktype()
    for k in doc["matrix"]:
        k["layers"] = {"0": k["layers"]["0"]}
    files = [kll.KllFile("KType-Mine-0.kll", "")]
    assert kll.build_params(parse_layout(doc), files).partial_maps == ";"
    for value in ("FUNCTION1", "Lock2", "LATCH3", "#:layerShift(1)"):
        doc["matrix"][0]["layers"]["0"] = {"key": value}
        assert kll.build_params(parse_layout(doc), files).partial_maps == "", value
    doc["matrix"][0]["layers"]["0"] = {"key": "FUNCTIONAL"}
    assert kll.build_params(parse_layout(doc), files).partial_maps == ";"


def test_lts_whitefox_without_an_lts_base_takes_its_own_base(tmp_path: Path) -> None:
    """WhiteFox-AllBlank and WhiteFox-Blank have no .lts.json base upstream."""
    for name in ("WhiteFox-TestBase.json", "WhiteFox-TestBase.lts.json"):
        (tmp_path / name.replace("TestBase", "Only" if "lts" not in name else "Other")).write_text(
            (FIXTURE_LAYOUTS / name).read_text()
        )
    store = LayoutStore(tmp_path)
    doc = parse_layout({"header": header(name="WhiteFox", base="Only"), "matrix": []})
    assert kll.base_file_names(doc, lts=True) == ["WhiteFox-Only.lts.json", "WhiteFox-Only.json"]
    assert store.load_base(kll.base_file_names(doc, lts=True)).header.Base == "TestBase"
    other = parse_layout({"header": header(name="WhiteFox", base="Other"), "matrix": []})
    assert store.load_base(kll.base_file_names(other, lts=True)).matrix[0].layers[0].key == "LTS_B"
    with pytest.raises(InvalidLayout, match=r"no base layout 'WhiteFox-Other\.json'"):
        store.load_base(kll.base_file_names(other, lts=False))
    assert kll.base_file_names(parse_layout(ktype()), lts=True) == ["KType-TestBase.json"]


def test_a_partial_layer_with_function_keys_names_the_function_map() -> None:
    doc = ktype()
    doc["matrix"][1]["layers"]["2"] = {"key": "FUNCTION2"}
    files = [kll.KllFile(f"KType-Mine-{n}.kll", "") for n in range(3)]
    params = kll.build_params(parse_layout(doc), files)
    assert params.partial_maps == "KType-Mine-1;stdFuncMap KType-Mine-2"
    doc["header"]["Name"] = "MDErgo1"
    params = kll.build_params(parse_layout(doc), files)
    assert params.partial_maps == "KType-Mine-1;infinity_ergodox/lcdFuncMap KType-Mine-2"


@pytest.mark.parametrize("value", ["NEXT LAYER", "Prev Layer", "next layer", "Latch16"])
def test_every_key_the_function_map_defines_names_the_map(value: str) -> None:
    """NEXT-ƒ / PREV-ƒ send `NEXT LAYER` / `PREV LAYER`, which stdFuncMap defines too."""
    doc = ktype()
    doc["matrix"][1]["layers"]["2"] = {"key": value}
    files = [kll.KllFile(f"KType-Mine-{n}.kll", "") for n in range(3)]
    params = kll.build_params(parse_layout(doc), files)
    assert params.partial_maps == "KType-Mine-1;stdFuncMap KType-Mine-2"
    doc["matrix"][1]["layers"]["2"] = {"key": f"#:{value}"}
    assert kll.build_params(parse_layout(doc), files).partial_maps == "KType-Mine-1;KType-Mine-2"


def test_next_layer_on_layer_0_keeps_the_stock_layers() -> None:
    doc = ktype()
    for k in doc["matrix"]:
        k["layers"] = {"0": k["layers"]["0"]}
    doc["matrix"][0]["layers"]["0"] = {"key": "NEXT LAYER"}
    files = [kll.KllFile("KType-Mine-0.kll", "")]
    assert kll.build_params(parse_layout(doc), files).partial_maps == ""


def test_a_comment_typed_above_a_frame_keeps_the_frame() -> None:
    """The Configurator saves frames split at `;`: a comment line above a frame arrives
    in the same element, and copying it whole left a bare pixel list (a KLL lexer error
    on real builds: bench/results-random.md)."""
    from kiisrv.recipe.layout import parse_layout
    from tests.helpers import ktype

    doc = ktype()
    doc.update(
        {
            "animations": {
                "glow": {
                    "settings": "loop",
                    "frames": ["# my frames\nP[c:0%](87), P[c:100%](185)", "P[c:0%](1)", "# only"],
                }
            },
        }
    )
    layout = parse_layout(doc)
    block = kll._animations_block(layout, lts=False)
    assert block == (
        "A[glow] <= loop;\n"
        "# my frames\n"
        "A[glow, 1] <= P[c:0%](87), P[c:100%](185);\n"
        "A[glow, 2] <= P[c:0%](1);\n"
        "# only\n"
    )


def test_the_clients_cut_system_key_names_in_macros_are_put_back() -> None:
    """The Configurator's macros send SYS"OWER DOWN" for POWER DOWN (substring(5) for
    `SYS:`): a 422 from the KLL compiler on real builds (bench/results-random.md)."""
    from kiisrv.recipe.layout import parse_layout
    from tests.helpers import FIXTURE_LAYOUTS, ktype

    base = parse_layout(json.loads((FIXTURE_LAYOUTS / "KType-TestBase.json").read_text()))
    custom = 'U"A" : SYS"OWER DOWN";\nU"B" : SYS"LEEP" + SYS"AKE UP";\nU"C" : SYS"SLEEP";'
    files = kll.generate(parse_layout(ktype(custom=custom)), base, lts=False)
    assert 'U"A" : SYS"POWER DOWN";\nU"B" : SYS"SLEEP" + SYS"WAKE UP";\nU"C" : SYS"SLEEP";' in (
        files[0].content
    )


def test_a_function_key_in_a_layers_custom_kll_names_the_function_map() -> None:
    """`U"Y" : U"NEXT LAYER";` typed into layer 1's custom KLL needs the map like a key."""
    doc = ktype()
    doc["custom"] = {"1": 'U"Y" : U"NEXT LAYER"; # next'}
    files = [kll.KllFile(f"KType-Mine-{n}.kll", "") for n in range(2)]
    assert kll.build_params(parse_layout(doc), files).partial_maps == "stdFuncMap KType-Mine-1"
    doc["custom"] = {"1": 'U"Y" : U"F1";'}
    assert kll.build_params(parse_layout(doc), files).partial_maps == "KType-Mine-1"

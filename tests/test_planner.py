"""The planner: what a request becomes before anything is written or run."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from kiisrv.errors import InvalidLayout, Unsupported
from kiisrv.recipe.layouts import LayoutStore
from kiisrv.recipe.planner import Planner
from kiisrv.recipe.versions import Available, Version
from tests.helpers import (
    CLIENT_FILENAME_RE,
    CONFORMANCE,
    FIXTURE_LAYOUTS,
    NO_CONFORMANCE,
    ktype,
    request,
)

LATEST = Available(Version("latest", "stable", "controller-057", "v0.5.7"), "img", "sha256:1", None)
LTS = Available(Version("lts", "lts", "controller-050", "v0.5.0"), "img", "sha256:2", None)


def planner() -> Planner:
    return Planner(LayoutStore(FIXTURE_LAYOUTS))


def _with(doc: dict[str, Any], layer: str, value: str) -> dict[str, Any]:
    """``doc`` with ``value`` on key B (the third key) of ``layer``."""
    doc["matrix"][2]["layers"][layer] = {"key": value}
    return doc


@pytest.mark.parametrize(
    ("doc", "target", "message"),
    [
        (_with(ktype(), "1", "#:ledTest(1)"), LATEST, "Layer 1, key B: `ledTest(1)` passes 1"),
        (_with(ktype(), "1", "#:ledTest(1, 0)"), LTS, "Layer 1, key B: `ledTest(1, 0)` needs"),
        (_with(ktype(), "2", "#:storage_control(1)"), LATEST, "Layer 2, key B: `storage_"),
        (
            _with(ktype(name="MD1"), "1", "#:A[x](start)"),
            LATEST,
            "Layer 1, key B: `A[x](start)` needs LED animations, which the MD1 firmware",
        ),
        (
            {
                **_with(ktype(), "1", "#:A[all_on](start)"),
                "animations": {"all_on": {"settings": "start", "frames": ["P[1](1,1,1)"]}},
            },
            LTS,
            "Layer 1, key B: `A[all_on](start)` uses animation 'all_on', but lts builds",
        ),
    ],
)
def test_keys_the_firmware_cannot_compile_are_refused_before_a_build(
    doc: dict[str, Any], target: Available, message: str
) -> None:
    with pytest.raises(Unsupported) as exc:
        planner().plan(request(doc), target)
    assert exc.value.message.startswith(message), exc.value.message
    assert exc.value.status == 400


def test_any_printable_layout_and_variant_build_under_safe_names() -> None:
    """ÇaVa typed into an imported layout: accepted, made ASCII where it names things."""
    doc = ktype(layout='ÇaVa/../"x"', Variant="Très bien")
    plan = planner().plan(request(doc), LATEST)
    assert [f.name for f in plan.files] == ["KType-CaVa_..__x_-0.kll", "KType-CaVa_..__x_-1.kll"]
    assert plan.files[0].content.startswith(
        'Name = "KType";\nVariant = "Tres_bien";\nLayout = "CaVa/../\'x\'";\n'
    )
    assert plan.params.layout == "Tres_bien"
    assert plan.params.default_map == "stdFuncMap KType-CaVa_..__x_-0"
    m = re.match(CLIENT_FILENAME_RE, f"./tmp/{plan.job.stem}.zip")
    assert m is not None and (m[1], m[2]) == ("KType", "CaVa_..__x_")
    assert plan.layout_json.decode().count("ÇaVa") == 1  # the layout is kept as sent


@pytest.mark.parametrize("bad", ["two\nlines", "tab\there", "nul\x00", ""])
def test_layout_names_must_still_be_printable(bad: str) -> None:
    with pytest.raises(InvalidLayout, match=r"config\.header\.Layout"):
        planner().plan(request(ktype(layout=bad)), LATEST)


@pytest.mark.parametrize(
    ("layout", "json_name"),
    [
        ("colemak-dh", "KType-colemak_dh.json"),
        ("My Layout", "KType-My_Layout.json"),
        ("Mine", "KType-Mine.json"),
        ("Ça-Va", "KType-Ca_Va.json"),
    ],
)
def test_the_layout_json_in_the_zip_has_the_name_the_client_derives(
    layout: str, json_name: str
) -> None:
    """The Configurator reopens `<board>-<layout>.json`, both read from the zip's name."""
    plan = planner().plan(request(ktype(layout=layout)), LATEST)
    m = re.match(CLIENT_FILENAME_RE, f"./tmp/{plan.job.stem}.zip")
    assert m is not None
    assert plan.layout_name == f"{m[1]}-{m[2]}.json" == json_name


def test_an_alias_keyboard_name_finds_the_base_of_its_target(tmp_path: Path) -> None:
    """Name K-Type (an alias the client knows) had no base 'K-Type-TestBase.json'."""
    layouts = tmp_path / "layouts"
    layouts.mkdir()
    (layouts / "KType-TestBase.json").write_bytes(
        (FIXTURE_LAYOUTS / "KType-TestBase.json").read_bytes()
    )
    (layouts / "ALIASES.txt").write_text("K-Type-Standard.json -> KType-Standard.json\n")
    store = LayoutStore(layouts)
    assert store.board_aliases() == {"K-Type": "KType"}
    plan = Planner(store).plan(request(ktype(name="K-Type")), LATEST)
    assert plan.params.script == "k-type.bash"
    assert plan.files[0].name == "K-Type-Mine-0.kll"
    assert 'U"A" : U"Q";' in plan.files[0].content
    # Upstream, aliases are symlinks.
    (layouts / "ALIASES.txt").unlink()
    (layouts / "GeminiDawn-Standard.json").symlink_to("GeminiDuskDawn-Standard.json")
    (layouts / "WhiteFox-Aria.json").symlink_to("WhiteFox-AriaBlank.json")
    assert LayoutStore(layouts).board_aliases() == {"GeminiDawn": "GeminiDuskDawn"}
    with pytest.raises(InvalidLayout, match=r"no base layout 'K-Type-TestBase\.json'"):
        Planner(LayoutStore(layouts)).plan(request(ktype(name="K-Type")), LATEST)


def test_the_reference_aliases_give_the_keyboards_the_client_knows() -> None:
    layouts = CONFORMANCE / "layouts"
    if not layouts.is_dir():
        pytest.skip(NO_CONFORMANCE)
    assert LayoutStore(layouts).board_aliases() == {
        "K-Type": "KType",
        "GeminiDawn": "GeminiDuskDawn",
        "GeminiDusk": "GeminiDuskDawn",
    }
    layout = json.loads((layouts / "KType-Standard.json").read_bytes())
    layout["header"]["Name"] = "K-Type"
    assert layout["header"]["Base"] == "Base"
    plan = Planner(LayoutStore(layouts)).plan(request(layout), LATEST)
    assert plan.params.default_map == "stdFuncMap K-Type-Standard-0"


def test_the_hash_covers_the_recipe_version_and_the_base_layouts_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A zip made under older rules, or over another base file, is another build."""
    import shutil

    from kiisrv.recipe import planner as planner_module

    shutil.copytree(FIXTURE_LAYOUTS, tmp_path / "layouts")
    plans = Planner(LayoutStore(tmp_path / "layouts"))
    first = plans.plan(request(ktype()), LATEST).job.hash
    assert plans.plan(request(ktype()), LATEST).job.hash == first
    monkeypatch.setattr(planner_module, "RECIPE_VERSION", planner_module.RECIPE_VERSION + 1)
    assert plans.plan(request(ktype()), LATEST).job.hash != first
    monkeypatch.undo()
    base = tmp_path / "layouts" / "KType-TestBase.json"
    doc = json.loads(base.read_text())
    doc["matrix"][0]["layers"]["0"]["key"] = "TAB"
    base.write_text(json.dumps(doc))
    assert plans.plan(request(ktype()), LATEST).job.hash != first

"""The planner: what a request becomes before anything is written or run."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from kiisrv.catalog import Available
from kiisrv.errors import ClientError, InvalidLayout, Unsupported
from kiisrv.layouts import LayoutStore
from kiisrv.planner import Planner
from kiisrv.versions import Version
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

    from kiisrv import planner as planner_module

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


# -- which builds may write the shared ccache ------------------------------------------
# A build whose inputs the server chose (a stock layout, unmodified) seeds the ccache;
# any other build only reads it, so no request can plant objects another user links.


def _stock(layouts: Path, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((layouts / name).read_bytes())
    return doc


def _stock_cases() -> list[str]:
    layouts = CONFORMANCE / "layouts"
    if not layouts.is_dir():
        return []
    return sorted(p.name for p in layouts.glob("*.json"))


@pytest.mark.parametrize("target", [LATEST, LTS], ids=["latest", "lts"])
@pytest.mark.parametrize("name", _stock_cases() or ["KType-Standard.json"])
def test_every_stock_layout_as_the_configurator_sends_it_seeds_the_cache(
    name: str, target: Available
) -> None:
    layouts = CONFORMANCE / "layouts"
    if not layouts.is_dir():
        pytest.skip(NO_CONFORMANCE)
    plans = Planner(LayoutStore(layouts))
    try:
        plan = plans.plan(request(_stock(layouts, name)), target)
    except ClientError as exc:
        pytest.skip(f"{name} is refused on {target.version.name} ({exc.message}): no build")
    assert plan.seeds_cache, name


@pytest.mark.parametrize("target", [LATEST, LTS], ids=["latest", "lts"])
@pytest.mark.parametrize("name", ["KType-TestBase.json", "WhiteFox-TestBase.json"])
def test_the_project_fixtures_stock_layouts_seed_the_cache(name: str, target: Available) -> None:
    plan = planner().plan(request(_stock(FIXTURE_LAYOUTS, name)), target)
    assert plan.seeds_cache


def _changed(doc: dict[str, Any], how: str) -> dict[str, Any]:
    """A stock layout with one thing a user would change."""
    if how == "one key":
        doc["matrix"][1]["layers"]["0"]["key"] = "Z"
    elif how == "custom KLL":
        doc["custom"] = {"0": 'U"A" : U"B";'}
    elif how == "another layer":
        doc["matrix"][1]["layers"]["1"] = {"key": "Z"}
    elif how == "another variant":
        doc["header"]["Variant"] = "other"
    elif how == "renamed":
        doc["header"]["Layout"] = "Mine"
    elif how == "another author":
        doc["header"]["Author"] = "someone else"  # in every KLL file's header
    return doc


@pytest.mark.parametrize(
    "how",
    ["one key", "custom KLL", "another layer", "another variant", "renamed", "another author"],
)
def test_a_changed_stock_layout_only_reads_the_cache(how: str) -> None:
    stock = _stock(FIXTURE_LAYOUTS, "KType-TestBase.json")
    plan = planner().plan(request(_changed(stock, how)), LATEST)
    assert not plan.seeds_cache


def test_a_user_layout_only_reads_the_cache() -> None:
    assert not planner().plan(request(ktype()), LATEST).seeds_cache
    assert not planner().plan(request(ktype(custom='U"A" : U"B";')), LTS).seeds_cache


def test_a_stock_layout_under_another_stock_layouts_name_only_reads_the_cache() -> None:
    """KType-NoAnimations' keys sent as "Standard": the name finds KType-Standard.json,
    whose inputs differ, so the name alone earns nothing."""
    layouts = CONFORMANCE / "layouts"
    if not layouts.is_dir():
        pytest.skip(NO_CONFORMANCE)
    doc = _stock(layouts, "KType-NoAnimations.json")
    doc["header"]["Layout"] = "Standard"
    assert not Planner(LayoutStore(layouts)).plan(request(doc), LATEST).seeds_cache


def test_what_the_client_says_outside_the_layout_earns_nothing() -> None:
    """Only the generated inputs decide: a flag in the body, or in the layout, is data."""
    doc = _changed(_stock(FIXTURE_LAYOUTS, "KType-TestBase.json"), "one key")
    doc["seeds_cache"] = True
    doc["header"]["seeds_cache"] = True
    body = {**request(doc), "seeds_cache": True, "trusted": True}
    assert not planner().plan(body, LATEST).seeds_cache


def test_key_order_and_unknown_fields_do_not_change_a_stock_decision() -> None:
    """Same generated inputs, same decision: the JSON's shape is not an input."""
    doc = _stock(FIXTURE_LAYOUTS, "KType-TestBase.json")
    doc = dict(reversed(list(doc.items())))
    doc["macros"] = {"0": [{"name": "kept"}]}
    assert planner().plan(request(doc), LATEST).seeds_cache


def test_a_changed_stock_file_is_compared_as_it_is_now(tmp_path: Path) -> None:
    """``kiisrv layouts fetch`` changes a stock file: the old content no longer seeds."""
    import shutil

    shutil.copytree(FIXTURE_LAYOUTS, tmp_path / "layouts")
    plans = Planner(LayoutStore(tmp_path / "layouts"))
    old = _stock(tmp_path / "layouts", "KType-TestBase.json")
    assert plans.plan(request(old), LATEST).seeds_cache
    new = _changed(copy.deepcopy(old), "one key")
    path = tmp_path / "layouts" / "KType-TestBase.json"
    path.write_text(json.dumps(new))
    os.utime(path, ns=(1, 1))  # another mtime, whatever the clock's resolution
    assert not plans.plan(request(old), LATEST).seeds_cache
    assert plans.plan(request(new), LATEST).seeds_cache

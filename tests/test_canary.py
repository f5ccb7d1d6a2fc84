"""`kiisrv canary --verify` without Docker: the comparison, the report and the cold plan.

The Docker suite (tests/docker/test_canary.py) runs the real thing against the test
double; here the zips are made by hand, so that every way two builds can differ
(a byte, a missing half, a secure image only one has) is shown to be reported.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from kiisrv.build.containers import build_container_spec
from kiisrv.errors import Unavailable, UnknownKeyboard
from kiisrv.recipe.layouts import LayoutStore
from kiisrv.recipe.planner import Planner
from kiisrv.recipe.versions import Available, Version
from kiisrv.settings import Settings
from kiisrv.tools import canary, verify
from tests.helpers import ktype, mdergo1, request

pytestmark = pytest.mark.anyio

TARGET = Available(Version("latest", "stable", "controller-057", "v0.5.7"), "img", "sha256:1", None)


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_the_cold_plan_is_the_same_build_under_its_own_name(settings: Settings) -> None:
    plan = Planner(LayoutStore(settings.layouts_dir)).plan(request(mdergo1()), TARGET)
    cold = verify.from_nothing(plan)
    # Its own hash and zip: it can neither replace the served zip nor be answered by it.
    assert cold.job.hash != plan.job.hash and cold.job.stem != plan.job.stem
    assert {cold.job.zip_name, f"{cold.job.stem}_error.zip"}.isdisjoint(
        {plan.job.zip_name, f"{plan.job.stem}_error.zip"}
    )
    # The same image, .kll files and environment, built from nothing.
    assert (cold.target, cold.files, cold.layout_json) == (
        plan.target,
        plan.files,
        plan.layout_json,
    )
    assert cold.params.script == plan.params.script
    env = cold.params.environment()
    assert env == {**plan.params.environment(), "KIISRV_WARM": "0"}
    assert env["SPLIT_KEYBOARD"] == "1"
    spec = build_container_spec(
        settings,
        image=cold.target.image,
        job_hash=cold.job.hash,
        script=cold.params.script,
        zip_name=f"{cold.job.stem}.zip",
        environment=cold.params.environment(),
        suffix="x",
    )
    assert spec.image == "img" and spec.environment["KIISRV_WARM"] == "0"
    assert spec.command == [plan.params.script, cold.job.hash, f"{cold.job.stem}.zip"]
    # The planned request itself still builds warm.
    assert "KIISRV_WARM" not in plan.params.environment()


def test_every_dfu_bin_is_compared(tmp_path: Path) -> None:
    one = {
        "kiibohd.dfu.bin": b"A" * 100,
        "kiibohd.secure.dfu.bin": b"S",
        "kll.json": b"{}",
        "log/build.log": b"warm",
    }
    served = canary.firmware(make_zip(tmp_path / "a.zip", one))
    assert set(served) == {"kiibohd.dfu.bin", "kiibohd.secure.dfu.bin"}  # not the log, kll
    same = canary.firmware(make_zip(tmp_path / "b.zip", {**one, "log/build.log": b"cold"}))
    assert canary.differing(served, same) == ()
    byte = canary.firmware(
        make_zip(tmp_path / "c.zip", {**one, "kiibohd.dfu.bin": b"A" * 99 + b"B"})
    )
    assert canary.differing(served, byte) == ("kiibohd.dfu.bin",)
    no_secure = {k: v for k, v in one.items() if k != "kiibohd.secure.dfu.bin"}
    fewer = canary.firmware(make_zip(tmp_path / "d.zip", no_secure))
    assert canary.differing(served, fewer) == ("kiibohd.secure.dfu.bin",)
    halves = {"left_kiibohd.dfu.bin": b"L", "right_kiibohd.dfu.bin": b"R"}
    split = canary.firmware(make_zip(tmp_path / "e.zip", halves))
    other = canary.firmware(make_zip(tmp_path / "f.zip", {**halves, "right_kiibohd.dfu.bin": b"r"}))
    assert canary.differing(split, other) == ("right_kiibohd.dfu.bin",)
    assert canary.firmware(tmp_path / "missing.zip") == {}


async def run_canary(
    tmp_path: Path, references: dict[str, canary.Reference | Exception] | None
) -> canary.Report:
    """Three layouts; each "built" zip holds firmware named after its layout."""
    builds = tmp_path / "builds"
    builds.mkdir()
    layouts = tmp_path / "layouts"
    layouts.mkdir()
    for name in ("Same", "Other", "Gone"):
        (layouts / f"KType-{name}.json").write_text(json.dumps(ktype(layout=name)))
    (layouts / "Fokal-X.json").write_text(json.dumps({"header": {"Name": "Fokal"}}))

    async def submit(body: dict[str, Any]) -> canary.Answer:
        name = body["config"]["header"].get("Layout", "")
        if not name:
            raise UnknownKeyboard("no build script for keyboard 'Fokal'")
        make_zip(builds / f"KType-{name}-h.zip", {"kiibohd.dfu.bin": name.encode()})
        return canary.Answer(True, False, f"./tmp/KType-{name}-h.zip", None)

    async def verify(body: dict[str, Any]) -> canary.Reference:
        assert references is not None
        made = references[body["config"]["header"]["Layout"]]
        if isinstance(made, Exception):
            raise made
        return made

    return await canary.run(
        submit,
        builds,
        canary.layout_files(layouts),
        ["latest"],
        {"latest": {"image": "img", "tag": "v0.5.7"}},
        verify=verify if references is not None else None,
    )


async def test_a_differing_firmware_is_reported_not_identical(tmp_path: Path) -> None:
    report = await run_canary(
        tmp_path,
        {
            "Same": canary.Reference({"kiibohd.dfu.bin": b"Same"}),
            "Other": canary.Reference({"kiibohd.dfu.bin": b"another board's scan codes"}),
            "Gone": Unavailable("the engine went away"),
        },
    )
    cases = {r.layout: r for r in report.results}
    same, other, gone = (cases[f"KType-{n}.json"] for n in ("Same", "Other", "Gone"))
    assert (same.outcome, same.identical, same.differing) == ("built", True, ())
    # Still built (the user got a zip), but not the firmware a build from nothing makes.
    assert (other.outcome, other.identical, other.differing) == (
        "built",
        False,
        ("kiibohd.dfu.bin",),
    )
    # No build from nothing is no proof: not identical, and the report says why.
    assert gone.identical is False and gone.reference_error is not None
    assert "the engine went away" in gone.reference_error
    assert cases["Fokal-X.json"].outcome == "refused" and cases["Fokal-X.json"].identical is None
    assert report.summary() == {
        "built": 3,
        "refused": 1,
        "failed": 0,
        "identical": 1,
        "differing": 2,
    }
    table = report.markdown()
    assert "1 built cases identical to a build from nothing" in table
    assert "**2 differing**" in table
    assert "| KType-Same.json | built (" in table and "), identical |" in table
    assert "**DIFFERS** from a build from nothing: kiibohd.dfu.bin |" in table
    as_json = json.loads(json.dumps(report.as_json()))
    other_json = next(r for r in as_json["results"] if r["layout"] == "KType-Other.json")
    assert other_json["identical"] is False and other_json["differing"] == ["kiibohd.dfu.bin"]


async def test_without_verify_nothing_is_claimed(tmp_path: Path) -> None:
    report = await run_canary(tmp_path, None)
    assert all(r.identical is None for r in report.results)
    assert report.summary() == {"built": 3, "refused": 1, "failed": 0}
    assert "identical" not in report.markdown() and "DIFFERS" not in report.markdown()
    assert all(r["identical"] is None for r in report.as_json()["results"])

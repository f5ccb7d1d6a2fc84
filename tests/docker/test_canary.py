"""`kiisrv canary`: every layout against every version, through a request's code path.

Run as a user runs it (a subprocess configured by the environment), against the test
double images; the server then serves the report at ``GET /compat``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kiisrv.settings import Settings
from tests.helpers import app_client, kiisrv_env, ktype

pytestmark = pytest.mark.anyio


def canary(settings: Settings, layouts: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = kiisrv_env(settings, KIISRV_LAYOUTS_DIR=str(layouts))
    return subprocess.run(
        [sys.executable, "-m", "kiisrv", "canary", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


async def test_canary_reports_built_refused_and_failed(
    docker_settings: Settings, tmp_path: Path
) -> None:
    layouts = tmp_path / "canary-layouts"
    shutil.copytree(docker_settings.layouts_dir, layouts)
    (layouts / "KType-Mine.json").write_text(json.dumps(ktype()))
    (layouts / "KType-Broken.json").write_text(
        json.dumps(ktype(custom="# KIISRV_TEST_FAIL", layout="Broken"))
    )
    (layouts / "Azio-Fokal.json").write_text(
        json.dumps({**ktype(), "header": {**ktype()["header"], "Name": "Fokal"}})
    )
    result = canary(docker_settings, layouts, "--version", "latest", "--version", "lts")
    assert result.returncode == 1, result.stdout + result.stderr  # one build failed
    report = json.loads((docker_settings.data_dir / "compat.json").read_text())
    cases = {(r["layout"], r["version"]): r for r in report["results"]}
    # Aliases and LTS base files are not layouts of their own.
    assert not any(name.endswith(".lts.json") for name, _ in cases)
    mine = cases[("KType-Mine.json", "latest")]
    assert mine["outcome"] == "built" and mine["status"] == 200
    assert mine["firmware_bytes"] > 0 and mine["seconds"] > 0
    assert cases[("KType-Mine.json", "lts")]["outcome"] == "built"
    broken = cases[("KType-Broken.json", "latest")]
    assert broken["outcome"] == "failed" and broken["status"] == 422
    assert "failing as asked" in broken["error"]
    fokal = cases[("Azio-Fokal.json", "latest")]
    assert fokal["outcome"] == "refused" and fokal["status"] == 400
    assert "no build script for keyboard 'Fokal'" in fokal["error"]
    assert report["summary"] == {
        "built": sum(r["outcome"] == "built" for r in report["results"]),
        "refused": 2,
        "failed": 2,
    }
    table = (docker_settings.data_dir / "compat.md").read_text()
    assert "| KType-Mine.json | built (" in table
    assert "**failed** 422: " in table and "**refused** 400: " in table
    assert "2 refused before any build" in result.stdout + table

    # The running server serves the latest report.
    async with app_client(docker_settings) as client:
        r = await client.get("/compat")
        assert r.status_code == 200
        assert r.json()["results"] == report["results"]


async def test_compat_says_how_to_make_a_report(settings: Settings) -> None:
    async with app_client(settings) as client:
        r = await client.get("/compat")
    assert r.status_code == 404
    assert "kiisrv canary" in r.json()["error"]


def test_canary_writes_where_it_is_told(docker_settings: Settings, tmp_path: Path) -> None:
    layouts = tmp_path / "one"
    layouts.mkdir()
    shutil.copy(docker_settings.layouts_dir / "KType-TestBase.json", layouts)
    out = tmp_path / "report" / "compat.json"
    result = canary(docker_settings, layouts, "--version", "latest", "-o", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(out.read_text())["summary"] == {"built": 1, "refused": 0, "failed": 0}
    assert out.with_suffix(".md").is_file()
    assert not (docker_settings.data_dir / "compat.json").exists()
    assert "1 built, 0 refused, 0 failed" in result.stdout
    # The canary keeps to its own data folder: the server's has no builds of it.
    assert not list((docker_settings.data_dir / "builds").glob("*.zip"))

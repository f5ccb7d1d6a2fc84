"""`kiisrv canary`: every layout against every version, through a request's code path.

Run as a user runs it (a subprocess configured by the environment), against the test
double images; the server then serves the report at ``GET /compat``. With ``--verify``
each built case is built again from nothing and its firmware compared: the double pads
the firmware with random bytes when a layout asks (``KIISRV_TEST_OUTPUT_KB``), which
is how a build whose firmware is not a function of its inputs looks.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from docker import DockerClient

from kiisrv.build.containers import ContainerSpec
from kiisrv.core import Kiisrv
from kiisrv.settings import Settings
from kiisrv.tools import canary as canary_module
from tests.helpers import app_client, kiisrv_env, ktype, mdergo1, request

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


def leftover_containers(client: DockerClient, settings: Settings) -> list[str]:
    return [
        str(c.name)
        for c in client.containers.list(
            ignore_removed=True,
            all=True,
            filters={"label": f"io.kiisrv.instance={settings.instance}-canary"},
        )
    ]


async def test_canary_verify_reports_a_firmware_that_differs(
    docker_settings: Settings, docker_client: DockerClient, tmp_path: Path
) -> None:
    layouts = tmp_path / "verify-layouts"
    layouts.mkdir()
    for name in ("KType-TestBase.json", "MDErgo1-TestBase.json"):
        shutil.copy(docker_settings.layouts_dir / name, layouts)
    (layouts / "KType-Mine.json").write_text(json.dumps(ktype()))
    (layouts / "MDErgo1-Split.json").write_text(json.dumps(mdergo1()))
    # Firmware with random bytes in it: no two builds of it are the same.
    (layouts / "KType-Random.json").write_text(
        json.dumps(ktype(custom="# KIISRV_TEST_OUTPUT_KB=1", layout="Random"))
    )
    result = canary(
        docker_settings, layouts, "--verify", "--version", "latest", "--version", "nightly"
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, out  # every build succeeded, but one firmware differs
    report = json.loads((docker_settings.data_dir / "compat.json").read_text())
    cases = {(r["layout"], r["version"]): r for r in report["results"]}
    identical = ("KType-Mine.json", "KType-TestBase.json", "MDErgo1-TestBase.json")
    for layout in (*identical, "MDErgo1-Split.json"):
        for version in ("latest", "nightly"):
            case = cases[(layout, version)]
            assert case["outcome"] == "built" and case["identical"] is True, case
            assert case["differing"] == []
    for version in ("latest", "nightly"):  # nightly is latest's image: the same zip, cached
        random = cases[("KType-Random.json", version)]
        assert random["outcome"] == "built" and random["status"] == 200
        assert random["identical"] is False and random["differing"] == ["kiibohd.dfu.bin"]
    assert cases[("KType-Random.json", "nightly")]["cached"] is True
    assert report["summary"] == {
        "built": 10,
        "refused": 0,
        "failed": 0,
        "identical": 8,
        "differing": 2,
    }
    assert "10 built (8 identical to a build from nothing, 2 differ)" in result.stdout
    assert "DIFFERS from a build from nothing: kiibohd.dfu.bin" in result.stdout
    table = (docker_settings.data_dir / "compat.md").read_text()
    assert "| KType-Mine.json | built (" in table and ", identical |" in table
    assert "**DIFFERS** from a build from nothing: kiibohd.dfu.bin" in table
    assert "**2 differing**" in table
    assert not leftover_containers(docker_client, docker_settings)

    async with app_client(docker_settings) as client:
        r = await client.get("/compat")
    assert r.status_code == 200
    served = {(c["layout"], c["version"]): c["identical"] for c in r.json()["results"]}
    assert served[("KType-Mine.json", "latest")] is True
    assert served[("KType-Random.json", "latest")] is False
    assert r.json()["summary"]["differing"] == 2


def test_canary_verify_exits_0_when_every_firmware_is_identical(
    docker_settings: Settings, docker_client: DockerClient, tmp_path: Path
) -> None:
    layouts = tmp_path / "one"
    layouts.mkdir()
    shutil.copy(docker_settings.layouts_dir / "KType-TestBase.json", layouts)
    out = tmp_path / "report" / "compat.json"
    result = canary(docker_settings, layouts, "--verify", "--version", "lts", "-o", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(out.read_text())["summary"] == {
        "built": 1,
        "refused": 0,
        "failed": 0,
        "identical": 1,
        "differing": 0,
    }
    assert "1 built (1 identical to a build from nothing, 0 differ)" in result.stdout
    assert not leftover_containers(docker_client, docker_settings)


async def test_the_build_from_nothing_runs_cold_and_leaves_the_served_zip_alone(
    docker_settings: Settings, build_containers: object
) -> None:
    """The reference build is a container of its own with KIISRV_WARM=0, next to the
    request's zip, which stays what the request made; nothing of it is left behind."""
    server = Kiisrv(docker_settings)
    await server.start()
    started: list[ContainerSpec] = []
    start = server.engine.start

    async def watch(spec: ContainerSpec, **kw: Any) -> str:
        started.append(spec)
        return await start(spec, **kw)

    server.engine.start = watch  # type: ignore[method-assign]
    try:
        body = request(mdergo1())
        outcome = await server.build(body)
        assert outcome.success, outcome.job.error
        zip_path = docker_settings.builds_dir / outcome.job.zip_name
        before = zip_path.read_bytes()
        verifier = canary_module.Verifier(server)
        reference = await verifier(body)
        assert reference.error is None
        assert set(reference.firmware) == {"left_kiibohd.dfu.bin", "right_kiibohd.dfu.bin"}
        assert reference.firmware == canary_module.firmware(zip_path)
        assert zip_path.read_bytes() == before  # the served zip is not replaced
        warm, cold = started
        assert "KIISRV_WARM" not in warm.environment
        assert cold.environment["KIISRV_WARM"] == "0"
        assert cold.environment["CCACHE_DISABLE"] == warm.environment["CCACHE_DISABLE"] == "1"
        assert cold.image == warm.image and cold.command[0] == warm.command[0]
        assert {k: v for k, v in cold.environment.items() if k != "KIISRV_WARM"} == warm.environment
        # Once per hash: a second version of the same image asks for no second build.
        assert await verifier(body) == reference and len(started) == 2
        # Only the served zip is left: no cold zip, no cold inputs, no container.
        assert [p.name for p in docker_settings.builds_dir.glob("*.zip")] == [zip_path.name]
        assert not list(docker_settings.config_dir.glob("cold-*"))
        assert not list((docker_settings.builds_dir / ".work").iterdir())
        assert not await server.engine.containers(docker_settings.instance)
        with zipfile.ZipFile(zip_path) as z:
            assert "Build=cold" not in z.read("log/build.log").decode()
    finally:
        await server.stop()

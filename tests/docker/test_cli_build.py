"""`kiisrv build LAYOUT.json`: one build without a server, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

from kiisrv.settings import Settings
from tests.helpers import kiisrv_env, ktype


def build(settings: Settings, layout: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = kiisrv_env(settings, COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "kiisrv", "build", str(layout), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_build_writes_the_zip_and_shows_the_phases(
    docker_settings: Settings, tmp_path: Path
) -> None:
    layout = tmp_path / "mine.json"
    layout.write_text(json.dumps(ktype()))
    out = tmp_path / "out"
    done = build(docker_settings, layout, "-o", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "planned KType Mine: 2 layer(s), latest" in done.stdout
    assert "building" in done.stdout
    zips = list(out.glob("KType-Mine-*.zip"))
    assert len(zips) == 1 and f"built {zips[0]}" in done.stdout
    with zipfile.ZipFile(zips[0]) as z:
        assert z.read("kiibohd.dfu.bin").startswith(b"KIISRV TEST DOUBLE FIRMWARE")
    assert not (docker_settings.data_dir / "builds").exists()  # its own data folder

    lts = build(docker_settings, layout, "--env", "lts", "-o", str(out))
    assert lts.returncode == 0, lts.stdout + lts.stderr
    assert len(list(out.glob("KType-Mine-*.zip"))) == 2


def test_a_failed_build_exits_1_and_keeps_the_error_zip(
    docker_settings: Settings, tmp_path: Path
) -> None:
    layout = tmp_path / "broken.json"
    config = ktype()
    config["matrix"][0]["layers"]["1"] = {"key": "NOTAKEY"}
    layout.write_text(json.dumps(config))
    done = build(docker_settings, layout, "-o", str(tmp_path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "failed: Layer 1, key ESC: 'NOTAKEY' is not a USB HID key name" in done.stdout
    assert len(list(tmp_path.glob("KType-Mine-*_error.zip"))) == 1


def test_a_refused_build_exits_2_and_says_why(docker_settings: Settings, tmp_path: Path) -> None:
    layout = tmp_path / "mine.json"
    layout.write_text(json.dumps(ktype()))
    done = build(docker_settings, layout, "--env", "v9.9.9", "-o", str(tmp_path))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "refused (400): env: version 'v9.9.9' is not available here" in done.stdout
    assert not list(tmp_path.glob("*.zip"))

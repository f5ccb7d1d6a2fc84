"""The Configurator's flow over real HTTP against ``kiisrv serve``, and a restart."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import httpx

from kiisrv.settings import Settings
from tests.helpers import Events, ktype, request, serve

CONFIGURATOR = {"User-Agent": "Kiibohd Configurator", "Accept": "application/json"}


def test_configurator_flow_and_restart(
    docker_settings: Settings, build_containers: Events, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    with serve(docker_settings, log) as live, httpx.Client(base_url=live.base, timeout=120) as http:
        versions = http.get("/versions", headers=CONFIGURATOR).json()
        assert versions["latest"]["commit"] >= 1
        layout = http.get("/layouts/KType-TestBase.json", headers=CONFIGURATOR).json()
        assert layout["header"]["Name"] == "KType"
        config = ktype()
        r = http.post(
            "/download.php",
            json=request(config),
            headers={**CONFIGURATOR, "Content-Type": "application/json; charset=utf-8"},
        )
        assert r.status_code == 200, r.text
        filename = r.json()["filename"]
        z = zipfile.ZipFile(io.BytesIO(http.get(f"/tmp/{filename.split('/')[-1]}").content))
        assert "kiibohd.dfu.bin" in z.namelist()
        assert "Builds: 1 (1 unique)" in http.get("/stats").text
    assert len(build_containers.created()) == 1

    with serve(docker_settings, log) as live, httpx.Client(base_url=live.base, timeout=120) as http:
        start = time.monotonic()
        again = http.post("/download.php", json=request(config), headers=CONFIGURATOR)
        elapsed = time.monotonic() - start
        assert again.json() == {"filename": filename, "success": True}
        assert http.get(f"/tmp/{filename.split('/')[-1]}").status_code == 200
        assert "Builds: 2 (1 unique)" in http.get("/stats").text
    assert len(build_containers.created()) == 1, "the restarted server rebuilt a finished build"
    assert elapsed < 5

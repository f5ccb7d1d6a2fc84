"""The Configurator's flow over real HTTP against ``kiisrv serve``, and a restart."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from kiisrv.settings import Settings
from tests.docker.conftest import Events
from tests.helpers import ktype, request, wait_for_http

CONFIGURATOR = {"User-Agent": "Kiibohd Configurator", "Accept": "application/json"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Live:
    base: str
    pid: int


@contextmanager
def serve(settings: Settings, log: Path) -> Iterator[Live]:
    port = free_port()
    env = {
        **os.environ,
        "KIISRV_HOST": "127.0.0.1",
        "KIISRV_PORT": str(port),
        "KIISRV_DATA_DIR": str(settings.data_dir),
        "KIISRV_LAYOUTS_DIR": str(settings.layouts_dir),
        "KIISRV_IMAGE_PREFIX": settings.image_prefix,
        "KIISRV_INSTANCE": settings.instance,
        "KIISRV_CCACHE_VOLUME": settings.ccache_volume,
    }
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kiisrv", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_for_http(f"{base}/healthz"):
            raise AssertionError(f"server did not start:\n{log.read_text()}")
        yield Live(base, proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


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

"""Opt-in: a real firmware build in a real controller image.

Run with ``KIISRV_REAL_IMAGE=kiisrv-controller-057:latest make test`` (or the -050
image) after building it with docker/controller/Dockerfile. Needs the reference
layouts in ../shared/conformance/layouts (or KIISRV_LAYOUTS_DIR).
"""

from __future__ import annotations

import io
import json
import os
import zipfile

import pytest
from docker import DockerClient

from kiisrv.settings import Settings
from tests.helpers import REAL_IMAGE_HOWTO, app_client, real_layouts

REAL_IMAGE = os.environ.get("KIISRV_REAL_IMAGE", "")
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.real_image,
    pytest.mark.skipif(not REAL_IMAGE, reason=REAL_IMAGE_HOWTO),
]


# LED keys on LTS (ledControl), a split board, a one-layer layout (stock layers).
LAYOUTS = {
    "latest": ["KType-Standard", "MDErgo1-Default", "MD1.1-StandardBlank"],
    "lts": ["MD1.1-Standard", "MDErgo1-Default", "WhiteFox-AllBlank"],
}


@pytest.mark.parametrize("index", [0, 1, 2])
async def test_real_firmware_build(
    settings: Settings, docker_client: DockerClient, index: int
) -> None:
    layouts = real_layouts()
    repo, _, tag = REAL_IMAGE.partition(":")
    prefix, _, container = repo.rpartition("controller-")
    env = "lts" if container == "050" else "latest"
    layout = LAYOUTS[env][index]
    real = settings.replace(
        docker_url=os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"),
        layouts_dir=layouts,
        image_prefix=prefix,
        image_tag=tag or "latest",
        build_timeout=900,
    )
    config = json.loads((layouts / f"{layout}.json").read_bytes())
    async with app_client(real) as client:
        r = await client.post("/", json={"config": config, "env": env})
        assert r.status_code == 200, r.json().get("error")
        name = r.json()["filename"].rsplit("/", 1)[1]
        z = zipfile.ZipFile(io.BytesIO((await client.get(f"/tmp/{name}")).content))
        firmware = (
            ["left_kiibohd.dfu.bin", "right_kiibohd.dfu.bin"]
            if "Ergo" in layout
            else ["kiibohd.dfu.bin"]
        )
        for f in firmware:
            data = z.read(f)
            assert len(data) > 4096 and not data.startswith(b"KIISRV TEST DOUBLE")

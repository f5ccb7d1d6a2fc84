"""Firmware anyone can check: the signed manifest in every zip and ``kiisrv verify``, on
the real engine with the test-double image (which builds firmware from its inputs, so
a rebuild from nothing gives the same bytes, and another image other bytes).

``kiisrv verify`` runs as a user runs it: a subprocess, its verdict on stdout, its
progress on stderr, its exit status 0 (verified), 1 (tampered, differs) or 2 (cannot
tell: no manifest, the image not here).
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import docker.errors
import httpx
import pytest
from docker import DockerClient

from kiisrv import signing
from kiisrv.recipe import manifest
from kiisrv.settings import Settings
from kiisrv.web.pages import SIGNING_KEY_HEADER
from tests.helpers import (
    TEST_PREFIX,
    app_client,
    kiisrv_env,
    ktype,
    mdergo1,
    request,
    serve,
    unlabelled_test_image,
)

pytestmark = pytest.mark.anyio


async def _built(client: httpx.AsyncClient, config: dict[str, Any]) -> tuple[str, bytes]:
    r = await client.post("/", json=request(config))
    assert r.status_code == 200, r.text
    name = r.json()["filename"].rsplit("/", 1)[1]
    return name, (await client.get(f"/tmp/{name}")).content


def _verify(settings: Settings, zip_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kiisrv", "verify", str(zip_path), *args],
        env=kiisrv_env(settings),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _rezip(data: bytes, path: Path, **change: bytes) -> Path:
    """The zip with some members' contents replaced, written to ``path``."""
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(path, "w") as out:
        for info in src.infolist():
            out.writestr(info, change.get(info.filename, src.read(info)))
    return path


async def test_a_served_zip_carries_its_signed_manifest(
    dclient: httpx.AsyncClient, docker_settings: Settings, controller_image: str
) -> None:
    name, data = await _built(dclient, ktype())
    z = zipfile.ZipFile(io.BytesIO(data))
    text, sig = z.read(manifest.NAME), json.loads(z.read(manifest.SIGNATURE))
    key = (await dclient.get("/signing-key")).json()
    assert key["algorithm"] == "ed25519"
    public = signing.public_key(key["key"])
    assert signing.verify(public, text, sig) and sig["key"] == key["id"]
    man = json.loads(text)
    assert manifest.tampered(man, {n: z.read(n) for n in z.namelist()}) == []
    assert man["image"]["id"] == controller_image  # the fixture gives the image's id
    assert man["image"]["name"] == f"{docker_settings.image_prefix}controller-057:latest"
    assert man["image"]["kll"] and man["built"] == "warm"
    hash_ = man["request"]["hash"]
    assert name.endswith(f"-{hash_}.zip")
    route = (await dclient.get(f"/builds/{hash_}/manifest")).json()
    assert route == {"manifest": man, "signature": sig}
    assert (await dclient.get("/versions")).headers[SIGNING_KEY_HEADER] == key["key"]
    # The Configurator's files are where they were: the firmware, the layout, kll/, log/.
    assert {"kiibohd.dfu.bin", "KType-Mine.json", "log/build.log"} <= set(z.namelist())
    # A failed build has no firmware, so no manifest; an unknown hash neither.
    r = await dclient.post("/", json=request(ktype(custom="# KIISRV_TEST_FAIL")))
    failed = r.json()["filename"].rsplit("-", 1)[1].removesuffix("_error.zip")
    assert (await dclient.get(f"/builds/{failed}/manifest")).status_code == 404
    assert (await dclient.get(f"/builds/{'0' * 32}/manifest")).status_code == 404


async def test_verify_says_verified_tampered_or_no_manifest(
    dclient: httpx.AsyncClient, docker_settings: Settings, tmp_path: Path
) -> None:
    _, data = await _built(dclient, mdergo1())  # a split board: two firmware files
    key = tmp_path / "server.key"
    key.write_text((await dclient.get("/signing-key")).text)
    good = tmp_path / "good.zip"
    good.write_bytes(data)
    done = _verify(docker_settings, good, "--key", str(key))
    assert (done.returncode, done.stdout.strip()) == (0, "verified"), done.stderr
    assert "building from nothing" in done.stderr

    firmware = zipfile.ZipFile(io.BytesIO(data)).read("left_kiibohd.dfu.bin")
    flipped = bytes([firmware[0] ^ 1]) + firmware[1:]
    one_byte = _rezip(data, tmp_path / "byte.zip", **{"left_kiibohd.dfu.bin": flipped})
    done = _verify(docker_settings, one_byte, "--key", str(key))
    assert (done.returncode, done.stdout.strip()) == (1, "tampered: left_kiibohd.dfu.bin")

    man = json.loads(zipfile.ZipFile(io.BytesIO(data)).read(manifest.NAME))
    man["firmware"][0]["sha256"] = manifest.sha256(flipped)
    edited = _rezip(data, tmp_path / "edited.zip", **{manifest.NAME: manifest.encode(man)})
    done = _verify(docker_settings, edited, "--key", str(key))
    assert done.returncode == 1
    assert done.stdout.strip() == "tampered: manifest.json (its signature does not hold)"

    # Another deployment's key: the signature is not its.
    other = tmp_path / "other.key"
    other.write_text(json.dumps(signing.Signer.from_file(tmp_path / "o").public_json()))
    done = _verify(docker_settings, good, "--key", str(other))
    assert done.returncode == 1 and "signature does not hold" in done.stdout

    old = tmp_path / "old.zip"
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(old, "w") as out:
        for info in src.infolist():
            if info.filename not in (manifest.NAME, manifest.SIGNATURE):
                out.writestr(info, src.read(info))
    done = _verify(docker_settings, old, "--key", str(key))
    assert done.returncode == 2 and done.stdout.startswith("no manifest:")


async def test_verify_takes_the_key_the_server_publishes(
    docker_settings: Settings, tmp_path: Path
) -> None:
    """``--server URL``: the key of the deployment that built it, from its route."""
    with serve(docker_settings, tmp_path / "server.log") as live:
        async with httpx.AsyncClient(base_url=live.base, timeout=120) as client:
            _, data = await _built(client, ktype())
        zip_path = tmp_path / "k.zip"
        zip_path.write_bytes(data)
        done = _verify(docker_settings, zip_path, "--server", live.base)
    assert (done.returncode, done.stdout.strip()) == (0, "verified"), done.stderr
    gone = _verify(docker_settings, zip_path, "--server", "http://127.0.0.1:9")
    assert gone.returncode == 2 and gone.stdout.startswith("no key to check against")


async def test_another_image_is_refused_unless_named_and_then_differs(
    dclient: httpx.AsyncClient,
    docker_settings: Settings,
    docker_client: DockerClient,
    tmp_path: Path,
) -> None:
    """The manifest names its image by id: a zip from an image this machine lacks is
    "image not here"; ``--image`` builds in another, says so, and compares."""
    _, data = await _built(dclient, ktype())
    key = tmp_path / "server.key"
    key.write_text((await dclient.get("/signing-key")).text)
    zip_path = tmp_path / "k.zip"
    zip_path.write_bytes(data)
    man = json.loads(zipfile.ZipFile(io.BytesIO(data)).read(manifest.NAME))
    tags = [f"{TEST_PREFIX}verify-same:latest", f"{TEST_PREFIX}verify-other:latest"]
    try:
        # The same behaviour under another id; and an image that builds other firmware.
        unlabelled_test_image(docker_client, tags[0], "true")
        unlabelled_test_image(
            docker_client,
            tags[1],
            "sed -i 's/KIISRV TEST DOUBLE FIRMWARE/KIISRV TEST DOUBLE FIRMWARE, ANOTHER/' "
            "/controller/Keyboards/stand-in-firmware.sh",
        )
        done = _verify(docker_settings, zip_path, "--key", str(key), "--image", tags[0])
        assert (done.returncode, done.stdout.strip()) == (0, "verified"), done.stderr
        assert f"not the image the manifest names ({man['image']['id']})" in done.stderr
        done = _verify(docker_settings, zip_path, "--key", str(key), "--image", tags[1])
        assert (done.returncode, done.stdout.strip()) == (1, "differs: kiibohd.dfu.bin")
        # The manifest's image gone from this machine: nothing to build in.
        missing = dict(man, image={**man["image"], "id": "sha256:" + "0" * 64})
        text = manifest.encode(missing)
        signer = signing.Signer.from_file(docker_settings.signing_key_path)
        sig = json.dumps(signer.sign(text)).encode()
        elsewhere = _rezip(
            data, tmp_path / "e.zip", **{manifest.NAME: text, manifest.SIGNATURE: sig}
        )
        done = _verify(docker_settings, elsewhere, "--key", str(key))
        assert done.returncode == 2 and done.stdout.startswith(f"image not here: sha256:{'0' * 64}")
    finally:
        for tag in tags:
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(tag, force=True)


async def test_two_servers_agree_on_the_firmware_and_the_manifest(
    docker_settings: Settings, tmp_path: Path
) -> None:
    """Two deployments, same image and inputs, each its own data folder and key: the
    same firmware bytes and the same manifest; only the signatures differ."""
    made = []
    for n in (1, 2):
        settings = docker_settings.replace(
            data_dir=tmp_path / f"server-{n}", instance=f"{docker_settings.instance}-{n}"
        )
        async with app_client(settings) as client:
            _, data = await _built(client, ktype())
            key = (await client.get("/signing-key")).json()["key"]
        made.append((zipfile.ZipFile(io.BytesIO(data)), key))
    (one, key_one), (two, key_two) = made
    assert key_one != key_two
    assert one.read(manifest.NAME) == two.read(manifest.NAME)
    assert one.read("kiibohd.dfu.bin") == two.read("kiibohd.dfu.bin")
    assert one.read(manifest.SIGNATURE) != two.read(manifest.SIGNATURE)

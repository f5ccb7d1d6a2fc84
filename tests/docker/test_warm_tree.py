"""Builds that start from the image's warm trees (docker/controller/warm.sh, build.sh).

The entrypoint runs here directly, as the server runs it, with the test double image
(in CI) and, opt-in, a real controller image (``KIISRV_REAL_IMAGE``). What must hold:
a request whose maps match a warm tree runs ninja alone (no configure), the firmware
is built from the request's layers and not the tree's, and it is byte for byte what a
build from nothing makes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import docker.errors
import pytest
from docker import DockerClient

from kiisrv.recipe import kll
from kiisrv.recipe.layout import parse_layout
from kiisrv.recipe.layouts import LayoutStore
from tests.helpers import (
    CONFORMANCE,
    NO_CONFORMANCE,
    REAL_IMAGE_HOWTO,
    TEST_IMAGE_PREFIX,
    TEST_PREFIX,
    real_layouts,
)

REAL_IMAGE = os.environ.get("KIISRV_REAL_IMAGE", "")


@dataclass
class Result:
    status: int
    log: str
    zip: zipfile.ZipFile | None

    def read(self, name: str) -> bytes:
        assert self.zip is not None, self.log
        return self.zip.read(name)


def run_entrypoint(
    client: DockerClient,
    image: str,
    tmp: Path,
    files: dict[str, str],
    env: dict[str, str],
    script: str,
    warm: bool = True,
) -> Result:
    """One build, as the server starts it: kll folder in, zip out, no network."""
    config, builds = tmp / "config", tmp / "builds"
    (config / "job").mkdir(parents=True, exist_ok=True)
    builds.mkdir(exist_ok=True)
    builds.chmod(0o777)
    for old in builds.iterdir():
        old.unlink()
    for name, text in files.items():
        (config / "job" / name).write_text(text)
    container = client.containers.run(
        image,
        [script, "job", "out.zip"],
        name=f"{TEST_PREFIX}warm-{os.urandom(3).hex()}",
        environment={**env, "KIISRV_WARM": "1" if warm else "0"},
        user="1000:1000",
        network_disabled=True,
        network_mode="none",
        tmpfs={"/tmp": "exec,mode=1777,size=1g"},
        volumes={
            str(config): {"bind": "/mnt/config", "mode": "ro"},
            str(builds): {"bind": "/mnt/builds", "mode": "rw"},
        },
        detach=True,
    )
    try:
        status = int(container.wait(timeout=900)["StatusCode"])
        log = container.logs().decode("utf-8", "replace")
    finally:
        container.remove(force=True)
    made = builds / ("out.zip" if status == 0 else "out_error.zip")
    z = zipfile.ZipFile(io.BytesIO(made.read_bytes())) if made.is_file() else None
    return Result(status, log, z)


def kll_inputs(
    layout_doc: dict[str, object], base_doc: dict[str, object], lts: bool
) -> tuple[dict[str, str], dict[str, str], str]:
    layout = parse_layout(layout_doc)
    files = kll.generate(layout, parse_layout(base_doc), lts)
    params = kll.build_params(layout, files)
    return {f.name: f.content for f in files}, params.environment(), params.script


def two_layers(custom: str = "") -> dict[str, object]:
    doc: dict[str, object] = json.loads(
        (Path(__file__).parents[1] / "fixtures" / "layouts" / "KType-TestBase.json").read_text()
    )
    doc["header"] = {**doc["header"], "Layout": "Warm"}  # type: ignore[dict-item]
    matrix = doc["matrix"]
    assert isinstance(matrix, list)
    for i, key in enumerate(matrix):
        key["layers"]["1"] = {"key": f"F{i + 1}"}
    if custom:
        doc["custom"] = {"1": custom}
    return doc


@pytest.fixture(scope="module")
def double(docker_client: DockerClient, controller_image: str) -> str:
    return f"{TEST_IMAGE_PREFIX}controller-057:latest"


def test_warm_build_runs_ninja_alone_on_the_requests_layers(
    docker_client: DockerClient, double: str, tmp_path: Path
) -> None:
    base = two_layers()
    files, env, script = kll_inputs(two_layers(), base, lts=False)
    warm = run_entrypoint(docker_client, double, tmp_path, files, env, script)
    assert warm.status == 0, warm.log
    assert "Build=warm from /warm/k-type/" in warm.log
    assert "configuring" not in warm.log  # no configure step
    # Two steps ran, the KLL (ninja's first run: build.sh) and the firmware (its second):
    # the tree was up to date but for the layers.
    steps = [line for line in warm.log.splitlines() if line.startswith("[")]
    assert [s.split(" (")[0] for s in steps] == [
        "[1/1] Generating KLL Layout",
        "[1/1] Linking kiibohd.dfu.bin",
    ]
    # The double's KLL step writes the scancode map's name, then the layers.
    layers = (
        "/* scancode map: scancode_map */\n" + files["KType-Warm-0.kll"] + files["KType-Warm-1.kll"]
    )
    assert hashlib.sha256(layers.encode()).hexdigest() in warm.read("kiibohd.dfu.bin").decode()
    assert b"build date: 2019-08-01 12:00:00 -0700" in warm.read("kiibohd.dfu.bin")  # pinned

    cold = run_entrypoint(docker_client, double, tmp_path, files, env, script, warm=False)
    assert cold.status == 0, cold.log
    assert "Build=cold" in cold.log and "configuring" in cold.log
    assert cold.read("kiibohd.dfu.bin") == warm.read("kiibohd.dfu.bin")
    assert sorted(cold.zip.namelist()) == sorted(warm.zip.namelist())  # type: ignore[union-attr]

    changed, env2, _ = kll_inputs(two_layers(custom="# one more line"), base, lts=False)
    other = run_entrypoint(docker_client, double, tmp_path, changed, env2, script)
    assert other.status == 0, other.log
    assert other.read("kiibohd.dfu.bin") != warm.read("kiibohd.dfu.bin")  # never stale


def test_maps_without_a_warm_tree_reconfigure_from_one(
    docker_client: DockerClient, double: str, tmp_path: Path
) -> None:
    doc = two_layers()
    for key in doc["matrix"]:  # type: ignore[attr-defined]
        for n in range(2, 6):
            key["layers"][str(n)] = {"key": "A"}
    files, env, script = kll_inputs(doc, two_layers(), lts=False)
    assert env["PartialMapsExpandedOverride"].count(";") == 4
    result = run_entrypoint(docker_client, double, tmp_path, files, env, script)
    assert result.status == 0, result.log
    assert "Build=reconfigure from /warm/k-type/" in result.log and "configuring" in result.log
    assert "kll (test double): maps layer-0 layer-1 layer-2 layer-3 layer-4 layer-5" in result.log
    cold = run_entrypoint(docker_client, double, tmp_path, files, env, script, warm=False)
    assert cold.read("kiibohd.dfu.bin") == result.read("kiibohd.dfu.bin")


def test_one_layer_without_a_way_to_other_layers_asks_for_no_stock_layers(
    docker_client: DockerClient, double: str, tmp_path: Path
) -> None:
    doc = two_layers()
    for key in doc["matrix"]:  # type: ignore[attr-defined]
        del key["layers"]["1"]
    files, env, script = kll_inputs(doc, two_layers(), lts=False)
    assert env["PartialMapsExpandedOverride"] == ";"
    result = run_entrypoint(docker_client, double, tmp_path, files, env, script)
    assert result.status == 0, result.log
    assert "@@@@@ Maps=stdFuncMap layer-0|;" in result.log


def conformance_cases() -> list[str]:
    """Every layout a user can pick from the reference set (none when it is absent)."""
    from kiisrv.tools.canary import layout_files

    folder = CONFORMANCE / "layouts"
    return [p.stem for p in layout_files(folder)] if folder.is_dir() else []


def stock_inputs(
    layouts: Path, name: str, lts: bool, change_a_key: bool = False
) -> tuple[dict[str, str], kll.BuildParams] | None:
    """The .kll files and parameters the server sends for a stock layout (None: refused)."""
    from kiisrv.errors import KiisrvError
    from kiisrv.recipe import support
    from kiisrv.recipe.versions import DEFAULT_VERSIONS

    doc = json.loads((layouts / f"{name}.json").read_bytes())
    if change_a_key:
        changed = False
        for key in doc["matrix"]:
            action = key["layers"].get("0")
            if action and action.get("key") == "A":
                action["key"] = "Z"
                changed = True
        assert changed, f"{name}: no key A on layer 0 to change"
    layout = parse_layout(doc)
    try:
        version = {v.name: v for v in DEFAULT_VERSIONS}["lts" if lts else "latest"]
        support.check(layout, version)
        base = LayoutStore(layouts).load_base(kll.base_file_names(layout, lts))
        generated = kll.generate(layout, base, lts)
    except KiisrvError:
        return None
    files = [kll.KllFile(kll.sanitise(f.name), f.content) for f in generated]
    return {f.name: f.content for f in files}, kll.build_params(layout, files)


def firmware_names(params: kll.BuildParams) -> list[str]:
    if params.split:
        return ["left_kiibohd.dfu.bin", "right_kiibohd.dfu.bin"]
    return ["kiibohd.dfu.bin"]


@pytest.mark.skipif(not conformance_cases(), reason=NO_CONFORMANCE)
@pytest.mark.parametrize("lts", [False, True], ids=["latest", "lts"])
def test_every_stock_layout_builds_warm_from_its_own_configure_and_equals_a_cold_build(
    docker_client: DockerClient, double: str, tmp_path: Path, lts: bool
) -> None:
    """The double's configure picks a scancode map by Layout (and a product id): a
    request that reused another variant's tree would ship another board's firmware."""
    layouts = CONFORMANCE / "layouts"
    checked = 0
    for name in conformance_cases():
        inputs = stock_inputs(layouts, name, lts)
        if inputs is None:
            continue
        files, params = inputs
        env = params.environment()
        warm = run_entrypoint(docker_client, double, tmp_path, files, env, params.script)
        assert warm.status == 0, (name, warm.log[-2000:])
        assert "Build=warm from /warm/" in warm.log, (name, warm.log)
        assert "configuring" not in warm.log, name
        cold = run_entrypoint(
            docker_client, double, tmp_path, files, env, params.script, warm=False
        )
        assert cold.status == 0, (name, cold.log[-2000:])
        for fw in firmware_names(params):
            assert warm.read(fw) == cold.read(fw), (name, fw)
        if name.startswith("WhiteFox-") and params.layout:
            scan = f"scancode map: scancode_map.{params.layout}".encode()
            assert scan in warm.read("log/generatedKeymap.h"), name
        checked += 1
    assert checked >= 25


@pytest.mark.parametrize(
    "variant", ["truefox", "vanilla", "iso", "aria", "jackofalltrades", "winkeyless"]
)
def test_a_whitefox_variant_never_reuses_another_variants_tree(
    docker_client: DockerClient, double: str, tmp_path: Path, variant: str
) -> None:
    """Two layers: only truefox has a warm tree of that shape; the others reconfigure
    from the nearest tree (their own variant's) and match a build from nothing."""
    files = {"WhiteFox-T-0.kll": 'U"A" : U"B";\n', "WhiteFox-T-1.kll": 'U"A" : U"C";\n'}
    env = {
        "DefaultMapOverride": "stdFuncMap WhiteFox-T-0",
        "PartialMapsExpandedOverride": "WhiteFox-T-1",
        "Layout": variant,
    }
    result = run_entrypoint(docker_client, double, tmp_path, files, env, "whitefox.bash")
    assert result.status == 0, result.log
    if variant == "truefox":
        assert "Build=warm from /warm/whitefox/" in result.log
    else:
        assert "Build=reconfigure from /warm/whitefox/" in result.log
        # Nearest: its own one-layer tree, which differs in the partial maps alone.
        assert "(differs in PartialMaps)" in result.log
    assert f"scancode map: scancode_map.{variant}".encode() in result.read("log/generatedKeymap.h")
    cold = run_entrypoint(docker_client, double, tmp_path, files, env, "whitefox.bash", warm=False)
    assert cold.read("kiibohd.dfu.bin") == result.read("kiibohd.dfu.bin")


REAL_CASES = [(name, changed) for name in conformance_cases() for changed in (False, True)]


@pytest.mark.real_image
@pytest.mark.skipif(not REAL_IMAGE, reason=REAL_IMAGE_HOWTO)
@pytest.mark.parametrize(
    ("layout", "change_a_key"),
    REAL_CASES or [("KType-Standard", False)],
    ids=[f"{n}{'-A2Z' if c else ''}" for n, c in REAL_CASES] or None,
)
def test_real_warm_firmware_is_byte_identical_to_a_cold_build(
    docker_client: DockerClient, tmp_path: Path, layout: str, change_a_key: bool
) -> None:
    """Every conformance layout, stock and with one key changed (A -> Z): the firmware
    the fast path ships is the firmware of a build from nothing in the same image."""
    layouts = real_layouts()
    try:
        docker_client.images.get(REAL_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"KIISRV_REAL_IMAGE={REAL_IMAGE} is not on this Docker host")
    lts = REAL_IMAGE.split(":")[0].endswith("050")
    if change_a_key and "A" not in {
        k["layers"].get("0", {}).get("key")
        for k in json.loads((layouts / f"{layout}.json").read_bytes())["matrix"]
    }:
        pytest.skip(f"{layout} has no key A on layer 0")
    inputs = stock_inputs(layouts, layout, lts, change_a_key)
    if inputs is None:
        pytest.skip(f"{layout} is refused up front for this version (support.py)")
    files, params = inputs
    env = params.environment()
    warm = run_entrypoint(docker_client, REAL_IMAGE, tmp_path, files, env, params.script)
    assert warm.status == 0, warm.log[-3000:]
    assert "Build=warm" in warm.log and "-- Configuring done" not in warm.log
    cold = run_entrypoint(
        docker_client, REAL_IMAGE, tmp_path, files, env, params.script, warm=False
    )
    assert cold.status == 0, cold.log[-3000:]
    assert "-- Configuring done" in cold.log
    for name in firmware_names(params):
        assert warm.read(name) == cold.read(name), name
        assert len(warm.read(name)) > 4096

"""Which warm tree a build may reuse (warmtree.py), the cmake wrapper that records a
configure (docker/controller/bin/cmake), and the committed warm list (warmlist.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kiisrv import warmlist
from kiisrv.warmtree import IGNORED_ENV, Record, differences, pick, trees_of
from tests.helpers import CONFORMANCE, NO_CONFORMANCE, REPO

WRAPPER = REPO / "docker" / "controller" / "bin" / "cmake"


def record(
    layout: str = "truefox", partial: str = "", cwd: str = "/tmp/kiisrv-build/whitefox", **env: str
) -> Record:
    args = (
        "-DCHIP=mk20dx256vlh7",
        f"-DLayoutName=:{layout}",
        f"-DBaseMap=scancode_map scancode_map.{layout}",
        "-DDefaultMap=stdFuncMap layer-0",
        f"-DPartialMaps={partial}",
        "/controller",
        "-G",
        "Ninja",
    )
    base = {"PATH": "/usr/bin", "CFLAGS": "-fcommon", "PYTHONHASHSEED": "0"}
    return Record(cwd, args, tuple(sorted({**base, **env}.items())))


def test_the_key_is_what_cmake_was_given() -> None:
    assert record().key() == record().key()
    assert record("vanilla").key() != record("truefox").key()
    assert record(partial="layer-1").key() != record().key()
    assert record(cwd="/tmp/kiisrv-build/k-type").key() != record().key()


def test_an_environment_variable_counts_unless_it_is_known_not_to_reach_configure() -> None:
    assert record(CFLAGS="-O0").key() != record().key()
    assert record(SOMETHING_NEW="1").key() != record().key()  # safe by default
    for name in IGNORED_ENV:
        assert record(**{name: "anything"}).key() == record().key(), name


def test_pick_reuses_only_the_same_configure(tmp_path: Path) -> None:
    trees = [(tmp_path / "a", record("truefox")), (tmp_path / "b", record("vanilla"))]
    assert pick(record("vanilla"), trees).how == "warm"
    assert pick(record("vanilla"), trees).tree == tmp_path / "b"
    # Another variant: never warm, reconfigure from the nearest tree.
    choice = pick(record("iso"), trees)
    assert choice.how == "reconfigure"
    assert choice.differs == ("BaseMap", "LayoutName")
    # The nearest is the one with the fewest differing options.
    trees.append((tmp_path / "c", record("iso", partial="layer-1")))
    assert pick(record("iso"), trees).tree == tmp_path / "c"
    assert pick(record("iso"), trees).differs == ("PartialMaps",)


def test_pick_builds_from_nothing_when_a_tree_cannot_be_reconfigured(tmp_path: Path) -> None:
    tree = [(tmp_path / "a", record("truefox"))]
    # CFLAGS is read at a tree's first configure only: a reconfigure would keep the old.
    assert pick(record("truefox", CFLAGS="-O0"), tree).how == "cold"
    # Another build folder (another script).
    assert pick(record(cwd="/tmp/kiisrv-build/k-type"), tree).how == "cold"
    # An option the tree was given and the request is not would keep its cached value.
    fewer = Record(record().cwd, record().args[1:], record().env)
    assert pick(fewer, tree).how == "cold"
    assert pick(record(), []).how == "cold"


def test_differences_name_what_keeps_two_configures_apart() -> None:
    assert differences(record("iso"), record("aria", FOO="1")) == [
        "BaseMap: 'scancode_map scancode_map.iso' != 'scancode_map scancode_map.aria'",
        "LayoutName: ':iso' != ':aria'",
        "$FOO: None != '1'",
    ]


def _wrapper_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    fake = tmp_path / "fakebin"
    fake.mkdir(exist_ok=True)
    real = fake / "cmake"
    real.write_text('#!/bin/sh\necho "real cmake $*" > "$PWD/ran"\n')
    real.chmod(0o755)
    path = f"{WRAPPER.parent}:{fake}:/usr/bin:/bin"
    return {"PATH": path, "HOME": str(tmp_path), "Layout": "iso", **extra}


def test_the_wrapper_records_a_configure_and_runs_the_real_cmake(tmp_path: Path) -> None:
    build = tmp_path / "build"
    build.mkdir()
    args = ["-DLayoutName=:iso", "-DBaseMap=scancode_map scancode_map.iso", "/c", "-G", "Ninja"]
    subprocess.run(["cmake", *args], cwd=build, env=_wrapper_env(tmp_path), check=True)
    made = Record.read(build / ".kiisrv-configure")
    assert made.cwd == str(build)
    assert made.args == tuple(args)
    assert dict(made.env)["Layout"] == "iso"
    assert (build / "ran").read_text().startswith("real cmake -DLayoutName=:iso")
    # `cmake --build .` is not a configure: nothing recorded, the real one runs.
    (build / ".kiisrv-configure").unlink()
    subprocess.run(["cmake", "--build", "."], cwd=build, env=_wrapper_env(tmp_path), check=True)
    assert not (build / ".kiisrv-configure").exists()
    assert (build / "ran").read_text() == "real cmake --build .\n"


def test_the_wrapper_probe_records_and_runs_nothing(tmp_path: Path) -> None:
    build = tmp_path / "build"
    build.mkdir()
    probe = tmp_path / "probe"
    env = _wrapper_env(tmp_path, KIISRV_CONFIGURE_PROBE=str(probe))
    args = ["-DLayoutName=:iso", "/c", "-G", "Ninja"]
    subprocess.run(["cmake", *args], cwd=build, env=env, check=True)
    subprocess.run(["cmake", "--build", "."], cwd=build, env=env, check=True)
    assert not (build / "ran").exists() and not (build / ".kiisrv-configure").exists()
    probed = Record.read(probe)
    assert probed.args == tuple(args)
    # The probe's own variable does not make its key differ from the real configure's.
    subprocess.run(["cmake", *args], cwd=build, env=_wrapper_env(tmp_path), check=True)
    assert Record.read(build / ".kiisrv-configure").key() == probed.key()


def test_trees_of_reads_each_trees_record(tmp_path: Path) -> None:
    for name, layout in (("k1", "iso"), ("k2", "aria")):
        (tmp_path / name).mkdir()
        (tmp_path / name / ".kiisrv-configure").write_bytes(
            f"cwd=/b\0arg=-DLayoutName=:{layout}\0env=A=1\0".encode()
        )
    (tmp_path / "junk").mkdir()  # no record: not a tree
    found = dict(trees_of(tmp_path))
    assert set(found) == {tmp_path / "k1", tmp_path / "k2"}
    assert found[tmp_path / "k2"].args == ("-DLayoutName=:aria",)


@pytest.mark.skipif(not (CONFORMANCE / "layouts").is_dir(), reason=NO_CONFORMANCE)
def test_the_committed_warm_list_is_what_the_stock_layouts_need() -> None:
    """`kiisrv warm-list` regenerates docker/controller/warm.list; stale, it would leave
    a stock layout without a warm tree of its own configure (slow, never wrong)."""
    made = warmlist.render(warmlist.configurations(CONFORMANCE / "layouts"))
    committed = (REPO / "docker" / "controller" / "warm.list").read_text(encoding="utf-8")
    assert committed == made, (
        "run: kiisrv warm-list --layouts-dir <layouts> -o docker/controller/warm.list"
    )


def test_the_warm_list_has_every_variant_of_the_stock_layouts(tmp_path: Path) -> None:
    lines = (REPO / "docker" / "controller" / "warm.list").read_text().splitlines()
    configs = [line.split("\t") for line in lines if not line.startswith("#")]
    assert all(len(c) == 4 and all(c) for c in configs)  # no empty field for read(1)
    whitefox = {c[1] for c in configs if c[0] == "whitefox.bash"}
    assert {"truefox", "vanilla", "iso", "aria", "jackofalltrades", "winkeyless"} <= whitefox
    assert {"hacker", "standard"} <= {c[1] for c in configs if c[0] == "infinity.bash"}
    # GeminiDuskDawn's stock layer 1 has a function key: its tree names the function map.
    assert [
        "geminiduskdawn.bash",
        "standard",
        "stdFuncMap layer-0",
        "stdFuncMap layer-1;layer-2",
    ] in configs

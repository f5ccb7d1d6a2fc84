"""Which warm tree a build may reuse and how a request's maps are named (warmtree.py),
what a tree's objects keep and which a change reaches (objects.py), the cmake wrapper
that records a configure (docker/controller/bin/cmake), and the committed warm list
(warmlist.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kiisrv.controller.objects import (
    USAGE_NAME,
    changed_macros,
    debug_sections,
    defines,
    preprocess_command,
    prune,
    read_usage,
    shrink_command,
    stale_objects,
    used_macros,
    write_usage,
)
from kiisrv.controller.warmtree import (
    IGNORED_ENV,
    RECORD_NAME,
    Record,
    canonical_maps,
    differences,
    differing_lines,
    pick,
    trees_of,
)
from kiisrv.tools import warmlist
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


def test_the_committed_warm_list_is_the_generic_trees() -> None:
    """`kiisrv warm-list` regenerates docker/controller/warm.list (the trees of layouts
    started from scratch); the stock layouts' trees come from `kiisrv warm-inputs`."""
    made = warmlist.render(warmlist.configurations())
    committed = (REPO / "docker" / "controller" / "warm.list").read_text(encoding="utf-8")
    assert committed == made, "run: kiisrv warm-list -o docker/controller/warm.list"
    configs = [line.split("\t") for line in made.splitlines() if not line.startswith("#")]
    assert all(len(c) == 4 and all(c) for c in configs)  # no empty field for read(1)


@pytest.mark.skipif(not (CONFORMANCE / "layouts").is_dir(), reason=NO_CONFORMANCE)
@pytest.mark.parametrize("tag", ["v0.5.7", "v0.5.0"])
def test_every_stock_layout_a_version_builds_gets_a_tree_of_its_own(
    tmp_path: Path, tag: str
) -> None:
    """Each stock layout (variants included) as the image's versions build it: the
    request the server makes of it, byte for byte (its .kll files, its parameters)."""
    from kiisrv.errors import KiisrvError
    from kiisrv.recipe.layouts import LayoutStore
    from kiisrv.recipe.planner import Planner
    from kiisrv.recipe.versions import Available
    from kiisrv.tools.canary import layout_files

    layouts = CONFORMANCE / "layouts"
    versions = warmlist.versions_of(tag)
    inputs = {(i.files, i.params) for i in warmlist.stock_inputs(layouts, versions)}
    planner = Planner(LayoutStore(layouts))
    planned = 0
    for path in layout_files(layouts):
        body = {"config": __import__("json").loads(path.read_bytes()), "env": "latest"}
        for version in versions:
            try:
                plan = planner.plan(body, Available(version, "image", "sha256:x", None))
            except KiisrvError:
                continue
            assert (tuple(plan.files), plan.params) in inputs, (path.name, version.name)
            planned += 1
    assert planned >= len(inputs) > 20
    assert warmlist.write_inputs(warmlist.stock_inputs(layouts, versions), tmp_path) == len(inputs)
    env = (tmp_path / "KType-Standard" / "env").read_text()
    assert "Layout=standard\n" in env and "DefaultMapOverride=stdFuncMap KType-Standard-0" in env
    assert (tmp_path / "KType-Standard" / "script").read_text() == "script=k-type.bash\n"


# -- among trees of one key: the one most like the request -----------------------------


def test_of_trees_configured_alike_the_most_similar_is_copied(tmp_path: Path) -> None:
    """Several stock layouts configure alike (one key): a one-key change of one of them
    starts from that layout's tree, not another's."""
    trees = []
    for label, keys in (("standard", ["A", "B", "C"]), ("hacker", ["X", "Y", "Z"])):
        tree = tmp_path / "key" / label
        tree.mkdir(parents=True)
        (tree / "layer-0.kll").write_text("".join(f'U"{k}" : U"{k}";\n' for k in keys))
        trees.append((tree, record()))
    request = {"layer-0.kll": 'U"X" : U"X";\nU"Y" : U"B";\nU"Z" : U"Z";\n'}
    assert pick(record(), trees, request).tree == tmp_path / "key" / "hacker"
    request = {"layer-0.kll": 'U"A" : U"A";\nU"B" : U"Q";\nU"C" : U"C";\n'}
    assert pick(record(), trees, request).tree == tmp_path / "key" / "standard"
    assert pick(record(), trees).how == "warm"  # no layers given: any tree of the key


def test_the_tree_with_the_very_same_layers_beats_one_with_more(tmp_path: Path) -> None:
    """The LTS image keeps a stock layout's tree as the latest release generates it
    (layer 0 with an LED animation more) and as LTS does, under one key. An LTS request
    shares every line with both: the tree with nothing more is copied (the other was
    picked, first by name: its KLL changed kll_defs.h, and a removed object was linked
    instead of rebuilt)."""
    same = 'U"A" : U"A";\nU"B" : U"B";\n'
    trees = []
    for label, text in (
        ("MD1_1-Standard", same + "A[all_on] <= start;\n"),
        ("MD1_1-Standard-lts", same),
    ):
        tree = tmp_path / "key" / label
        tree.mkdir(parents=True)
        (tree / "layer-0.kll").write_text(text)
        trees.append((tree, record()))
    for order in (trees, trees[::-1]):
        assert pick(record(), order, {"layer-0.kll": same}).tree == trees[1][0]
    assert differing_lines({"layer-0.kll": same}, trees[0][0]) == 1
    assert differing_lines({"layer-0.kll": same}, trees[1][0]) == 0
    assert differing_lines({"layer-9.kll": same}, trees[1][0]) == 2  # the tree has none


def test_trees_are_found_by_key_and_label_and_in_the_older_layout(tmp_path: Path) -> None:
    for path in (tmp_path / "k1" / "standard", tmp_path / "k1" / "generic", tmp_path / "k2"):
        path.mkdir(parents=True)
        (path / RECORD_NAME).write_bytes(b"cwd=/tmp/kiisrv-build/whitefox\0arg=-DX=1")
    found = sorted(str(p.relative_to(tmp_path)) for p, _ in trees_of(tmp_path))
    assert found == ["k1/generic", "k1/standard", "k2"]


# -- what a changed kll_defs.h reaches ---------------------------------------------------


def test_only_changed_definitions_count() -> None:
    old = "#define ResultMacroNum_KLL 102\n#define LayerNum_KLL 2\n#define Same(x) (x)\n"
    new = "#define ResultMacroNum_KLL 101\n#define LayerNum_KLL  2\n#define Same(x)  (x)\n"
    assert changed_macros(old, new) == {"ResultMacroNum_KLL"}
    assert changed_macros(old, old + "#define NewOne 1\n") == {"NewOne"}
    assert changed_macros(old + "#define Gone 1\n", old) == {"Gone"}
    # A function-like macro and an object-like one of the same text are not the same.
    assert changed_macros("#define F(x) x\n", "#define F (x) x\n") == {"F"}
    assert defines("#define Long a + \\\n b\n") == {"Long": " a + b"}


def test_objects_that_used_a_changed_macro_are_stale_and_no_other() -> None:
    usage = {
        "macro.c.obj": ["ResultMacroNum_KLL", "LayerNum_KLL"],
        "led.c.obj": ["LED_Brightness_KLL"],
        "usb.c.obj": ["Undefined_But_Tested"],
    }
    assert stale_objects(usage, {"ResultMacroNum_KLL"}) == ["macro.c.obj"]
    # A macro a source tested while it was undefined, now defined: its object is stale.
    assert stale_objects(usage, {"Undefined_But_Tested"}) == ["usb.c.obj"]
    assert stale_objects(usage, set()) == []


def test_the_preprocessing_command_writes_nothing_and_bypasses_ccache() -> None:
    obj, command = preprocess_command(
        [
            *("/usr/lib/ccache/arm-none-eabi-gcc", "-I/controller", "-ggdb3", "-o"),
            *("CMakeFiles/k.dir/macro.c.obj", "-c", "/controller/macro.c", "-MD", "-MT"),
            *("CMakeFiles/k.dir/macro.c.obj", "-MF", "CMakeFiles/k.dir/macro.c.obj.d"),
        ]
    )
    assert obj == "CMakeFiles/k.dir/macro.c.obj"
    assert command == [
        *("arm-none-eabi-gcc", "-I/controller", "-ggdb3", "/controller/macro.c"),
        *("-E", "-dU", "-o", "-"),
    ]
    assert used_macros(b"#define A 1\nint x;\n#undef B\n#define A 1\n") == ["A", "B"]


def test_a_tree_prunes_what_its_record_says_and_nothing_without_one(tmp_path: Path) -> None:
    """gcc -dU on a real source (the host's gcc: the same preprocessor as the image's
    arm-none-eabi-gcc) records what each object used; a new kll_defs.h then removes
    exactly the objects whose macros changed."""
    (tmp_path / "kll_defs.h").write_text("#define Count_KLL 3\n#define Other_KLL 1\n")
    (tmp_path / "a.c").write_text('#include "kll_defs.h"\nint a[Count_KLL];\n')
    (tmp_path / "b.c").write_text('#include "kll_defs.h"\n#ifdef Later_KLL\nint b;\n#endif\n')
    (tmp_path / "c.c").write_text('#include "kll_defs.h"\nint c;\n')
    commands = [
        {"directory": str(tmp_path), "command": f"gcc -I. -o {n}.obj -c {n}.c", "file": f"{n}.c"}
        for n in "abc"
    ]
    (tmp_path / "compile_commands.json").write_text(__import__("json").dumps(commands))
    assert write_usage(tmp_path) == 3
    usage = read_usage(tmp_path)
    assert usage is not None and "Count_KLL" in usage["a.obj"] and "Later_KLL" in usage["b.obj"]
    assert "Count_KLL" not in usage["c.obj"]
    for n in "abc":
        (tmp_path / f"{n}.obj").write_bytes(b"object")
    old, new = tmp_path / "old.h", tmp_path / "new.h"
    old.write_text("#define Count_KLL 3\n#define Other_KLL 1\n")
    new.write_text("#define Count_KLL 4\n#define Other_KLL 1\n#define Later_KLL 1\n")
    assert prune(tmp_path, old, new) == ["a.obj", "b.obj"]
    assert sorted(p.name for p in tmp_path.glob("*.obj")) == ["c.obj"]
    (tmp_path / USAGE_NAME).unlink()
    assert prune(tmp_path, old, new) is None


def test_an_object_whose_preprocessing_failed_is_always_stale(tmp_path: Path) -> None:
    (tmp_path / "a.c").write_text('#include "missing.h"\n')
    commands = [
        {"directory": str(tmp_path), "command": "gcc -o a.obj -c a.c", "file": "a.c"},
        {"directory": str(tmp_path), "command": "stand-in", "file": "x"},  # no compile
    ]
    (tmp_path / "compile_commands.json").write_text(__import__("json").dumps(commands))
    assert write_usage(tmp_path) == 1
    usage = read_usage(tmp_path)
    assert usage == {"a.obj": ["*"]}
    assert stale_objects(usage, {"Anything"}) == ["a.obj"]
    assert stale_objects(usage, set()) == []


# -- smaller objects, the same link ------------------------------------------------------

READELF = """There are 9 section headers, starting at offset 0x673b8:

Section Headers:
  [Nr] Name              Type            Addr     Off    Size   ES Flg Lk Inf Al
  [ 0]                   NULL            00000000 000000 000000 00      0   0  0
  [ 1] .group            GROUP           00000000 000034 00000c 04     342 133  4
  [ 2] .text.main        PROGBITS        00000000 000040 000058 00  AX  0   0  4
  [ 3] .rel.text.main    REL             00000000 000e30 000010 08   I 55   2  4
  [ 4] .debug_info       PROGBITS        00000000 000098 0016a2 00      0   0  1
  [ 5] .rel.debug_info   REL             00000000 000e40 001a18 08   I 55   4  4
  [ 6] .debug_macro      PROGBITS        00000000 00173a 000016 00   G  0   0  1
  [ 7] .debug_macro      PROGBITS        00000000 001750 000f62 00   G  0   0  1
  [ 8] .debug_str        PROGBITS        00000000 0026b2 001a0c 01  MS  0   0  1
"""


def test_objects_are_shrunk_by_emptying_their_debug_sections_never_removing_one() -> None:
    """Stripping renumbered the sections after the debug ones, and ld names its veneers
    by section number: SAM4S firmware came out with two veneers swapped (Kira,
    GeminiDuskDawn). The shrink empties each debug section and drops its relocations;
    nothing it runs removes a section."""
    names = debug_sections(READELF)
    assert names == [".debug_info", ".debug_macro", ".debug_str"]
    command = shrink_command("objcopy", Path("a.obj"), names, Path("empty"))
    assert command[:2] == ["objcopy", "--remove-relocations=.debug_*"]
    assert command[-1] == "a.obj"
    pairs = list(zip(command[2:-1:2], command[3:-1:2], strict=True))
    assert pairs == [("--update-section", f"{n}=empty") for n in names]
    assert not any(a.startswith(("--strip", "--remove-section", "-R", "-g")) for a in command)


# -- the request's maps, as a tree names them ----------------------------------------------

# (DefaultMapOverride, PartialMapsExpandedOverride) -> (default, partial, renamed): what
# env.sh's canonical_maps made of them when it was bash (run against it, 2026-12-07),
# with A, B and C the request's own files.
CANON_CASES = [
    ("stdFuncMap A", "B;C", "stdFuncMap layer-0", "layer-1;layer-2", "ABC"),
    ("stdFuncMap A", "", "stdFuncMap layer-0", "", "A"),
    ("stdFuncMap A", ";", "stdFuncMap layer-0", ";", "A"),
    ("stdFuncMap A", "stdFuncMap B;C", "stdFuncMap layer-0", "stdFuncMap layer-1;layer-2", "ABC"),
    ("stdFuncMap A", "B;", "stdFuncMap layer-0", "layer-1", "AB"),
    ("stdFuncMap A", ";B", "stdFuncMap layer-0", "layer-1", "AB"),
    ("stdFuncMap A", "B;;C", "stdFuncMap layer-0", "layer-1;;layer-2", "ABC"),
    ("stdFuncMap A", "B;A", "stdFuncMap layer-0", "layer-1;layer-0", "AB"),
    ("A", "B C;A", "layer-0", "layer-1 layer-2;layer-0", "ABC"),
    ("", "B", "", "layer-0", "B"),
    (
        "stdFuncMap X A",
        "infinity_ergodox/lcdFuncMap B;C",
        "stdFuncMap X layer-0",
        "infinity_ergodox/lcdFuncMap layer-1;layer-2",
        "ABC",
    ),
    ("stdFuncMap A", ";;", "stdFuncMap layer-0", ";", "A"),
    ("stdFuncMap  A", "B  ;  C", "stdFuncMap layer-0", "layer-1;layer-2", "ABC"),
]


@pytest.mark.parametrize(
    ("default", "partial", "canon_default", "canon_partial", "own"), CANON_CASES
)
def test_a_requests_own_maps_are_named_by_the_one_rule(
    default: str, partial: str, canon_default: str, canon_partial: str, own: str
) -> None:
    canon = canonical_maps(default, partial, ["A", "B", "C"])
    assert (canon.default, canon.partial) == (canon_default, canon_partial)
    assert canon.renamed == {stem: f"layer-{n}" for n, stem in enumerate(own)}


def test_env_sh_names_the_maps_by_warmtree_py(tmp_path: Path) -> None:
    """The shell side (env.sh canonical_maps, in build.sh and warm.sh) runs the Python
    rule and reads its answer back, quoting included: a stem with a quote."""
    kll_dir = tmp_path / "kll"
    kll_dir.mkdir()
    for stem in ("KType-Mine-0", "Ada's-board-1", "KType-Mine-2"):
        (kll_dir / f"{stem}.kll").write_text("")
    env_sh = REPO / "docker" / "controller" / "env.sh"
    script = (
        f"source <(sed -n '/^canonical_maps() {{/,/^}}/p' {env_sh})\n"
        f"WARMTREE={REPO / 'src' / 'kiisrv' / 'controller' / 'warmtree.py'}\n"
        f'canonical_maps "{kll_dir}"\n'
        'for k in "${!CANON[@]}"; do printf "%s=%s\\n" "$k" "${CANON[$k]}"; done | sort\n'
        'printf "MAPS=%s\\n" "$MAPS"\n'
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "DefaultMapOverride": "stdFuncMap KType-Mine-0",
        "PartialMapsExpandedOverride": "Ada's-board-1;stdFuncMap KType-Mine-2",
    }
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "Ada's-board-1=layer-1",
        "KType-Mine-0=layer-0",
        "KType-Mine-2=layer-2",
        "MAPS=stdFuncMap layer-0|layer-1;stdFuncMap layer-2",
    ]

"""The build container's shape, without Docker: mounts, limits, labels, command."""

from __future__ import annotations

from kiisrv.build.containers import (
    IN_DIR,
    IO_DIR,
    LABEL_HASH,
    LABEL_INSTANCE,
    OUT_DIR,
    ContainerSpec,
    MountSpec,
    build_container_spec,
    build_mounts,
)
from kiisrv.settings import Settings


def test_a_build_mounts_its_own_folder_and_nothing_else() -> None:
    """Attack: the server swaps a build's folder for a symlink to / before dockerd
    mounts it, or a build writes objects into a cache another user's build links.
    Nothing to swap and nothing shared: a build's files live in an anonymous volume (its
    inputs and outputs go by the archive API), removed with the container, and no other
    volume is mounted."""
    assert build_mounts() == [MountSpec(None, IO_DIR, read_only=False, type="volume")]
    spec = _spec()
    assert spec.mounts == build_mounts()
    env = spec.environment
    assert (env["IN_DIR"], env["OUT_DIR"]) == (IN_DIR, OUT_DIR)
    assert IN_DIR.startswith(IO_DIR + "/") and OUT_DIR.startswith(IO_DIR + "/")


def _spec(environment: dict[str, str] | None = None) -> ContainerSpec:
    return build_container_spec(
        Settings(),
        image="kiisrv-controller-057:latest",
        job_hash="0123456789abcdef0123456789abcdef",
        script="k-type.bash",
        zip_name="KType-Mine-0123.zip",
        environment=environment or {"Layout": "std"},
        suffix="x1",
    )


def test_no_build_keeps_a_compile_cache_and_the_plan_cannot_turn_one_on() -> None:
    """The compilers are ccache's links in the image; with no cache kept from one build
    to the next it is off, and a plan's environment cannot point it anywhere."""
    spec = _spec(
        {
            "Layout": "std",
            "CCACHE_DIR": "/mnt/elsewhere",
            "CCACHE_REMOTE_STORAGE": "file:/mnt/elsewhere",
            "CCACHE_DISABLE": "",
        }
    )
    ccache = {k: v for k, v in spec.environment.items() if k.startswith("CCACHE_")}
    assert ccache == {"CCACHE_DISABLE": "1"}
    assert spec.environment["Layout"] == "std"


def test_container_spec_has_limits_labels_and_the_contract_command() -> None:
    s = Settings(instance="kiisrv-a", build_memory="1g", build_cpus=0.5, build_pids=100)
    spec = build_container_spec(
        s,
        image="kiisrv-controller-057:latest",
        job_hash="0123456789abcdef0123456789abcdef",
        script="k-type.bash",
        zip_name="KType-Mine-0123.zip",
        environment={"Layout": "std"},
        suffix="x1",
    )
    assert spec.command == [
        "k-type.bash",
        "0123456789abcdef0123456789abcdef",
        "KType-Mine-0123.zip",
    ]
    assert spec.name == "kiisrv-a-build-0123456789abcdef-x1"
    assert spec.labels[LABEL_INSTANCE] == "kiisrv-a"
    assert spec.labels[LABEL_HASH] == "0123456789abcdef0123456789abcdef"
    assert spec.environment["Layout"] == "std"
    assert spec.network_disabled
    assert (spec.mem_limit, spec.nano_cpus, spec.pids_limit) == ("1g", 500_000_000, 100)
    assert spec.tmpfs == {"/tmp": "exec,mode=1777,size=1g"}
    assert (spec.log_max_size, spec.log_max_files) == ("1m", 2)
    small = s.replace(build_tmpfs="64m", build_log_size="256k")
    spec = build_container_spec(
        small,
        image="kiisrv-controller-057:latest",
        job_hash="0123456789abcdef0123456789abcdef",
        script="k-type.bash",
        zip_name="KType-Mine-0123.zip",
        environment={},
        suffix="x1",
    )
    assert spec.tmpfs == {"/tmp": "exec,mode=1777,size=64m"} and spec.log_max_size == "256k"

"""The build container's shape, without Docker: mounts, limits, labels, command."""

from __future__ import annotations

from pathlib import Path

from kiisrv.containers import (
    LABEL_HASH,
    LABEL_INSTANCE,
    MountSpec,
    build_container_spec,
    build_mounts,
)
from kiisrv.settings import Settings


def test_mounts_use_the_servers_own_paths_by_default() -> None:
    s = Settings(data_dir=Path("/srv/data"), ccache_volume="cc")
    assert build_mounts(s, "abc") == [
        MountSpec("/srv/data/config/abc", "/mnt/config/abc", read_only=True),
        MountSpec("/srv/data/builds/.work/abc", "/mnt/builds", read_only=False),
        MountSpec("cc", "/mnt/ccache", read_only=False, type="volume"),
    ]


def test_relative_data_dir_becomes_absolute() -> None:
    mounts = build_mounts(Settings(data_dir=Path("data")), "abc")
    assert all(m.source.startswith("/") for m in mounts if m.type == "bind")


def test_sibling_containers_get_the_hosts_paths() -> None:
    s = Settings(
        data_dir=Path("/data"),
        host_tmp_config=Path("/var/lib/kiisrv/config"),
        host_tmp_builds=Path("/var/lib/kiisrv/builds"),
    )
    sources = [m.source for m in build_mounts(s, "h1")]
    assert sources[:2] == ["/var/lib/kiisrv/config/h1", "/var/lib/kiisrv/builds/.work/h1"]


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
    assert spec.environment["CCACHE_DIR"] == "/mnt/ccache"
    assert spec.network_disabled
    assert (spec.mem_limit, spec.nano_cpus, spec.pids_limit) == ("1g", 500_000_000, 100)

"""The build container's shape, without Docker: mounts, limits, labels, command."""

from __future__ import annotations

from pathlib import Path

from kiisrv.containers import (
    LABEL_HASH,
    LABEL_INSTANCE,
    ContainerSpec,
    MountSpec,
    build_container_spec,
    build_mounts,
)
from kiisrv.settings import Settings


def test_mounts_use_the_servers_own_paths_by_default() -> None:
    s = Settings(data_dir=Path("/srv/data"), ccache_volume="cc")
    assert build_mounts(s, "abc", seed_ccache=True) == [
        MountSpec("/srv/data/config/abc", "/mnt/config/abc", read_only=True),
        MountSpec("/srv/data/builds/.work/abc", "/mnt/builds", read_only=False),
        MountSpec("cc", "/mnt/ccache", read_only=False, type="volume"),
    ]


def test_a_request_build_mounts_the_shared_ccache_read_only() -> None:
    """Attack: a build writes objects into the ccache that another user's build links.
    Refused by the mount: only builds of inputs the server chose (a stock layout) may
    write; the default is read-only, so a caller that forgets cannot open it."""
    s = Settings(data_dir=Path("/srv/data"), ccache_volume="cc")
    for mounts in (build_mounts(s, "abc"), build_mounts(s, "abc", seed_ccache=False)):
        assert mounts[2] == MountSpec("cc", "/mnt/ccache", read_only=True, type="volume")
        assert [m.read_only for m in mounts[:2]] == [True, False]


def _spec(seed_ccache: bool | None, environment: dict[str, str] | None = None) -> ContainerSpec:
    extra = {} if seed_ccache is None else {"seed_ccache": seed_ccache}
    return build_container_spec(
        Settings(ccache_volume="cc"),
        image="kiisrv-controller-057:latest",
        job_hash="0123456789abcdef0123456789abcdef",
        script="k-type.bash",
        zip_name="KType-Mine-0123.zip",
        environment=environment or {"Layout": "std"},
        suffix="x1",
        **extra,
    )


def test_a_read_only_ccache_is_read_with_ccache_told_so() -> None:
    """ccache keeps its hits from a read-only folder when told not to write there: its
    temporary files go to /tmp and it keeps no statistics (which it would lock)."""
    for spec in (_spec(None), _spec(False)):
        ccache = next(m for m in spec.mounts if m.target == "/mnt/ccache")
        assert ccache.read_only
        assert spec.environment["CCACHE_DIR"] == "/mnt/ccache"
        assert spec.environment["CCACHE_READONLY"] == "1"
        assert spec.environment["CCACHE_TEMPDIR"] == "/tmp"
        assert spec.environment["CCACHE_NOSTATS"] == "1"
        assert "CCACHE_DISABLE" not in spec.environment


def test_a_seeding_build_writes_the_ccache_as_before() -> None:
    spec = _spec(True)
    ccache = next(m for m in spec.mounts if m.target == "/mnt/ccache")
    assert not ccache.read_only
    assert spec.environment["CCACHE_DIR"] == "/mnt/ccache"
    assert not {"CCACHE_READONLY", "CCACHE_TEMPDIR", "CCACHE_NOSTATS"} & set(spec.environment)


def test_the_build_environment_cannot_lift_the_read_only_ccache() -> None:
    """The plan's environment comes first: the server's ccache settings win over it."""
    spec = _spec(False, {"Layout": "std", "CCACHE_READONLY": "0", "CCACHE_DIR": "/tmp/x"})
    assert spec.environment["CCACHE_READONLY"] == "1"
    assert spec.environment["CCACHE_DIR"] == "/mnt/ccache"


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

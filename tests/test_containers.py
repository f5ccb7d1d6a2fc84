"""The build container's shape, without Docker: mounts, limits, labels, command."""

from __future__ import annotations

from pathlib import Path

from kiisrv.containers import (
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


def test_a_build_mounts_no_host_folder() -> None:
    """Attack: the server swaps a build's folder for a symlink to / before dockerd
    mounts it. Nothing to swap: the build's files live in an anonymous volume (its
    inputs and outputs go by the archive API), and a client's ccache is a named volume."""
    s = Settings(data_dir=Path("/srv/data"), ccache_volume="cc")
    for client in (None, CLIENT):
        mounts = build_mounts(s, ccache_client=client)
        assert [m for m in mounts if m.type != "volume"] == []
        assert mounts[0] == MountSpec(None, IO_DIR, read_only=False, type="volume")
        assert all(m.source for m in mounts[1:])
    env = _spec().environment
    assert (env["IN_DIR"], env["OUT_DIR"]) == (IN_DIR, OUT_DIR)
    assert IN_DIR.startswith(IO_DIR + "/") and OUT_DIR.startswith(IO_DIR + "/")


CLIENT = "0123456789abcdef0123"


def _volumes(mounts: list[MountSpec]) -> dict[str, MountSpec]:
    return {m.target: m for m in mounts if m.type == "volume" and m.source}


def test_no_build_mounts_a_cache_other_clients_share() -> None:
    """Attack: a build writes objects into a ccache that another user's build links, or
    a compromised server poisons a cache every build reads. Nothing to write to: no
    volume is shared between clients; each build mounts its own folder and at most
    its client's ccache."""
    s = Settings(data_dir=Path("/srv/data"), ccache_volume="cc")
    for client in (None, CLIENT, "fedcba9876543210fedc"):
        named = _volumes(build_mounts(s, ccache_client=client))
        assert all(m.source == f"cc-c{client}" for m in named.values())
        assert "cc" not in {m.source for m in named.values()}


def test_a_clients_build_writes_its_own_ccache() -> None:
    """A user's edits stay fast: the client's own volume is ccache's storage, writable
    and capped."""
    s = Settings(ccache_volume="cc", ccache_client_size="300M")
    mounts = build_mounts(s, ccache_client=CLIENT)
    assert _volumes(mounts) == {
        "/mnt/ccache": MountSpec(f"cc-c{CLIENT}", "/mnt/ccache", read_only=False, type="volume"),
    }
    env = _spec(client=CLIENT, settings=s).environment
    assert env["CCACHE_DIR"] == "/mnt/ccache"
    assert env["CCACHE_MAXSIZE"] == "300M"
    assert not {"CCACHE_READONLY", "CCACHE_REMOTE_STORAGE", "CCACHE_DISABLE"} & set(env)


def test_a_build_without_a_client_has_a_scratch_ccache() -> None:
    """The canary's and ``kiisrv build``'s user layouts: a throwaway one in /tmp."""
    for spec in (_spec(), _spec(settings=Settings(ccache_volume="cc", ccache_clients=0))):
        assert _volumes(spec.mounts) == {}
        assert spec.environment["CCACHE_DIR"] == "/tmp/ccache"
        assert "CCACHE_DISABLE" not in spec.environment
    off = _spec(client=CLIENT, settings=Settings(ccache_volume="cc", ccache_clients=0))
    assert _volumes(off.mounts) == {} and off.environment["CCACHE_DIR"] == "/tmp/ccache"


def _spec(
    environment: dict[str, str] | None = None,
    *,
    client: str | None = None,
    settings: Settings | None = None,
) -> ContainerSpec:
    return build_container_spec(
        settings or Settings(ccache_volume="cc"),
        image="kiisrv-controller-057:latest",
        job_hash="0123456789abcdef0123456789abcdef",
        script="k-type.bash",
        zip_name="KType-Mine-0123.zip",
        environment=environment or {"Layout": "std"},
        suffix="x1",
        ccache_client=client,
    )


def test_the_build_environment_cannot_move_the_ccache() -> None:
    """The plan's environment comes first: the server's ccache settings win over it."""
    spec = _spec(
        {
            "Layout": "std",
            "CCACHE_DIR": "/mnt/elsewhere",
            "CCACHE_REMOTE_STORAGE": "file:/mnt/elsewhere",
            "CCACHE_MAXSIZE": "0",
        },
        client=CLIENT,
    )
    assert spec.environment["CCACHE_DIR"] == "/mnt/ccache"
    assert "CCACHE_REMOTE_STORAGE" not in spec.environment
    assert spec.environment["CCACHE_MAXSIZE"] == "256M"
    assert _spec({"CCACHE_DISABLE": "1"}).environment["CCACHE_DISABLE"] == "1"


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
    assert spec.environment["CCACHE_DIR"] == "/tmp/ccache"  # no client: a throwaway primary
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

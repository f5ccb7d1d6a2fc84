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
    inputs and outputs go by the archive API), and the ccaches are named volumes."""
    s = Settings(data_dir=Path("/srv/data"), ccache_volume="cc")
    for seed in (True, False):
        mounts = build_mounts(s, "abc", seed_ccache=seed, ccache_client=CLIENT)
        assert [m for m in mounts if m.type != "volume"] == []
        assert mounts[0] == MountSpec(None, IO_DIR, read_only=False, type="volume")
        assert all(m.source for m in mounts[1:])
    env = _spec(False).environment
    assert (env["IN_DIR"], env["OUT_DIR"]) == (IN_DIR, OUT_DIR)
    assert IN_DIR.startswith(IO_DIR + "/") and OUT_DIR.startswith(IO_DIR + "/")


CLIENT = "0123456789abcdef0123"


def _volumes(mounts: list[MountSpec]) -> dict[str, MountSpec]:
    return {m.target: m for m in mounts if m.type == "volume" and m.source}


def test_a_request_build_mounts_the_shared_ccache_read_only() -> None:
    """Attack: a build writes objects into the ccache that another user's build links.
    Refused by the mount: only builds of inputs the server chose (a stock layout) may
    write it; the default is read-only, so a caller that forgets cannot open it."""
    s = Settings(data_dir=Path("/srv/data"), ccache_volume="cc")
    for mounts in (
        build_mounts(s, "abc"),
        build_mounts(s, "abc", seed_ccache=False),
        build_mounts(s, "abc", ccache_client=CLIENT),
    ):
        shared = _volumes(mounts)["/mnt/ccache-shared"]
        assert shared == MountSpec("cc", "/mnt/ccache-shared", read_only=True, type="volume")


def test_a_clients_build_writes_its_own_ccache_and_reads_the_shared_one() -> None:
    """A user's edits stay fast: the client's own volume is ccache's primary storage,
    writable and capped; the shared one is its read-only secondary (remote) storage."""
    s = Settings(ccache_volume="cc", ccache_client_size="300M")
    mounts = build_mounts(s, "abc", ccache_client=CLIENT)
    assert _volumes(mounts) == {
        "/mnt/ccache": MountSpec(f"cc-c{CLIENT}", "/mnt/ccache", read_only=False, type="volume"),
        "/mnt/ccache-shared": MountSpec("cc", "/mnt/ccache-shared", read_only=True, type="volume"),
    }
    env = _spec(False, client=CLIENT, settings=s).environment
    assert env["CCACHE_DIR"] == "/mnt/ccache"
    assert env["CCACHE_MAXSIZE"] == "300M"
    assert env["CCACHE_REMOTE_STORAGE"] == "file:/mnt/ccache-shared|read-only"
    assert not {"CCACHE_READONLY", "CCACHE_REMOTE_ONLY", "CCACHE_DISABLE"} & set(env)


def test_a_build_without_a_client_reads_the_shared_ccache_only() -> None:
    """The canary's and ``kiisrv build``'s user layouts: a throwaway primary in /tmp."""
    for spec in (_spec(None), _spec(False)):
        assert set(_volumes(spec.mounts)) == {"/mnt/ccache-shared"}
        assert spec.environment["CCACHE_DIR"] == "/tmp/ccache"
        assert spec.environment["CCACHE_REMOTE_STORAGE"] == "file:/mnt/ccache-shared|read-only"
        assert "CCACHE_DISABLE" not in spec.environment


def test_a_seeding_build_writes_the_shared_ccache_and_no_clients() -> None:
    """A stock build's objects are everybody's: it must not read a client's cache (where
    that client's builds could have left anything), so it gets none, whoever asked. It
    writes the shared volume in the layout ccache reads secondary storage in."""
    for client in (None, CLIENT):
        spec = _spec(True, client=client)
        assert _volumes(spec.mounts) == {
            "/mnt/ccache": MountSpec("cc", "/mnt/ccache", read_only=False, type="volume")
        }
        env = spec.environment
        assert env["CCACHE_DIR"] == "/mnt/ccache"
        assert env["CCACHE_REMOTE_STORAGE"] == "file:/mnt/ccache"
        assert env["CCACHE_REMOTE_ONLY"] == "1"
        assert "CCACHE_READONLY" not in env


def _spec(
    seed_ccache: bool | None,
    environment: dict[str, str] | None = None,
    *,
    client: str | None = None,
    settings: Settings | None = None,
) -> ContainerSpec:
    extra: dict[str, object] = {} if seed_ccache is None else {"seed_ccache": seed_ccache}
    if client is not None:
        extra["ccache_client"] = client
    return build_container_spec(
        settings or Settings(ccache_volume="cc"),
        image="kiisrv-controller-057:latest",
        job_hash="0123456789abcdef0123456789abcdef",
        script="k-type.bash",
        zip_name="KType-Mine-0123.zip",
        environment=environment or {"Layout": "std"},
        suffix="x1",
        **extra,  # type: ignore[arg-type]
    )


def test_the_build_environment_cannot_lift_the_read_only_ccache() -> None:
    """The plan's environment comes first: the server's ccache settings win over it."""
    spec = _spec(
        False,
        {
            "Layout": "std",
            "CCACHE_DIR": "/mnt/ccache-shared",
            "CCACHE_REMOTE_STORAGE": "file:/mnt/ccache-shared",
            "CCACHE_MAXSIZE": "0",
        },
        client=CLIENT,
    )
    assert spec.environment["CCACHE_DIR"] == "/mnt/ccache"
    assert spec.environment["CCACHE_REMOTE_STORAGE"] == "file:/mnt/ccache-shared|read-only"
    assert spec.environment["CCACHE_MAXSIZE"] == "256M"
    assert _spec(False, {"CCACHE_REMOTE_ONLY": "1"}).environment.get("CCACHE_REMOTE_ONLY") != "1"


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

"""What one build container looks like: image, command, env, mounts, limits, labels.

Pure functions, tested without Docker. A build container mounts no host folder: a bind
mount names a host path, and the server (which can write in its data folder) could
swap that path for a symlink to ``/`` between any check and the mount. Its inputs go in
and its outputs come out through the Engine API's archive calls (``buildio.py``), into
an anonymous volume removed with the container.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kiisrv.settings import Settings

# The build's own folder (an anonymous volume: writable with a read-only root
# filesystem, and reached by the archive API, which tmpfs is not): its inputs under
# config/<hash>, and builds/, where build.sh leaves the zip.
IO_DIR = "/mnt/kiisrv"
IN_DIR = f"{IO_DIR}/config"
OUT_DIR = f"{IO_DIR}/builds"
WORK_SUBDIR = ".work"

# The labels that make a container this deployment's (the socket proxy checks them:
# proxy/policy.py).
LABEL_MANAGED = "io.kiisrv.managed"
LABEL_INSTANCE = "io.kiisrv.instance"
LABEL_HASH = "io.kiisrv.hash"
# What a container of kiisrv's is for, when it is not a build: "release" (the reader of
# an image's release file, release_reader_spec).
LABEL_PURPOSE = "io.kiisrv.purpose"
# The socket proxy's one answer to a container reference that is not exactly one of
# this deployment's, whatever the engine knows of it; the engine client reads it as
# "not found" (a build container gone).
NOT_OURS = "no container of this deployment by that reference"


@dataclass(frozen=True)
class MountSpec:
    source: str | None  # None: an anonymous volume
    target: str
    read_only: bool
    type: str = "bind"  # or "volume"


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    image: str
    command: list[str]
    environment: dict[str, str]
    mounts: list[MountSpec]
    labels: dict[str, str]
    mem_limit: str
    nano_cpus: int
    pids_limit: int
    user: str | None = None
    tmpfs: dict[str, str] = field(default_factory=dict)
    network_disabled: bool = True
    read_only: bool = False
    # The engine's copy of the output (json-file): a build printing without end must not
    # fill the host's disk. The tail is kept (1-2 MB): what the error zip and the
    # diagnosis read; a finished build's own log/build.log is written by build.sh.
    log_max_size: str = "1m"
    log_max_files: int = 2


def build_mounts() -> list[MountSpec]:
    """The build's own folder for its inputs and outputs: an anonymous volume, no host
    path, removed with the container. Nothing else: no cache is shared between
    builds, nor kept for a client (the image's warm trees are what makes a build fast:
    docs/controller-images.md), so nothing a build writes reaches another."""
    return [MountSpec(None, IO_DIR, read_only=False, type="volume")]


def build_container_spec(
    settings: Settings,
    *,
    image: str,
    job_hash: str,
    script: str,
    zip_name: str,
    environment: dict[str, str],
    suffix: str,
) -> ContainerSpec:
    env = {
        # ccache's settings are the server's alone: none of the plan's gets through.
        **{k: v for k, v in environment.items() if not k.startswith("CCACHE_")},
        "HOME": "/tmp",  # writable whatever the uid and the root filesystem
        # The KLL step's own limit (bin/kll-limit): a layout's cost is the layout's.
        "KIISRV_KLL_TIMEOUT": str(settings.kll_timeout),
        "IN_DIR": IN_DIR,
        "OUT_DIR": OUT_DIR,
        # The compilers are ccache's links (the image's PATH): with no cache kept from
        # one build to the next, it only costs a hash a compile.
        "CCACHE_DISABLE": "1",
    }
    return ContainerSpec(
        name=f"{settings.instance}-build-{job_hash[:16]}-{suffix}",
        image=image,
        command=[script, job_hash, zip_name],
        environment=env,
        mounts=build_mounts(),
        labels={
            LABEL_MANAGED: "1",
            LABEL_INSTANCE: settings.instance,
            LABEL_HASH: job_hash,
        },
        mem_limit=settings.build_memory,
        nano_cpus=int(settings.build_cpus * 1e9),
        pids_limit=settings.build_pids,
        user=settings.build_user or None,
        tmpfs={"/tmp": f"exec,mode=1777,size={settings.build_tmpfs}"},
        read_only=settings.build_read_only,
        log_max_size=settings.build_log_size,
    )


def release_reader_spec(
    settings: Settings, *, image: str, image_id: str, suffix: str
) -> ContainerSpec:
    """The container an image's release file is copied out of (``Engine.read_file``):
    created and removed, never started. The build containers' labels (the socket proxy
    lets kiisrv create and read only its own containers) and their confinement (no
    network, no mount, the build user, a read-only root), so that the socket proxy's
    create rule passes it unchanged; the smallest limits the engine takes, in case
    anything ever started it; no command of its own (the image's entrypoint is
    build.sh, which does nothing without a job)."""
    short = image_id.removeprefix("sha256:")[:12]
    return ContainerSpec(
        name=f"{settings.instance}-release-{short}-{suffix}",
        image=image,
        command=[],
        environment={},
        mounts=[],
        labels={
            LABEL_MANAGED: "1",
            LABEL_INSTANCE: settings.instance,
            LABEL_PURPOSE: "release",
        },
        mem_limit="32m",
        # The build's CPU quota, if any: the socket proxy holds every container to it.
        nano_cpus=int(settings.build_cpus * 1e9),
        pids_limit=8,
        user=settings.build_user or None,
        tmpfs={},
        network_disabled=True,
        read_only=True,
        log_max_size="64k",
        log_max_files=1,
    )

"""What one build container looks like: image, command, env, mounts, limits, labels.

Pure functions, tested without Docker. A build container mounts no host folder: a bind
mount names a host path, and the server (which can write in its data folder) could
swap that path for a symlink to ``/`` between any check and the mount. Its inputs go in
and its outputs come out through the Engine API's archive calls (``buildio.py``), into
an anonymous volume removed with the container.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kiisrv import ccache
from kiisrv.enginepolicy import LABEL_INSTANCE, LABEL_MANAGED
from kiisrv.settings import Settings

# The build's own folder (an anonymous volume: writable with a read-only root
# filesystem, and reached by the archive API, which tmpfs is not): its inputs under
# config/<hash>, and builds/, where build.sh leaves the zip.
IO_DIR = "/mnt/kiisrv"
IN_DIR = f"{IO_DIR}/config"
OUT_DIR = f"{IO_DIR}/builds"
CCACHE_DIR = "/mnt/ccache"  # the image's folder (mode 1777): a new volume copies its mode
SCRATCH_CCACHE_DIR = "/tmp/ccache"  # a build with no ccache of its own: thrown away
WORK_SUBDIR = ".work"

LABEL_HASH = "io.kiisrv.hash"
# What a container of kiisrv's is for, when it is not a build: "release" (the reader of
# an image's release file, release_reader_spec).
LABEL_PURPOSE = "io.kiisrv.purpose"


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


def build_mounts(settings: Settings, *, ccache_client: str | None = None) -> list[MountSpec]:
    """The build's own folder for its inputs and outputs (an anonymous volume, no host
    path), and its client's ccache, when it has one.

    There is no cache every build shares: an object a request could leave there would
    be linked into other users' firmware, and a writable volume every build mounts is
    what a compromised server would poison first. A client's volume is written by that
    client's builds only (ccache.py).
    """
    mounts = [MountSpec(None, IO_DIR, read_only=False, type="volume")]
    if ccache_client is not None and settings.ccache_clients > 0:
        own = ccache.client_volume(settings, ccache_client)
        mounts.append(MountSpec(own, CCACHE_DIR, read_only=False, type="volume"))
    return mounts


def ccache_environment(settings: Settings, *, client: str | None) -> dict[str, str]:
    """ccache's settings for the mounts above (ccache 4.7, the images' version): the
    client's volume, capped at ``KIISRV_CCACHE_CLIENT_SIZE`` (ccache evicts past it), or a
    scratch folder in /tmp, thrown away with the build, when it has no client."""
    own = client is not None and settings.ccache_clients > 0
    return {
        "CCACHE_DIR": CCACHE_DIR if own else SCRATCH_CCACHE_DIR,
        "CCACHE_MAXSIZE": settings.ccache_client_size,
    }


def build_container_spec(
    settings: Settings,
    *,
    image: str,
    job_hash: str,
    script: str,
    zip_name: str,
    environment: dict[str, str],
    suffix: str,
    ccache_client: str | None = None,
) -> ContainerSpec:
    env = {
        # ccache's settings are the server's alone: none of the plan's gets through, but
        # CCACHE_DISABLE, which only turns it off (the canary's build from nothing).
        **{
            k: v
            for k, v in environment.items()
            if not k.startswith("CCACHE_") or k == "CCACHE_DISABLE"
        },
        "HOME": "/tmp",  # writable whatever the uid and the root filesystem
        # The KLL step's own limit (bin/kll-limit): a layout's cost is the layout's.
        "KIISRV_KLL_TIMEOUT": str(settings.kll_timeout),
        "IN_DIR": IN_DIR,
        "OUT_DIR": OUT_DIR,
        **ccache_environment(settings, client=ccache_client),
    }
    return ContainerSpec(
        name=f"{settings.instance}-build-{job_hash[:16]}-{suffix}",
        image=image,
        command=[script, job_hash, zip_name],
        environment=env,
        mounts=build_mounts(settings, ccache_client=ccache_client),
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

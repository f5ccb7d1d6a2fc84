"""What one build container looks like: image, command, env, mounts, limits, labels.

Pure functions, tested without Docker. The mounts are the delicate part: when the
server itself runs in a container, the build container is its sibling and bind mounts
must name the *host's* paths (``HOST_TMP_CONFIG``/``HOST_TMP_BUILDS``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from kiisrv.settings import Settings

IN_DIR = "/mnt/config"
OUT_DIR = "/mnt/builds"
CCACHE_DIR = "/mnt/ccache"
WORK_SUBDIR = ".work"

LABEL_MANAGED = "io.kiisrv.managed"
LABEL_INSTANCE = "io.kiisrv.instance"
LABEL_HASH = "io.kiisrv.hash"


@dataclass(frozen=True)
class MountSpec:
    source: str
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
    tmpfs: dict[str, str] = field(default_factory=lambda: {"/tmp": "exec,mode=1777,size=1g"})
    network_disabled: bool = True
    read_only: bool = False
    # The engine's copy of the output (json-file): a build printing without end must not
    # fill the host's disk. The tail is kept (1-2 MB): what the error zip and the
    # diagnosis read; a finished build's own log/build.log is written by build.sh.
    log_max_size: str = "1m"
    log_max_files: int = 2


def _host_path(local: Path, host: Path | None) -> PurePosixPath:
    return PurePosixPath(host if host is not None else local.absolute())


def build_mounts(settings: Settings, job_dir: str, *, seed_ccache: bool = False) -> list[MountSpec]:
    """The KLL folder read-only, a private output folder, and the shared ccache.

    The ccache is writable only for a build that seeds it (``Plan.seeds_cache``: inputs
    the server chose), else read-only: an object a request could leave there would be
    linked into other users' firmware. Read-only is the default a caller gets.
    """
    config = _host_path(settings.config_dir, settings.host_tmp_config)
    builds = _host_path(settings.builds_dir, settings.host_tmp_builds)
    return [
        MountSpec(str(config / job_dir), f"{IN_DIR}/{job_dir}", read_only=True),
        MountSpec(str(builds / WORK_SUBDIR / job_dir), OUT_DIR, read_only=False),
        MountSpec(settings.ccache_volume, CCACHE_DIR, read_only=not seed_ccache, type="volume"),
    ]


# ccache on a read-only folder (ccache(1), read_only): hits as usual, nothing added, its
# temporary files in /tmp, and no statistics (each compile would try to lock them).
CCACHE_READ_ONLY_ENV = {"CCACHE_READONLY": "1", "CCACHE_TEMPDIR": "/tmp", "CCACHE_NOSTATS": "1"}


def build_container_spec(
    settings: Settings,
    *,
    image: str,
    job_hash: str,
    script: str,
    zip_name: str,
    environment: dict[str, str],
    suffix: str,
    seed_ccache: bool = False,
) -> ContainerSpec:
    env = {
        **environment,
        "HOME": "/tmp",  # writable whatever the uid and the root filesystem
        "CCACHE_DIR": CCACHE_DIR,
        "IN_DIR": IN_DIR,
        "OUT_DIR": OUT_DIR,
        **({} if seed_ccache else CCACHE_READ_ONLY_ENV),
    }
    return ContainerSpec(
        name=f"{settings.instance}-build-{job_hash[:16]}-{suffix}",
        image=image,
        command=[script, job_hash, zip_name],
        environment=env,
        mounts=build_mounts(settings, job_hash, seed_ccache=seed_ccache),
        labels={
            LABEL_MANAGED: "1",
            LABEL_INSTANCE: settings.instance,
            LABEL_HASH: job_hash,
        },
        mem_limit=settings.build_memory,
        nano_cpus=int(settings.build_cpus * 1e9),
        pids_limit=settings.build_pids,
        user=settings.build_user or None,
        read_only=settings.build_read_only,
    )

"""All of kiisrv's configuration, read once from the environment.

This is the only module that looks at ``os.environ``: everything else receives a
``Settings``. Each field names its variable in ``metadata["env"]``; a test fails when
one of them is missing from the README's settings table.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


def _env(name: str, doc: str) -> dict[str, Any]:
    return {"env": name, "doc": doc}


@dataclass(frozen=True)
class Settings:
    host: str = field(default="0.0.0.0", metadata=_env("KIISRV_HOST", "Address to listen on."))
    port: int = field(default=3001, metadata=_env("KIISRV_PORT", "Port to listen on."))
    data_dir: Path = field(
        default=Path("./data"),
        metadata=_env("KIISRV_DATA_DIR", "Config and build folders and the SQLite files."),
    )
    layouts_dir: Path = field(
        default=Path("./layouts"),
        metadata=_env("KIISRV_LAYOUTS_DIR", "The keyboards' layout JSON files."),
    )
    host_tmp_config: Path | None = field(
        default=None,
        metadata=_env(
            "HOST_TMP_CONFIG", "Host path of `<data>/config`, when the server runs in a container."
        ),
    )
    host_tmp_builds: Path | None = field(
        default=None,
        metadata=_env(
            "HOST_TMP_BUILDS", "Host path of `<data>/builds`, when the server runs in a container."
        ),
    )
    docker_url: str = field(
        default="unix:///var/run/docker.sock",
        metadata=_env("DOCKER_HOST", "Docker Engine API endpoint."),
    )
    image_prefix: str = field(
        default="kiisrv-",
        metadata=_env(
            "KIISRV_IMAGE_PREFIX", "Controller image name = prefix + container + `:` + tag."
        ),
    )
    image_tag: str = field(
        default="latest", metadata=_env("KIISRV_IMAGE_TAG", "Tag of the controller images.")
    )
    instance: str = field(
        default="kiisrv",
        metadata=_env(
            "KIISRV_INSTANCE",
            "Name prefix and label of this server's build containers (orphans are found by it).",
        ),
    )
    max_builds: int = field(
        default_factory=lambda: os.cpu_count() or 1,
        metadata=_env("KIISRV_MAX_BUILDS", "Builds running at once (default: number of cores)."),
    )
    max_queue: int = field(
        default=64,
        metadata=_env("KIISRV_MAX_QUEUE", "Distinct builds waiting before new ones get 503."),
    )
    build_timeout: float = field(
        default=600.0,
        metadata=_env("KIISRV_BUILD_TIMEOUT", "Seconds a build may run before it is killed."),
    )
    build_memory: str = field(
        default="2g", metadata=_env("KIISRV_BUILD_MEMORY", "Memory limit of a build container.")
    )
    build_cpus: float = field(
        default=1.0, metadata=_env("KIISRV_BUILD_CPUS", "CPUs a build container may use.")
    )
    build_pids: int = field(
        default=512, metadata=_env("KIISRV_BUILD_PIDS", "Process limit of a build container.")
    )
    build_user: str = field(
        default="1000:1000",
        metadata=_env(
            "KIISRV_BUILD_USER", "uid:gid builds run as (the image's BUILD_UID); empty: root."
        ),
    )
    build_read_only: bool = field(
        default=False,
        metadata=_env(
            "KIISRV_BUILD_READ_ONLY",
            "Read-only root filesystem for builds (the real build scripts write to /controller).",
        ),
    )
    ccache_volume: str = field(
        default="kiisrv-ccache",
        metadata=_env("KIISRV_CCACHE_VOLUME", "Named volume holding the shared ccache."),
    )
    retention_days: float = field(
        default=30.0,
        metadata=_env("KIISRV_RETENTION_DAYS", "Build outputs older than this are pruned."),
    )
    retention_bytes: int = field(
        default=10 * 1024**3,
        metadata=_env(
            "KIISRV_RETENTION_BYTES", "Oldest build outputs are pruned past this total size."
        ),
    )
    prune_interval: float = field(
        default=3600.0,
        metadata=_env("KIISRV_PRUNE_INTERVAL", "Seconds between prunes while serving; 0: never."),
    )
    engine_timeout: float = field(
        default=60.0,
        metadata=_env("KIISRV_ENGINE_TIMEOUT", "Seconds one Docker API call may take."),
    )
    max_body_bytes: int = field(
        default=10 * 1024 * 1024,
        metadata=_env("KIISRV_MAX_BODY", "Largest request body accepted, in bytes."),
    )

    def replace(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @property
    def config_dir(self) -> Path:
        return self.data_dir / "config"

    @property
    def builds_dir(self) -> Path:
        return self.data_dir / "builds"

    @property
    def stats_db(self) -> Path:
        return self.data_dir / "stats.db"

    @property
    def config_db(self) -> Path:
        return self.data_dir / "config.db"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        defaults = cls()
        for f in fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is None or raw == "":
                continue
            current = getattr(defaults, f.name)
            values[f.name] = _convert(f.metadata["env"], raw, current, f.type)
        values.update(overrides)
        return replace(defaults, **values)


def _convert(name: str, raw: str, current: Any, annotation: Any) -> Any:
    try:
        if isinstance(current, bool):
            return raw.lower() in {"1", "true", "yes", "on"}
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
        if isinstance(current, Path) or "Path" in str(annotation):
            return Path(raw)
        return raw
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r}: {exc}") from None

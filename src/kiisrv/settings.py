"""All of kiisrv's configuration, declared once and read once from the environment.

This is the only module that looks at ``os.environ``: everything else receives a
``Settings``. Each field names its variable (its alias) and the range it may take; a
wrong value stops the server with a message naming the variable, rather than becoming
a default nobody asked for (``KIISRV_BUILD_READ_ONLY=ture`` was silently false). A test
fails when a variable is missing from the README's settings table.

An empty variable means "the default", except where empty is itself a value
(``KIISRV_BUILD_USER=``: root), marked ``empty_is_value`` below.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, StrictBool, ValidationError, field_validator, model_validator
from pydantic.config import JsonDict
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from kiisrv.clients import Network, parse_networks

_KEEP_EMPTY: JsonDict = {"empty_is_value": True}


def _cores() -> int:
    return os.cpu_count() or 1


class Settings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, populate_by_name=True, extra="forbid")

    host: str = Field("0.0.0.0", alias="KIISRV_HOST", description="Address to listen on.")
    port: int = Field(3001, alias="KIISRV_PORT", ge=1, le=65535, description="Port to listen on.")
    data_dir: Path = Field(
        Path("./data"),
        alias="KIISRV_DATA_DIR",
        description="Config and build folders and the SQLite files.",
    )
    layouts_dir: Path = Field(
        Path("./layouts"),
        alias="KIISRV_LAYOUTS_DIR",
        description="The keyboards' layout JSON files.",
    )
    docker_url: str = Field(
        "unix:///var/run/docker.sock", alias="DOCKER_HOST", description="Engine API endpoint."
    )
    image_prefix: str = Field(
        "kiisrv-",
        alias="KIISRV_IMAGE_PREFIX",
        description="Controller image name = prefix + container + `:` + tag.",
    )
    image_tag: str = Field(
        "latest", alias="KIISRV_IMAGE_TAG", description="Tag of the controller images."
    )
    instance: str = Field(
        "kiisrv",
        alias="KIISRV_INSTANCE",
        min_length=1,
        description="Name prefix and label of this server's build containers.",
    )
    max_builds: int = Field(
        default_factory=_cores,
        alias="KIISRV_MAX_BUILDS",
        ge=1,
        description="Builds running at once (default: number of cores).",
    )
    max_queue: int = Field(
        64,
        alias="KIISRV_MAX_QUEUE",
        ge=0,
        description="Distinct builds waiting before new ones get 503.",
    )
    build_timeout: float = Field(
        600.0,
        alias="KIISRV_BUILD_TIMEOUT",
        gt=0,
        description="Seconds a build may run before it is killed.",
    )
    build_memory: str = Field(
        "2g",
        alias="KIISRV_BUILD_MEMORY",
        pattern=r"^[0-9]+[bkmgBKMG]?$",
        description="Memory limit of a build container (swap: none beyond it); also the "
        "socket proxy's ceiling.",
    )
    build_cpus: float = Field(
        0.0,
        alias="KIISRV_BUILD_CPUS",
        ge=0,
        description="Hard CPU quota of a build; 0: none (concurrent builds share equally). "
        "Also the socket proxy's ceiling.",
    )
    build_pids: int = Field(
        512,
        alias="KIISRV_BUILD_PIDS",
        ge=1,
        description="Process limit of a build container; also the socket proxy's ceiling.",
    )
    build_tmpfs: str = Field(
        "1g",
        alias="KIISRV_BUILD_TMPFS",
        pattern=r"^[0-9]+[bkmgBKMG]?$",
        description="Size of a build's /tmp (a tmpfs, counted in its memory); also the "
        "socket proxy's ceiling.",
    )
    build_log_size: str = Field(
        "1m",
        alias="KIISRV_BUILD_LOG_SIZE",
        pattern=r"^[0-9]+[bkmgBKMG]?$",
        description="The engine's copy of a build's output: at most this per file, two "
        "files (json-file); also the socket proxy's ceiling.",
    )
    build_user: str = Field(
        "1000:1000",
        alias="KIISRV_BUILD_USER",
        json_schema_extra=_KEEP_EMPTY,
        description="uid:gid builds run as (the image's BUILD_UID); empty: root.",
    )
    build_read_only: StrictBool = Field(
        False,
        alias="KIISRV_BUILD_READ_ONLY",
        description="Read-only root filesystem for builds.",
    )
    retention_days: float = Field(
        30.0,
        alias="KIISRV_RETENTION_DAYS",
        ge=0,
        description="Build outputs older than this are pruned.",
    )
    retention_bytes: int = Field(
        10 * 1024**3,
        alias="KIISRV_RETENTION_BYTES",
        ge=0,
        description="Oldest build outputs are pruned past this total size.",
    )
    prune_interval: float = Field(
        3600.0,
        alias="KIISRV_PRUNE_INTERVAL",
        ge=0,
        description="Seconds between prunes while serving; 0: never.",
    )
    requests_retention_days: float = Field(
        365.0,
        alias="KIISRV_REQUESTS_RETENTION_DAYS",
        ge=0,
        description="Requests rows (statistics) older than this are deleted; 0: kept.",
    )
    rate_limit: int = Field(
        10,
        alias="KIISRV_RATE_LIMIT",
        ge=0,
        description="New builds a client may start per minute (cache hits free); 0: no limit.",
    )
    rate_limit_ipv6_prefix: int = Field(
        64,
        alias="KIISRV_RATE_LIMIT_IPV6_PREFIX",
        ge=1,
        le=128,
        description="IPv6 clients share one rate limit per network of this prefix length "
        "(an ISP hands each customer a /64 or more).",
    )
    trusted_proxies: str = Field(
        "",
        alias="KIISRV_TRUSTED_PROXIES",
        description="Proxies whose X-Forwarded-For names the client: addresses or networks, "
        "comma separated (e.g. `127.0.0.1, 172.16.0.0/12`).",
    )
    engine_timeout: float = Field(
        60.0,
        alias="KIISRV_ENGINE_TIMEOUT",
        gt=0,
        description="Seconds one Docker API call may take.",
    )
    max_body_bytes: int = Field(
        10 * 1024 * 1024,
        alias="KIISRV_MAX_BODY",
        ge=1,
        description="Largest request body accepted, in bytes.",
    )
    header_timeout: float = Field(
        10.0,
        alias="KIISRV_HEADER_TIMEOUT",
        gt=0,
        description="Seconds a request's headers may take to arrive (also a new "
        "connection's first request); then 408 and the connection closed.",
    )
    body_timeout: float = Field(
        10.0,
        alias="KIISRV_BODY_TIMEOUT",
        gt=0,
        description="Seconds a request body may go without a byte; past that also the "
        "least time before KIISRV_BODY_MIN_RATE is enforced. Then 408, closed.",
    )
    body_min_rate: float = Field(
        1024.0,
        alias="KIISRV_BODY_MIN_RATE",
        ge=0,
        description="Bytes a second a request body must average once it has taken "
        "KIISRV_BODY_TIMEOUT seconds.",
    )
    max_connections: int = Field(
        1000,
        alias="KIISRV_MAX_CONNECTIONS",
        ge=1,
        description="Open connections the server holds at most; one more is answered 503.",
    )
    max_client_connections: int = Field(
        32,
        alias="KIISRV_MAX_CLIENT_CONNECTIONS",
        ge=1,
        description="Open connections per client (an address, an IPv6 /64; trusted "
        "proxies exempt); one more is answered 429.",
    )
    kll_timeout: int = Field(
        30,
        alias="KIISRV_KLL_TIMEOUT",
        ge=0,
        description="Seconds a build's KLL step may take; a layout past it is answered "
        "422 as its own failure (the slowest stock layout takes ~2 s). Shorter than "
        "KIISRV_BUILD_TIMEOUT to take effect; 0: no limit.",
    )
    max_client_builds: int = Field(
        1,
        alias="KIISRV_MAX_CLIENT_BUILDS",
        ge=1,
        description="Builds one client (as the rate limit counts it) has queued or "
        "running at once; its others wait their turn, so other clients' builds are "
        "served between them. Cluster-wide with KIISRV_QUEUE_URL.",
    )
    status_token: SecretStr | None = Field(
        None,
        alias="KIISRV_STATUS_TOKEN",
        description="Opens the detailed status page (`/status/detail`: hashes, layouts, "
        "logs) to whoever sends it (32+ characters, e.g. `openssl rand -hex 32`); "
        "unset: no detailed page.",
    )

    client_key_file: Path | None = Field(
        None,
        alias="KIISRV_CLIENT_KEY_FILE",
        description="The key client addresses are hashed with (statistics, rate limit): "
        "made on first start if missing; every API server of a cluster needs the same. "
        "Unset: `<data>/client-key`.",
    )

    signing_key_file: Path | None = Field(
        None,
        alias="KIISRV_SIGNING_KEY_FILE",
        description="The Ed25519 key every zip's manifest is signed with (`kiisrv verify`): "
        "made on first start if missing; a cluster's API servers and workers need the same. "
        "Unset: `<data>/signing-key`.",
    )

    proxy_body_timeout: float = Field(
        30.0,
        alias="KIISRV_PROXY_BODY_TIMEOUT",
        gt=0,
        description="Socket proxy: seconds a request body may take to arrive whole (then 400).",
    )
    proxy_instances: str = Field(
        "",
        alias="KIISRV_PROXY_INSTANCES",
        description="Socket proxy: instances (comma separated) whose build containers it "
        "lets be started, inspected, killed and removed; empty: `KIISRV_INSTANCE`.",
    )

    queue_url: str | None = Field(
        None,
        alias="KIISRV_QUEUE_URL",
        description="Redis URL of the build queue (arq); set: builds run on `kiisrv worker`s.",
    )
    queue_key: SecretStr | None = Field(
        None,
        alias="KIISRV_QUEUE_KEY",
        min_length=32,
        description="Distributed: the secret every API server and worker shares (32+ "
        "characters, e.g. `openssl rand -hex 32`); signs jobs, results and adverts in Redis.",
    )
    build_tries: int = Field(
        3,
        alias="KIISRV_BUILD_TRIES",
        ge=1,
        description="Distributed: workers a build may be started on before it is failed.",
    )
    worker_lease: float = Field(
        10.0,
        alias="KIISRV_WORKER_LEASE",
        gt=0,
        description="Distributed: seconds a silent worker keeps its builds and images.",
    )
    result_ttl: float = Field(
        3600.0,
        alias="KIISRV_RESULT_TTL",
        gt=0,
        description="Distributed: seconds the notice of a finished build stays in Redis "
        "(what wakes the API servers waiting for it; the zip is in the result store).",
    )
    failed_ttl: float = Field(
        300.0,
        alias="KIISRV_FAILED_RESULT_TTL",
        gt=0,
        description="Distributed: seconds a build that ran and failed stays in Redis "
        "(faults of an engine or a host are never kept: they are tried again).",
    )
    stats_url: str | None = Field(
        None,
        alias="KIISRV_STATS_URL",
        description="PostgreSQL URL of the statistics (Requests) all API servers share; "
        "unset: this server's SQLite.",
    )
    store_url: str | None = Field(
        None,
        alias="KIISRV_STORE_URL",
        description="Distributed: PostgreSQL URL of the result store every API server and "
        "worker shares (finished builds' zips, cluster/results.py); unset: `KIISRV_STATS_URL`'s "
        "database. One of the two is needed with `KIISRV_QUEUE_URL`.",
    )
    stats_timeout: float = Field(
        5.0,
        alias="KIISRV_STATS_TIMEOUT",
        gt=0,
        description="Seconds one call to PostgreSQL (statistics, result store) may take (its "
        "statement_timeout, and a deadline of kiisrv's own for a database that hangs); "
        "past it the call fails (503 + Retry-After) and the database is left alone as long.",
    )
    worker_poll: float = Field(
        0.02,
        alias="KIISRV_WORKER_POLL",
        gt=0,
        description="Distributed: seconds between a worker's looks at its queues.",
    )

    @field_validator("stats_url", "store_url")
    @classmethod
    def _postgres(cls, value: str | None) -> str | None:
        if value and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return value or None

    @field_validator("queue_url")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        if value:
            redis_url_problem(value)
        return value or None

    @model_validator(mode="after")
    def _queue_key(self) -> Settings:
        if self.queue_url and self.queue_key is None:
            raise ValueError(
                "KIISRV_QUEUE_KEY must be set with KIISRV_QUEUE_URL: the secret the cluster "
                "signs its jobs and results with (e.g. `openssl rand -hex 32`)"
            )
        if self.queue_url and self.results_url is None:
            raise ValueError(
                "KIISRV_STORE_URL (or KIISRV_STATS_URL) must be set with KIISRV_QUEUE_URL: "
                "the PostgreSQL database where workers leave finished builds for every API "
                "server (postgresql://...)"
            )
        return self

    @property
    def results_url(self) -> str | None:
        """The result store's database: its own, or the statistics' (one PostgreSQL)."""
        return self.store_url or self.stats_url

    @field_validator("status_token")
    @classmethod
    def _unguessable(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError(
                "must be at least 32 characters, too many to guess (e.g. `openssl rand -hex 32`)"
            )
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        parse_networks(value)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only what is passed in: ``from_env`` is the one reader of the environment, so a
        # test's ``Settings(...)`` never picks up the variables of the shell it runs in.
        return (init_settings,)

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Environment variable -> field name."""
        return {str(f.alias): name for name, f in cls.model_fields.items()}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for var, name in cls.variables().items():
            raw = environ.get(var)
            extra = cls.model_fields[name].json_schema_extra
            keep_empty = isinstance(extra, dict) and extra.get("empty_is_value")
            if raw is None or (raw == "" and not keep_empty):
                continue
            values[var] = _bool(raw) if cls.model_fields[name].annotation is bool else raw
        values.update(overrides)
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{_where(e['loc'])}={_shown(e['loc'], e.get('input'))}: {e['msg']}"
                for e in exc.errors()
            )
            raise ValueError(f"invalid setting: {problems}") from None

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (by field name), validated again."""
        return type(self)(**{**self.model_dump(), **changes})

    @property
    def proxies(self) -> list[Network]:
        return parse_networks(self.trusted_proxies)

    @property
    def config_dir(self) -> Path:
        return self.data_dir / "config"

    @property
    def builds_dir(self) -> Path:
        return self.data_dir / "builds"

    @property
    def client_key_path(self) -> Path:
        """Where the client key is kept (privacy.py)."""
        return self.client_key_file or self.data_dir / "client-key"

    @property
    def signing_key_path(self) -> Path:
        """Where the signing key is kept (signing.py)."""
        return self.signing_key_file or self.data_dir / "signing-key"

    @property
    def stats_db(self) -> Path:
        return self.data_dir / "stats.db"

    @property
    def config_db(self) -> Path:
        return self.data_dir / "config.db"


# Passwords that documentation and examples print: as good as none.
KNOWN_PASSWORDS = {"change-me", "changeme", "password", "redis", "secret", "kiisrv"}


def redis_url_problem(url: str) -> None:
    """A Redis the cluster trusts must not be open to whoever reaches its port.

    Loopback and unix sockets may go without a password (the machine's own users are
    trusted anyway); over a network a password is required, and not one from an example.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    password = parts.password
    if password is not None and password.lower() in KNOWN_PASSWORDS:
        raise ValueError("the Redis password is an example one; set a secret of your own")
    if parts.scheme == "unix" or password:
        return
    try:
        local = ipaddress.ip_address(parts.hostname or "").is_loopback
    except ValueError:
        local = parts.hostname == "localhost"
    if not local:
        raise ValueError(
            "a Redis reached over the network needs a password "
            "(redis://:<password>@host:6379/0; rediss:// for TLS)"
        )


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _bool(raw: str) -> bool | str:
    """The words pydantic takes for a boolean; anything else is left for it to refuse."""
    low = raw.strip().lower()
    return True if low in _TRUE else False if low in _FALSE else raw


def _shown(loc: tuple[int | str, ...], value: Any) -> str:
    """The refused value, unless it is a secret: start-up errors end up in logs."""
    field = Settings.variables().get(str(loc[0]) if loc else "")
    secret = field is not None and "SecretStr" in str(Settings.model_fields[field].annotation)
    return "(secret, not shown)" if secret else repr(value)


def _where(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "settings"

"""What the tests share: small layouts, the shared reference data, ways to run a server.

Tests import from here only, never from conftest or from each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from kiisrv.settings import Settings
from kiisrv.web.app import create_app

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
FIXTURE_LAYOUTS = REPO / "tests" / "fixtures" / "layouts"
CONFORMANCE = Path(os.environ.get("KIISRV_CONFORMANCE_DIR", REPO.parent / "shared" / "conformance"))
NO_CONFORMANCE = f"reference data not found at {CONFORMANCE} (../shared/conformance)"

REAL_IMAGE_HOWTO = (
    "set KIISRV_REAL_IMAGE to a real controller image, e.g. kiisrv-controller-057:latest "
    "(built with docker/controller/Dockerfile: docs/controller-images.md)"
)


def real_layouts() -> Path:
    """The layouts real-image tests build: KIISRV_LAYOUTS_DIR, else the reference set."""
    explicit = os.environ.get("KIISRV_LAYOUTS_DIR")
    layouts = Path(explicit) if explicit else CONFORMANCE / "layouts"
    if not layouts.is_dir():
        import pytest

        why = (
            f"KIISRV_LAYOUTS_DIR={explicit} is not a folder"
            if explicit
            else f"KIISRV_LAYOUTS_DIR is unset and {layouts} does not exist: set it to a "
            "layouts folder (kiisrv layouts fetch, or ../shared/conformance/layouts)"
        )
        pytest.skip(why)
    return layouts


# Names of the containers and images the tests make. Two checkouts can run the Docker
# suite on one daemon at once when each sets its own.
TEST_PREFIX = os.environ.get("KIISRV_TEST_PREFIX", "kiisrvtest-")
TEST_IMAGE_PREFIX = os.environ.get("KIISRV_TEST_IMAGE_PREFIX", "kiisrv-testdouble-")

# What the Configurator's download parser expects of `filename` (API.md).
CLIENT_FILENAME_RE = r"^\./[^/]+/+([A-Za-z0-9_.-]+)-([A-Za-z0-9_.-]+)-([0-9A-Fa-f]+)(_error)?"

TEST_CONTAINERS = ("controller-057", "controller-050")
EXTRA_CA = os.environ.get("KIISRV_TEST_EXTRA_CA")  # a CA bundle the image build must trust


def wait_for_http(url: str, attempts: int = 100) -> bool:
    """True once ``url`` answers 200 (a server or proxy just started), False if never."""
    import httpx

    for _ in range(attempts):
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    return False


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS for pid {pid}")


def header(
    name: str = "KType", layout: str = "Mine", base: str = "TestBase", **kw: Any
) -> dict[str, Any]:
    h: dict[str, Any] = {
        "Name": name,
        "Variant": "test",
        "Layout": layout,
        "Base": base,
        "Version": "0.1",
        "Author": "kiisrv tests",
        "KLL": "0.5c",
        "Date": "2026-11-26",
        "Generator": "kiisrv tests",
    }
    h.update(kw)
    return h


def key(code: str, *layers: str, **extra: Any) -> dict[str, Any]:
    return {"code": code, "layers": {str(i): {"key": k} for i, k in enumerate(layers)}, **extra}


def ktype(*, custom: str | None = None, **kw: Any) -> dict[str, Any]:
    """A user layout over tests/fixtures/layouts/KType-TestBase.json (4 keys)."""
    doc: dict[str, Any] = {
        "header": header(**kw),
        "matrix": [
            key("0x01", "ESC", "F1"),
            key("0x02", "Q"),
            key("0x03", "B", "#:layerShift(1)"),
            key("0x04", "C"),
        ],
    }
    if custom is not None:
        doc["custom"] = {"0": custom}
    return doc


def mdergo1() -> dict[str, Any]:
    return {
        "header": header(name="MDErgo1", layout="Split"),
        "matrix": [key("0x01", "ESC"), key("0x02", "A", "1"), key("0x03", "B")],
    }


def request(config: dict[str, Any], env: str = "latest") -> dict[str, Any]:
    return {"config": copy.deepcopy(config), "env": env}


# -- running a server ----------------------------------------------------------------


@asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process, started and stopped as uvicorn would, behind an httpx client."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 4321))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://kiisrv.test", timeout=120
        ) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


def on_loop() -> bool:
    """True when called from a thread that runs an event loop (where blocking hurts)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Live:
    base: str
    pid: int


# The secret a test cluster's API servers and workers share (settings.queue_key).
QUEUE_KEY = "test-queue-key-" + "k" * 32


def kiisrv_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a ``kiisrv`` subprocess reads ``settings`` from, as in production."""
    return {
        **os.environ,
        "KIISRV_DATA_DIR": str(settings.data_dir),
        "KIISRV_LAYOUTS_DIR": str(settings.layouts_dir),
        "KIISRV_IMAGE_PREFIX": settings.image_prefix,
        "KIISRV_INSTANCE": settings.instance,
        "KIISRV_BUILD_MEMORY": settings.build_memory,
        "KIISRV_RATE_LIMIT": str(settings.rate_limit),
        "KIISRV_MAX_CLIENT_BUILDS": str(settings.max_client_builds),
        "KIISRV_MAX_CLIENT_CONNECTIONS": str(settings.max_client_connections),
        "KIISRV_QUEUE_KEY": QUEUE_KEY,  # used only with KIISRV_QUEUE_URL
        **extra,
    }


@contextmanager
def serve(settings: Settings, log: Path, **env_extra: str) -> Iterator[Live]:
    """``kiisrv serve`` in a subprocess, configured by the environment like production."""
    port = free_port()
    env = kiisrv_env(settings, KIISRV_HOST="127.0.0.1", KIISRV_PORT=str(port), **env_extra)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kiisrv", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_for_http(f"{base}/healthz"):
            raise AssertionError(f"server did not start:\n{log.read_text()}")
        yield Live(base, proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def download(client: httpx.AsyncClient, filename: str) -> zipfile.ZipFile:
    """The zip a build answer names (``./tmp/<name>``), fetched and opened."""
    r = await client.get(f"/tmp/{filename.rsplit('/', 1)[1]}")
    assert r.status_code == 200, r.text
    return zipfile.ZipFile(io.BytesIO(r.content))


async def eventually(
    probe: Callable[[], Awaitable[T]],
    until: Callable[[T], bool] = bool,
    timeout: float = 10.0,
    interval: float = 0.05,
) -> T:
    """Polls ``probe`` until ``until(value)`` holds; the last value, or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still {value!r} after {timeout} s")
        await asyncio.sleep(interval)


# -- Docker ----------------------------------------------------------------------------


def build_test_image(client: Any, context: Path) -> str:
    """The test double, from a copy of the build context (plus an extra CA when given).

    Built twice: the second build only adds the release labels, read from the file
    the first one wrote (docker/controller/label.sh does the same for real images).
    """
    shutil.copytree(REPO / "docker", context / "docker")
    shutil.copytree(
        REPO / "tests" / "controller-double", context / "tests" / "controller-double", symlinks=True
    )
    # kiisrv itself (the image's recipe stage makes the stock layouts' warm inputs with
    # it), from the project's fixture layouts and, when they are here, the reference
    # ones (tests/docker/test_warm_tree.py builds those), not whatever the checkout's
    # docker/server/layouts/ holds.
    shutil.copytree(REPO / "src", context / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, context / name)
    layouts = context / "docker" / "server" / "layouts"
    for old in [*layouts.glob("*.json"), layouts / "ALIASES.txt"]:
        old.unlink(missing_ok=True)
    sources = [CONFORMANCE / "layouts", FIXTURE_LAYOUTS]
    for folder in (f for f in sources if f.is_dir()):
        for found in [*folder.glob("*.json"), folder / "ALIASES.txt"]:
            if found.is_file():
                if found.name == "ALIASES.txt" and (layouts / found.name).is_file():
                    with (layouts / found.name).open("a") as aliases:
                        aliases.write("\n" + found.read_text())
                else:
                    shutil.copy(found, layouts / found.name)
    if EXTRA_CA:
        shutil.copy(EXTRA_CA, context / "docker" / "extra-ca" / "extra.crt")
    tag = f"{TEST_IMAGE_PREFIX}{TEST_CONTAINERS[0]}:latest"

    def build(**labels: str) -> Any:
        image, _ = client.images.build(
            path=str(context),
            dockerfile="docker/controller/Dockerfile",
            target="test-double",
            # A tag of no known version: the recipe warms both KLL channels (latest, lts).
            buildargs={"TOOLCHAIN_PACKAGES": "", "TAG": "v0.0.0-test", **labels},
            tag=tag,
            rm=True,
            forcerm=True,
        )
        return image

    image = build()
    raw = client.containers.run(
        image.id, entrypoint=["cat", "/controller/kiisrv-version.json"], remove=True
    )
    image = build(**release_build_args(raw))
    for container in TEST_CONTAINERS[1:]:
        image.tag(f"{TEST_IMAGE_PREFIX}{container}", "latest")
    return str(image.id)


def release_build_args(raw: bytes) -> dict[str, str]:
    import json

    data = json.loads(raw)
    return {
        "KIISRV_RELEASE_TAG": str(data["tag"]),
        "KIISRV_RELEASE_COMMIT": str(data["commit"]),
        "KIISRV_RELEASE_DATE": str(data["date"]),
        "KIISRV_RELEASE_HASH": str(data["hash"]),
    }


RELEASE_LABELS = ("tag", "commit", "date", "hash")


def unlabelled_test_image(client: Any, tag: str, *run: str) -> str:
    """The test double as ``docker compose build`` alone leaves an image: its release
    labels empty (no label.sh, no second build), ``/controller/kiisrv-version.json`` as
    its build wrote it, unless ``run`` (shell commands, as root) changes it. Tagged
    ``tag``; its id."""
    import io

    base = f"{TEST_IMAGE_PREFIX}{TEST_CONTAINERS[0]}:latest"
    empty = " ".join(f'io.kiisrv.release.{k}=""' for k in RELEASE_LABELS)
    lines = [f"FROM {base}", "USER root", *(f"RUN {cmd}" for cmd in run), f"LABEL {empty}"]
    image, _ = client.images.build(
        fileobj=io.BytesIO("\n".join(lines).encode()),
        tag=tag,
        rm=True,
        forcerm=True,
        network_mode="none",
    )
    assert not any(image.labels.get(f"io.kiisrv.release.{k}") for k in RELEASE_LABELS)
    return str(image.id)


class Events:
    """This test's build containers, as the daemon saw them."""

    def __init__(self, client: Any, instance: str) -> None:
        self.client = client
        self.instance = instance
        self.since = time.time() - 1

    def created(self, **filters: str) -> list[dict[str, Any]]:
        """Containers created since the start; by default this instance's builds."""
        stream = self.client.events(
            since=int(self.since),
            until=int(time.time()) + 1,
            decode=True,
            filters={
                "type": "container",
                "event": "create",
                **(filters or {"label": f"io.kiisrv.instance={self.instance}"}),
            },
        )
        return list(stream)

    def running(self) -> list[Any]:
        return list(
            self.client.containers.list(
                ignore_removed=True,
                all=True,
                filters={"label": f"io.kiisrv.instance={self.instance}"},
            )
        )


# -- Compose and the server image ----------------------------------------------------


def compose_command() -> list[str]:
    """``docker compose`` (v2) when installed, else ``docker-compose`` (v1)."""
    for cmd in (["docker", "compose"], ["docker-compose"]):
        try:
            if subprocess.run([*cmd, "version"], capture_output=True).returncode == 0:
                return cmd
        except FileNotFoundError:
            continue
    skip_or_fail("neither `docker compose` nor `docker-compose` is installed")
    raise AssertionError  # skip_or_fail does not return


def shell(command: str) -> None:
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True)
    assert done.returncode == 0, f"{command}: {done.stderr}"


def build_server_image(client: Any, context: Path, tag: str) -> None:
    """The server image (docker/server/Dockerfile) from a copy of the repository, with
    the test layouts and the extra CA, tagged ``tag``."""
    for name in ("docker", "src"):
        shutil.copytree(REPO / name, context / name)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, context / name)
    # The reference layouts when present (as CI has them), and the tests' own.
    target = context / "docker" / "server" / "layouts"
    for source in (CONFORMANCE / "layouts", FIXTURE_LAYOUTS):
        if source.is_dir():
            for f in source.iterdir():
                shutil.copy(f, target / f.name)
    if EXTRA_CA:
        shutil.copy(EXTRA_CA, context / "docker" / "extra-ca" / "extra.crt")
    client.images.build(
        path=str(context), dockerfile="docker/server/Dockerfile", tag=tag, rm=True, forcerm=True
    )


# -- distributed builds: Redis, workers, a second engine -------------------------------

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
DOCKER_HOST_2 = os.environ.get("KIISRV_TEST_DOCKER_HOST_2")  # the second build host


def skip_or_fail(reason: str) -> None:
    """Skipped locally; a failure in CI (KIISRV_REQUIRE_DOCKER=1), where it must run."""
    import pytest

    if os.environ.get("KIISRV_REQUIRE_DOCKER") == "1":
        pytest.fail(f"KIISRV_REQUIRE_DOCKER=1 but {reason}")
    pytest.skip(reason)


class RedisServer:
    """A redis-server of the test's own (Debian's package), on a free port, no disk."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
        cmd += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@contextmanager
def work(settings: Settings, log: Path, **env_extra: str) -> Iterator[subprocess.Popen[bytes]]:
    """``kiisrv worker`` in a subprocess; its instance name is ``settings.instance``."""
    env = kiisrv_env(
        settings,
        DOCKER_HOST=settings.docker_url,
        KIISRV_MAX_BUILDS=str(settings.max_builds),
        **env_extra,
    )
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kiisrv", "worker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- the shared statistics database: PostgreSQL ----------------------------------------


def _postgres_bin() -> Path:
    """KIISRV_TEST_POSTGRES_BIN, else the newest of Debian's /usr/lib/postgresql/<v>/bin."""
    explicit = os.environ.get("KIISRV_TEST_POSTGRES_BIN")
    if explicit:
        return Path(explicit)
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


POSTGRES_BIN = _postgres_bin()


class PostgresServer:
    """A PostgreSQL cluster of the test's own (Debian's binaries), trust auth, no fsync.

    initdb and postgres refuse to run as root, so as root both run as the ``postgres``
    user, in a folder of their own under /tmp (pytest's tmp_path is root's, mode 700).
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="kiisrv-pg-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            self._as = {"user": "postgres", "group": "postgres"}
            shutil.chown(self.dir, "postgres", "postgres")

    @staticmethod
    def available() -> bool:
        return (POSTGRES_BIN / "initdb").is_file() and (POSTGRES_BIN / "postgres").is_file()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """initdb (the first time), then the server; returns once it takes connections."""
        data = self.dir / "data"
        if not (data / "PG_VERSION").exists():
            subprocess.run(
                [
                    *(str(POSTGRES_BIN / "initdb"), "-D", str(data), "-U", "postgres"),
                    *("--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"),
                ],
                cwd=self.dir,
                check=True,
                stdout=subprocess.DEVNULL,
                **self._as,
            )
        log = (self.dir / "postgres.log").open("wb")
        self.proc = subprocess.Popen(
            [
                *(str(POSTGRES_BIN / "postgres"), "-D", str(data), "-p", str(self.port)),
                *("-k", str(self.dir), "-c", "listen_addresses=127.0.0.1"),
                *("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"),
            ],
            cwd=self.dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            **self._as,
        )
        log.close()
        import psycopg

        for _ in range(200):
            try:
                psycopg.connect(self.url(), connect_timeout=1).close()
                return
            except psycopg.OperationalError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        raise AssertionError(f"postgres did not start:\n{(self.dir / 'postgres.log').read_text()}")

    def create_database(self, name: str) -> str:
        """A new empty database; its URL (what KIISRV_STATS_URL would say)."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): open connections are cut."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A started PostgresServer, removed afterwards; skipped (failed in CI) without one."""
    if not PostgresServer.available():
        skip_or_fail(
            f"PostgreSQL is not installed ({POSTGRES_BIN}/initdb is missing: "
            "apt-get install postgresql, or set KIISRV_TEST_POSTGRES_BIN)"
        )
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


# -- what a Redis holds ------------------------------------------------------------------


async def redis_contents(url: str) -> bytes:
    """Every key and every value of a Redis, read by type (DUMP may compress a value),
    so a test can look for a client address anywhere in it."""
    from redis.asyncio import Redis

    redis = Redis.from_url(url)
    parts: list[bytes] = []
    try:
        async for key in redis.scan_iter(count=1000):
            parts.append(key)
            kind = (await redis.type(key)).decode()
            if kind == "string":
                parts.append(await redis.get(key) or b"")
            elif kind == "zset":
                for member, score in await redis.zrange(key, 0, -1, withscores=True):
                    parts += [member, str(score).encode()]
            elif kind == "hash":
                for field, value in (await redis.hgetall(key)).items():
                    parts += [field, value]
            elif kind == "list":
                parts += await redis.lrange(key, 0, -1)
            elif kind == "set":
                parts += list(await redis.smembers(key))
            elif kind == "stream":
                for entry_id, fields in await redis.xrange(key):
                    parts.append(entry_id)
                    for field, value in fields.items():
                        parts += [field, value]
    finally:
        await redis.aclose()
    return b"\n".join(parts)


# -- the Docker socket proxy -------------------------------------------------------------


@contextmanager
def socket_proxy(settings: Settings, log: Path, **env_extra: str) -> Iterator[str]:
    """``kiisrv socket-proxy`` in a subprocess on the real engine socket, for the build
    containers of ``settings``; yields its ``tcp://`` address for ``DOCKER_HOST``."""
    port = free_port()
    env = kiisrv_env(settings, DOCKER_HOST="unix:///var/run/docker.sock", **env_extra)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kiisrv", "socket-proxy", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        if not wait_for_http(f"http://127.0.0.1:{port}/_ping"):
            raise AssertionError(f"socket proxy did not start:\n{log.read_text()}")
        yield f"tcp://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# -- a hung PostgreSQL -------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc: the postmaster's backends)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found.append(p := todo.pop())
        todo += children.get(p, [])
    return found


@contextmanager
def postgres_paused(pg: PostgresServer) -> Iterator[None]:
    """Every process of ``pg`` stopped (SIGSTOP), then continued: a database that hangs,
    its sockets open and nothing answering (not one that refuses connections)."""
    assert pg.proc is not None
    stopped = _descendants(pg.proc.pid)
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

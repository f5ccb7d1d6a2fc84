"""The cluster of ``compose.distributed.yaml``, brought up for real and hurt (#15.6).

``compose.prod.yaml`` + ``compose.distributed.yaml`` with ``up -d --no-build``: HAProxy
in front of two API servers, two workers, Redis, PostgreSQL, the socket proxy, with
the test double as the controller image and stand-ins built from Debian's packages for
the registry images (tests/compose-stand-ins/: CI has no registry). Through the load
balancer's published port, the Configurator's sequence (POST a layout, GET the zip it
names, GET /versions) runs 100 times, a few at once; meanwhile a worker, an API
server, Redis and PostgreSQL each crash once (SIGKILL to the container's process; the
compose file's ``restart: unless-stopped`` brings each back).

What must hold:
- every request gets an HTTP answer (no hang, no reset reaching the client); during
  an outage a 502/503/504 with ``Retry-After`` is an answer the client retries, like
  the Configurator's user pressing the button again; never a 500, never a 404 for a
  zip named in a 200;
- nothing accepted is lost: all 100 sequences end with their zip;
- the Requests rows in PostgreSQL equal the build requests kiisrv answered. "Answered"
  is what reached the client from an API server (the load balancer adds
  ``X-Kiisrv-Server`` to those, never to its own errors) with a ``filename`` in the
  body: a request that became a build outcome, the only kind kiisrv writes a row for
  (a refusal before any build, such as Redis being down, has none). The load
  balancer's own 502/503 answers reached no kiisrv and are counted apart. An API
  server writes its rows every 0.5 s after answering (stats.py): those it answered
  just before its SIGKILL come from its journal when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import secrets
import signal
import subprocess
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors
import httpx
import pytest
from docker import DockerClient
from docker.models.containers import Container

from kiisrv import signing
from kiisrv.settings import Settings
from kiisrv.tools import verify
from kiisrv.web.pages import SIGNING_KEY_HEADER
from tests.helpers import (
    REPO,
    TEST_IMAGE_PREFIX,
    build_server_image,
    compose_command,
    free_port,
    ktype,
    request,
)

pytestmark = pytest.mark.timeout(900)

SEQUENCES = 100
AT_ONCE = 6  # sequences in flight at once
# After how many sequences started each service crashes (one at a time).
CRASHES = ((15, "worker"), (35, "api-2"), (55, "redis"), (75, "db"))
OUTAGE_STATUSES = {502, 503, 504}  # answers of an outage: the client tries again
STAND_INS = {
    "redis": "KIISRV_REDIS_IMAGE",
    "postgres": "KIISRV_DB_IMAGE",
    "haproxy": "KIISRV_LB_IMAGE",
}
FILES = ["-f", str(REPO / "compose.prod.yaml"), "-f", str(REPO / "compose.distributed.yaml")]


def stand_in_images(client: DockerClient) -> dict[str, str]:
    """The stand-ins, tagged apart per test image prefix and kept (Docker's cache makes
    the next build instant); variable -> tag."""
    tags = {}
    for target, variable in STAND_INS.items():
        tag = f"{TEST_IMAGE_PREFIX}stand-in-{target}:latest"
        client.images.build(
            path=str(REPO / "tests" / "compose-stand-ins"),
            target=target,
            tag=tag,
            rm=True,
            forcerm=True,
        )
        tags[variable] = tag
    return tags


@dataclass
class Cluster:
    project: str
    env: dict[str, str]
    compose: list[str]
    client: DockerClient
    base: str
    settings: Settings

    def service(self, name: str) -> Container:
        (c,) = self.client.containers.list(
            all=True,
            filters={
                "label": [
                    f"com.docker.compose.project={self.project}",
                    f"com.docker.compose.service={name}",
                ]
            },
        )
        return c

    def psql(self, sql: str) -> str:
        out = self.service("db").exec_run(["psql", "-U", "kiisrv", "-d", "kiisrv", "-Atc", sql])
        assert out.exit_code == 0, out.output.decode(errors="replace")
        return str(out.output.decode().strip())


@pytest.fixture
def cluster(
    docker_client: DockerClient,
    controller_image: str,
    docker_settings: Settings,
    tmp_path: Path,
) -> Iterator[Cluster]:
    project = docker_settings.instance
    server_tag = f"{project}-server:latest"
    proxy_tag = f"{project}-socket-proxy:latest"
    started = time.monotonic()
    build_server_image(docker_client, tmp_path / "context", server_tag)
    docker_client.images.get(server_tag).tag(proxy_tag)
    images = stand_in_images(docker_client)
    print(f"images built: {time.monotonic() - started:.1f} s")
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KIISRV_")},
        **images,
        "KIISRV_IMAGE": server_tag,
        "KIISRV_PROXY_IMAGE": proxy_tag,
        "KIISRV_DATA_HOST": str(tmp_path / "data"),
        "KIISRV_PUBLISH": f"127.0.0.1:{port}",
        "KIISRV_IMAGE_PREFIX": TEST_IMAGE_PREFIX,
        "KIISRV_INSTANCE": project,
        "KIISRV_RATE_LIMIT": "0",  # every request comes from this one client
        "KIISRV_MAX_CLIENT_BUILDS": "64",  # and may run many builds at once
        "KIISRV_REDIS_PASSWORD": secrets.token_hex(16),
        "KIISRV_QUEUE_KEY": secrets.token_hex(32),
        "KIISRV_DB_PASSWORD": secrets.token_hex(16),
    }
    compose = [*compose_command(), *FILES, "-p", project]
    c = Cluster(project, env, compose, docker_client, f"http://127.0.0.1:{port}", docker_settings)
    try:
        yield c
    finally:
        for ct in docker_client.containers.list(
            all=True, filters={"label": f"com.docker.compose.project={project}"}
        ):
            tail = 2000 if ct.labels["com.docker.compose.service"] == "lb" else 300
            print(f"--- {ct.name} ---\n{ct.logs(tail=tail).decode(errors='replace')}")
        down = subprocess.run([*compose, "down", "-v"], env=env, capture_output=True, text=True)
        print(down.stderr)
        # Build containers the workers left (none should be).
        for ct in docker_client.containers.list(all=True, filters={"label": "io.kiisrv.managed=1"}):
            if ct.labels.get("io.kiisrv.instance", "").startswith(project):
                ct.remove(force=True)
        for tag in (server_tag, proxy_tag):
            with contextlib.suppress(docker.errors.APIError):
                docker_client.images.remove(tag)


@dataclass
class Answer:
    kind: str  # POST, ZIP, VERSIONS
    status: int  # 0: no HTTP answer (a transport error)
    server: str  # the API server that answered, "lb" for the load balancer's own
    at: float  # time.time() of the answer
    detail: str = ""
    filename: bool = False  # a POST answer naming a zip: a build outcome (a row)


@dataclass
class Run:
    answers: list[Answer] = field(default_factory=list)
    started: int = 0
    crashes: list[tuple[str, str, float, float]] = field(default_factory=list)  # svc, ct, t0, t1

    def add(self, kind: str, r: httpx.Response | None, error: str = "") -> Answer:
        if r is None:
            a = Answer(kind, 0, "", time.time(), error)
        else:
            body: Any = None
            if r.headers.get("content-type", "").startswith("application/json"):
                with contextlib.suppress(ValueError):
                    body = r.json()
            named = kind == "POST" and isinstance(body, dict) and "filename" in body
            server = r.headers.get("x-kiisrv-server", "lb")
            a = Answer(kind, r.status_code, server, time.time(), r.text[:300], named)
            if r.status_code in OUTAGE_STATUSES:
                assert r.headers.get("retry-after"), f"{kind} {r.status_code} without Retry-After"
        self.answers.append(a)
        return a


async def retried(run: Run, kind: str, call: Any, deadline: float) -> httpx.Response:
    """``call()`` until an answer that is not an outage's (or the deadline)."""
    while True:
        try:
            r = await call()
        except httpx.TransportError as exc:
            run.add(kind, None, repr(exc))
            raise AssertionError(f"{kind}: no answer at {time.time():.3f}: {exc!r}") from exc
        run.add(kind, r)
        if r.status_code not in OUTAGE_STATUSES or time.monotonic() > deadline:
            return r
        await asyncio.sleep(min(float(r.headers.get("retry-after", "1")), 1.0))


async def sequence(run: Run, http: httpx.AsyncClient, body: dict[str, Any]) -> None:
    """The Configurator's: POST the layout, GET the zip it names, GET /versions."""
    deadline = time.monotonic() + 240
    r = await retried(run, "POST", lambda: http.post("/", json=body), deadline)
    assert r.status_code == 200, f"POST {r.status_code}: {r.text}"
    name = r.json()["filename"].rsplit("/", 1)[1]
    z = await retried(run, "ZIP", lambda: http.get(f"/tmp/{name}"), deadline)
    assert z.status_code == 200, f"GET /tmp/{name} {z.status_code}: {z.text}"
    assert "kiibohd.dfu.bin" in zipfile.ZipFile(io.BytesIO(z.content)).namelist()
    v = await retried(run, "VERSIONS", lambda: http.get("/versions"), deadline)
    assert v.status_code == 200, f"GET /versions {v.status_code}: {v.text}"
    # Signed by whichever worker built it, with the key the API servers publish (the
    # compose file gives the workers the API servers' signing-key).
    key = signing.public_key(v.headers[SIGNING_KEY_HEADER])
    assert verify.check(verify.read_zip_bytes(z.content), key)[0] is None


def body_of(i: int, tag: str) -> dict[str, Any]:
    """Every third a layout many share (two of them: answered by the first build or the
    store); the others distinct, each a 1 s build."""
    if i % 3 == 0:
        return request(ktype(custom=f"# {tag} shared {i % 2}"))
    return request(ktype(custom=f"# KIISRV_TEST_SLEEP=1 {tag} distinct {i}"))


async def crash(run: Run, c: Cluster, service: str) -> None:
    """SIGKILL the service's process (as a crash: Docker's restart policy applies, where
    `docker kill` would count as stopped on purpose); wait until it is back."""
    # Docker's calls block: on a thread of their own, not under the clients' loop.
    if service == "worker":  # the worker with a build running, if either has one
        service = "worker-1"
        for name in ("worker-1", "worker-2"):
            label = f"io.kiisrv.instance={c.project}-{name}"
            if await asyncio.to_thread(c.client.containers.list, filters={"label": label}):
                service = name
                break
    ct = await asyncio.to_thread(c.service, service)
    before = ct.attrs["RestartCount"]
    t0 = time.time()
    os.kill(ct.attrs["State"]["Pid"], signal.SIGKILL)
    for _ in range(200):
        await asyncio.sleep(0.1)
        await asyncio.to_thread(ct.reload)
        if ct.attrs["RestartCount"] > before and ct.status == "running":
            break
    else:
        raise AssertionError(f"{service} was not restarted: {ct.attrs['State']}")
    if service.startswith("api"):
        for _ in range(300):
            await asyncio.sleep(0.1)
            await asyncio.to_thread(ct.reload)
            if ct.attrs["State"]["Health"]["Status"] == "healthy":
                break
    run.crashes.append((service, ct.name, t0, time.time()))


async def drive(c: Cluster, tag: str) -> Run:
    run = Run()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(SEQUENCES):
        queue.put_nowait(i)
    failures: list[str] = []

    async def client() -> None:
        limits = httpx.Limits(max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=c.base, timeout=120, limits=limits) as http:
            while not queue.empty():
                i = queue.get_nowait()
                run.started += 1
                try:
                    await sequence(run, http, body_of(i, tag))
                except (AssertionError, httpx.TransportError) as exc:
                    failures.append(f"sequence {i}: {exc!r}")

    async def chaos() -> None:
        for after, service in CRASHES:
            while run.started < after:
                await asyncio.sleep(0.05)
            await crash(run, c, service)

    chaos_task = asyncio.create_task(chaos())
    await asyncio.gather(*(client() for _ in range(AT_ONCE)))
    await chaos_task
    assert not failures, "\n".join(failures)
    return run


class BuildsSeen:
    """Build containers created, by instance (the engine's event stream, read as it
    comes: its log keeps only the last 256 events)."""

    def __init__(self, client: DockerClient) -> None:
        self.counts: Counter[str] = Counter()
        self._stream = client.events(
            decode=True,
            filters={"type": "container", "event": "create", "label": "io.kiisrv.managed=1"},
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(Exception):  # the stream closed under us
            for event in self._stream:
                self.counts[event["Actor"]["Attributes"].get("io.kiisrv.instance", "")] += 1

    def close(self) -> None:
        self._stream.close()


def summary(run: Run) -> str:
    lines = []
    by = Counter(
        (a.kind, a.server if a.server == "lb" else "kiisrv", a.status) for a in run.answers
    )
    lines.append("answers (kind, from, status): count")
    lines += [f"  {k}: {n}" for k, n in sorted(by.items())]
    for service, name, t0, t1 in run.crashes:
        window = [a for a in run.answers if t0 <= a.at <= t1 + 5]
        counts = Counter((a.kind, a.server, a.status) for a in window)
        lines.append(
            f"crash of {service} ({name}): back after {t1 - t0:.1f} s; answers until 5 s "
            f"after: {dict(sorted(counts.items()))}"
        )
    return "\n".join(lines)


def test_the_cluster_answers_every_request_through_crashes(
    cluster: Cluster, docker_client: DockerClient
) -> None:
    c = cluster
    started = time.monotonic()
    up = subprocess.run(
        [*c.compose, "up", "-d", "--no-build"], env=c.env, capture_output=True, text=True
    )
    assert up.returncode == 0, up.stderr
    labels = {"label": f"com.docker.compose.project={c.project}"}
    expected = {"lb", "api-1", "api-2", "worker-1", "worker-2", "redis", "db", "socket-proxy"}
    for _ in range(600):
        running = docker_client.containers.list(filters=labels)
        services = {ct.labels["com.docker.compose.service"]: ct for ct in running}
        healthy = all(
            services[s].attrs["State"].get("Health", {}).get("Status") == "healthy"
            for s in ("api-1", "api-2")
            if s in services
        )
        if set(services) == expected and healthy:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if "latest" in httpx.get(f"{c.base}/versions", timeout=5).json():
                    break
        time.sleep(0.25)
    else:
        raise AssertionError(f"cluster not up: {sorted(services)}")
    # compose.prod.yaml's single server stays parked; only the load balancer publishes.
    assert set(services) == expected
    published = {s for s, ct in services.items() if any(ct.ports.values())}
    assert published == {"lb"}, published
    print(f"compose up -> serving through the load balancer: {time.monotonic() - started:.1f} s")

    seen = BuildsSeen(docker_client)
    run_started = time.monotonic()
    try:
        run = asyncio.run(drive(c, secrets.token_hex(4)))
    finally:
        took = time.monotonic() - run_started
        time.sleep(0.5)
        seen.close()
    print(f"build containers by instance: {dict(seen.counts)}")  # other tests' too
    print(summary(run))
    print(f"{SEQUENCES} sequences with {len(CRASHES)} crashes: {took:.1f} s")

    # Every request had an HTTP answer; none was a 500 or a 404; outages said Retry-After.
    assert [a for a in run.answers if a.status == 0] == []
    bad = [a for a in run.answers if a.status not in {200, *OUTAGE_STATUSES}]
    assert bad == [], bad
    assert {s for s, _, _, _ in run.crashes} >= {"api-2", "redis", "db"}
    assert len(run.crashes) == len(CRASHES)

    # Requests counted (a cache hit is a count on a row of its day) = the build
    # requests kiisrv answered. The rows are written every 0.5 s after
    # the answer; wait for the last ones.
    answered = [a for a in run.answers if a.kind == "POST" and a.server != "lb" and a.filename]
    rows = -1
    for _ in range(300):  # the killed API server's last rows: when it is back (journal)
        rows = int(c.psql("SELECT COALESCE(SUM(n), 0) FROM Requests"))
        if rows >= len(answered):
            break
        time.sleep(0.2)
    from_lb = Counter(a.status for a in run.answers if a.kind == "POST" and a.server == "lb")
    refused = [a for a in run.answers if a.kind == "POST" and a.server != "lb" and not a.filename]
    print(
        f"Requests rows {rows}; build requests answered by kiisrv {len(answered)} (by status "
        f"{dict(Counter(a.status for a in answered))}); refused before a build (no row) "
        f"{len(refused)}; the load balancer's own answers (no row) {dict(from_lb)}"
    )
    # A Requests row waits in its API server's memory for up to 0.5 s after the answer
    # (the answer never waits for the database); a SIGKILL lost the rows of what that
    # server answered just before. Now they are in its journal, written when it is back.
    (crashed, _, t_kill, _) = next(c for c in run.crashes if c[0].startswith("api"))
    window = [a for a in answered if a.server == crashed and t_kill - 1.0 <= a.at <= t_kill + 0.5]
    print(f"answered by {crashed} in the second before its SIGKILL: {len(window)}")
    assert rows == len(answered), (
        f"{len(answered) - rows} answered build requests have no Requests row "
        f"({len(window)} answered by {crashed} in the second before its SIGKILL)"
    )

    # Both workers built; every build ran on a worker; no build container is left.
    assert int(c.psql("SELECT count(*) FROM Results")) > 0
    ours = {i: n for i, n in seen.counts.items() if i.startswith(c.project)}
    assert set(ours) == {f"{c.project}-worker-1", f"{c.project}-worker-2"}, ours
    down = subprocess.run([*c.compose, "down", "-v"], env=c.env, capture_output=True, text=True)
    assert down.returncode == 0, down.stderr
    assert docker_client.containers.list(all=True, filters=labels) == []
    left = [
        ct.name
        for ct in docker_client.containers.list(all=True, filters={"label": "io.kiisrv.managed=1"})
        if ct.labels.get("io.kiisrv.instance", "").startswith(c.project)
    ]
    assert left == []
    volumes = [v.name for v in docker_client.volumes.list() if v.name.startswith(c.project)]
    assert volumes == []

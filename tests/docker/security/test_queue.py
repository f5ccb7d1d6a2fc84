"""Attacks through Redis on a real cluster: a real redis-server, a real ``kiisrv worker``
on the real engine, real ``kiisrv serve`` processes (#14.1).

Whoever can write to the cluster's Redis (a leaked password, an exposed port) used to
run code in every worker (arq's pickle jobs) and replace any layout's firmware for
everyone (one ``HSET`` of ``kiisrv:result:<hash>``). Now jobs and results must carry
the cluster's HMAC (wire.py) and arq's records are JSON only.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import httpx
import psycopg
import pytest
from arq.connections import ArqRedis
from docker import DockerClient

from kiisrv.cluster import keys
from kiisrv.jobs import JobState
from kiisrv.settings import Settings
from tests.helpers import (
    RedisServer,
    ktype,
    request,
    serve,
    skip_or_fail,
    work,
)


class _Payload:
    """Unpickling this runs a command: what arq's default serializer would execute."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def stack(
    docker_settings: Settings, docker_client: DockerClient, tmp_path: Path
) -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as s:
        yield s
        s.close()
        for ct in docker_client.containers.list(all=True, ignore_removed=True):
            if ct.name.startswith(docker_settings.instance):
                ct.remove(force=True)


async def _post(base: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base, timeout=120) as http:
        deadline = time.monotonic() + 30
        while "latest" not in (await http.get("/versions")).json():
            assert time.monotonic() < deadline, "no worker advertised latest"
            await asyncio.sleep(0.2)
        return await http.post("/", json=body)


def test_jobs_planted_in_redis_never_run_and_the_worker_keeps_building(
    docker_settings: Settings,
    queue_env: dict[str, str],
    controller_image: str,
    redis: RedisServer,
    stack: contextlib.ExitStack,
    tmp_path: Path,
) -> None:
    """A pickle job (arq's default format) whose unpickling runs a command, and a JSON
    job that is well formed but not signed by the cluster: the real worker runs neither
    (no command, no build container), and goes on building signed jobs."""
    worker_log = tmp_path / "worker.log"
    stack.enter_context(
        work(docker_settings.replace(data_dir=tmp_path / "w"), worker_log, **queue_env)
    )
    api = stack.enter_context(
        serve(
            docker_settings.replace(data_dir=tmp_path / "a"),
            tmp_path / "a.log",
            **queue_env,
        )
    )
    marker = tmp_path / "pwned"
    unsigned_hash = "e" * 32

    async def scenario() -> httpx.Response:
        first = await _post(api.base, request(ktype(custom="# first")))  # the worker is up
        assert first.status_code == 200, first.text
        queue = keys.queue_name(controller_image)
        pickler = ArqRedis.from_url(redis.url)  # arq's default serializer: pickle
        await pickler.enqueue_job(
            keys.BUILD_FUNCTION, _Payload(marker), _job_id="d" * 32, _queue_name=queue
        )
        await pickler.aclose()
        plain = keys.connect(redis.url)
        payload = json.dumps({"job": {"hash": unsigned_hash}, "files": []})
        await plain.enqueue_job(
            keys.BUILD_FUNCTION, payload, _job_id=unsigned_hash, _queue_name=queue
        )
        await plain.aclose()
        await asyncio.sleep(3)  # the worker polls every 20 ms
        return await _post(api.base, request(ktype(custom="# after the planted jobs")))

    after = asyncio.run(scenario())
    assert after.status_code == 200, after.text
    assert not marker.exists(), "a planted pickle ran a command in the worker"
    log = worker_log.read_text()
    assert f"refusing job '{unsigned_hash}'" in log, log
    containers = docker.from_env().containers.list(
        all=True, filters={"label": f"io.kiisrv.hash={unsigned_hash}"}
    )
    assert containers == []


def test_a_forged_result_in_redis_or_the_store_is_not_served_the_layout_is_built(
    docker_settings: Settings,
    queue_env: dict[str, str],
    store_url: str,
    controller_image: str,
    redis: RedisServer,
    stack: contextlib.ExitStack,
    tmp_path: Path,
) -> None:
    """One ``HSET kiisrv:result:<hash>`` with a zip of the attacker's and a job record
    saying "succeeded", and the zip replaced in the result store's row: an API server
    that has not built the layout itself serves neither, deletes both (no signature)
    and has the layout built for real."""
    stack.enter_context(
        work(
            docker_settings.replace(data_dir=tmp_path / "w"),
            tmp_path / "w.log",
            **queue_env,
        )
    )
    a = stack.enter_context(
        serve(
            docker_settings.replace(data_dir=tmp_path / "a"),
            tmp_path / "a.log",
            **queue_env,
        )
    )
    b_log = tmp_path / "b.log"
    b = stack.enter_context(
        serve(docker_settings.replace(data_dir=tmp_path / "b"), b_log, **queue_env)
    )
    body = request(ktype(custom="# forged result"))
    evil = b"PK\x05\x06" + bytes(18)  # an empty zip: "your firmware"

    async def scenario() -> tuple[str, bytes]:
        first = await _post(a.base, body)
        assert first.status_code == 200, first.text
        name = first.json()["filename"].removeprefix("./tmp/")
        hash_ = name.removesuffix(".zip").rsplit("-", 1)[1]
        redis_client = keys.connect(redis.url)
        record = {
            "hash": hash_,
            "stem": name.removesuffix(".zip"),
            "version": "latest",
            "container": "controller-057",
            "state": JobState.SUCCEEDED.value,
            "error": None,
            "created_at": None,
            "started_at": None,
            "finished_at": None,
            "duration_ms": 1,
            "retry_later": False,
        }
        await redis_client.delete(keys.result_key(hash_))
        await redis_client.hset(  # type: ignore[misc]
            keys.result_key(hash_), mapping={"job": json.dumps(record), "zip": evil}
        )
        await redis_client.aclose()
        with psycopg.connect(store_url, autocommit=True) as conn:
            changed = conn.execute("UPDATE Results SET zip = %s WHERE hash = %s", (evil, hash_))
            assert changed.rowcount == 1
        second = await _post(b.base, body)
        assert second.status_code == 200, second.text
        async with httpx.AsyncClient(base_url=b.base, timeout=60) as http:
            return hash_, (await http.get(f"/tmp/{name}")).content

    hash_, served = asyncio.run(scenario())
    assert served != evil
    with zipfile.ZipFile(io.BytesIO(served)) as z:
        assert "kiibohd.dfu.bin" in z.namelist()
    assert f"deleting the result stored for {hash_}" in b_log.read_text()


def _compose() -> list[str]:
    for cmd in (["docker", "compose"], ["docker-compose"]):
        with contextlib.suppress(OSError):
            if subprocess.run([*cmd, "version"], capture_output=True).returncode == 0:
                return cmd
    skip_or_fail("neither `docker compose` nor `docker-compose` is installed")
    raise AssertionError


def test_the_distributed_stack_has_no_default_secret() -> None:
    """``change-me`` was the Redis password of every cluster that did not set one, and
    workers reach Redis over the network: compose now refuses to start without the
    password, the queue key and the database's password, and the rendered stack holds
    no example secret."""
    repo = Path(__file__).parents[3]
    files = ["-f", str(repo / "compose.prod.yaml"), "-f", str(repo / "compose.distributed.yaml")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIISRV_")}
    secrets = {
        "KIISRV_REDIS_PASSWORD": "p" * 32,
        "KIISRV_QUEUE_KEY": "k" * 32,
        "KIISRV_DB_PASSWORD": "d" * 32,
    }
    for missing in secrets:
        given = {k: v for k, v in secrets.items() if k != missing}
        refused = subprocess.run(
            [*_compose(), *files, "config"], env={**env, **given}, capture_output=True, text=True
        )
        assert refused.returncode != 0 and missing in refused.stderr, refused.stderr
    ok = subprocess.run(
        [*_compose(), *files, "config"],
        env={**env, **secrets},
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert "change-me" not in ok.stdout and "k" * 32 in ok.stdout

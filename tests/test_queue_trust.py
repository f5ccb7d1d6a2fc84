"""The build queue carries data, never code, and only what the cluster signed (#14.1).

arq's records are JSON both ways (a planted pickle never runs), and jobs, results and
worker adverts carry an HMAC with the cluster's key (wire.py): what someone with write
access to Redis plants is refused, deleted or ignored. A real redis-server (Debian's
package); the end-to-end attacks with a real worker are in tests/docker/security/.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import pytest

from kiisrv.cluster import catalog as cluster_catalog
from kiisrv.cluster import keys, wire
from kiisrv.cluster import results as cluster_results
from kiisrv.cluster.results import ResultStore
from kiisrv.jobs import Job, JobState
from kiisrv.recipe.kll import BuildParams, KllFile
from kiisrv.recipe.planner import Plan
from kiisrv.recipe.versions import Available, Version
from kiisrv.settings import Settings
from tests.helpers import QUEUE_KEY, RedisServer

pytestmark = pytest.mark.anyio

STORE = "postgresql://kiisrv:secret@db:5432/kiisrv"


class _Payload:
    """Unpickling this runs a command: what an attacker with Redis access would plant."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


async def test_a_pickled_job_planted_in_redis_is_never_unpickled(
    redis: RedisServer, tmp_path: Path
) -> None:
    """The job record a worker reads from Redis goes through kiisrv's deserializer, the
    one BuildWorker hands arq: a pickle (arq's default format) is refused as data."""
    from arq.constants import job_key_prefix
    from arq.jobs import DeserializationError, deserialize_job_raw

    marker = tmp_path / "pwned"
    redis = keys.connect(redis.url)
    planted = pickle.dumps(
        {"t": 1, "f": keys.BUILD_FUNCTION, "a": [_Payload(marker)], "k": {}, "et": 0}
    )
    await redis.set(job_key_prefix + "planted", planted)
    raw = await redis.get(job_key_prefix + "planted")
    assert redis.job_deserializer is keys.job_deserializer
    with pytest.raises(DeserializationError):
        deserialize_job_raw(raw, deserializer=redis.job_deserializer)
    assert not marker.exists()
    pickle.loads(raw)  # arq's default would have done this: the payload is a live one
    assert marker.exists()


async def test_jobs_are_enqueued_as_json(redis: RedisServer) -> None:
    from arq.constants import job_key_prefix

    redis = keys.connect(redis.url)
    await redis.enqueue_job(keys.BUILD_FUNCTION, '{"plan": 1}', "sig", _job_id="h1")
    stored = await redis.get(job_key_prefix + "h1")
    assert json.loads(stored)["a"] == ['{"plan": 1}', "sig"]
    with pytest.raises(ValueError):
        keys.job_deserializer(pickle.dumps({"f": "x"}))


# -- signed records ----------------------------------------------------------------------

HASH = "0123456789abcdef" * 2
IMAGE_ID = "sha256:" + "ab" * 32


def _plan(**job: Any) -> Plan:
    return Plan(
        job=Job(
            **{
                "hash": HASH,
                "stem": f"KType-Mine-{HASH}",
                "version": "latest",
                "container": "controller-057",
                **job,
            }
        ),
        target=Available(
            Version("latest", "stable", "controller-057", "v0.5.7"), "img", IMAGE_ID, None
        ),
        files=[KllFile("KType-Mine-0.kll", 'U"A" : U"B";\n')],
        params=BuildParams("ktype.bash", False, "KType-Mine-0", "", "Mine"),
        layout_name="KType-Mine.json",
        layout_json=b'{"header": {}}',
        board="KType",
        variant="Mine",
    )


def _signed_payload(w: wire.Wire, plan: dict[str, Any]) -> tuple[str, str]:
    """A payload an attacker holding the key could write: signed, but of any shape."""
    payload = json.dumps(plan)
    return payload, w.sealer.seal("job", plan["job"]["hash"].encode(), payload.encode())


def test_a_plan_round_trips_and_any_change_to_it_is_refused() -> None:
    w = wire.Wire(QUEUE_KEY)
    payload, sig = w.seal_plan(_plan())
    record = w.open_plan(HASH, payload, sig)
    plan = wire.plan_from_record(record, "local-image")
    assert plan.files == _plan().files and plan.params == _plan().params
    assert plan.target.image == "local-image" and plan.job.stem == f"KType-Mine-{HASH}"
    # A plan an older server queued names its client's ccache: the build still runs.
    for old in (None, "0123456789abcdef0123"):
        older = json.dumps({**json.loads(payload), "ccache_client": old})
        opened = w.open_plan(HASH, older, w.sealer.seal("job", HASH.encode(), older.encode()))
        assert wire.plan_from_record(opened, "local-image").files == plan.files

    tampered = payload.replace('U\\"B\\"', 'U\\"C\\"')
    assert tampered != payload
    for job_id, body, signature in [
        (HASH, tampered, sig),  # other firmware under the same hash
        ("f" * 32, payload, sig),  # the same plan as another hash's job
        (HASH, payload, None),  # unsigned, as arq would enqueue it
        (HASH, payload, "0" * 64),
        (HASH, payload, wire.Wire("another-cluster-" + "x" * 32).seal_plan(_plan())[1]),
        (HASH, json.loads(payload), sig),  # not text at all
    ]:
        with pytest.raises(wire.Forged):
            w.open_plan(job_id, body, signature)


@pytest.mark.parametrize(
    "change",
    [
        {"files": [{"name": "../../../etc/cron.d/x.kll", "content": ""}]},
        {"files": [{"name": "/abs.kll", "content": ""}]},
        {"files": []},
        {"job": {"stem": "../../outside"}},
        {"job": {"stem": f"KType-Mine-{'f' * 32}"}},  # a zip named after another build
        {"job": {"hash": "../x"}},
        {"version": ["latest", "stable", "../controller", "v0.5.7"]},
        {"params": ["../../bin/sh", False, "", "", ""]},
        {"params": ["ktype.bash", False, "a\nb", "", ""]},
        {"image_id": "busybox:latest"},
        {"extra": 1},
        {"seeds_cache": True},  # the shared ccache is gone; a record carrying it is not ours
        # What an older server named its client's ccache by: nothing but a pseudonym.
        {"ccache_client": "../../etc"},
        {"ccache_client": "203.0.113.7"},
        {"ccache_client": "0123456789abcdef012"},
        {"ccache_client": "0123456789ABCDEF0123"},
        {"ccache_client": 12345},
    ],
)
def test_a_signed_plan_of_the_wrong_shape_is_refused(change: dict[str, Any]) -> None:
    """A valid signature (a leaked key) still does not make names into paths."""
    w = wire.Wire(QUEUE_KEY)
    plan = json.loads(w.seal_plan(_plan())[0])
    for key, value in change.items():
        if isinstance(value, dict):
            plan[key] = {**plan[key], **value}
        else:
            plan[key] = value
    payload, sig = _signed_payload(w, plan)
    with pytest.raises(wire.Forged):
        w.open_plan(plan["job"]["hash"], payload, sig)


def _finished() -> Job:
    job = _plan().job
    job.state = JobState.SUCCEEDED
    return job


def test_a_result_is_bound_to_its_hash_job_and_zip() -> None:
    w = wire.Wire(QUEUE_KEY)
    sealed = w.seal_result(_finished(), b"PK zip")
    found = {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in sealed.items()}
    job, data = w.open_result(HASH, found)
    assert data == b"PK zip" and job.state is JobState.SUCCEEDED
    for forged in [
        {**found, b"zip": b"PK evil"},
        {**found, b"job": found[b"job"].replace(b"succeeded", b"failed")},
        {k: v for k, v in found.items() if k != b"sig"},
    ]:
        with pytest.raises(wire.Forged):
            w.open_result(HASH, forged)
    with pytest.raises(wire.Forged):
        w.open_result("f" * 32, found)  # another layout's firmware


async def test_a_result_planted_in_redis_is_deleted_not_served(
    redis: RedisServer, stats_url: str
) -> None:
    """One HSET used to replace a layout's firmware for every API server. Zips are no
    longer read from Redis at all (results.py); what is planted under a result's key
    is deleted, and a stored firmware is served as its worker signed it."""
    redis = keys.connect(redis.url)
    w = wire.Wire(QUEUE_KEY)
    store = ResultStore(stats_url, w)
    key = keys.result_key(HASH)
    job = json.dumps(wire.job_to_dict(_finished()))
    await redis.hset(key, mapping={"job": job, "zip": b"PK evil"})  # type: ignore[misc]
    assert await cluster_results.stored_result(redis, store, HASH, any_firmware=True) is None
    assert not await redis.exists(key)

    await store.put(_finished(), b"PK good")
    await redis.hset(key, mapping={"job": job, "zip": b"PK evil"})  # type: ignore[misc]
    found = await cluster_results.stored_result(redis, store, HASH, any_firmware=True)
    assert found is not None and found.data == b"PK good"
    await redis.aclose()
    await store.close()


async def test_a_planted_worker_advert_is_ignored(redis: RedisServer) -> None:
    """A fake worker would announce versions and send their builds to a dead queue."""
    redis = keys.connect(redis.url)
    w = wire.Wire(QUEUE_KEY)
    advert = {"id": "real", "images": {IMAGE_ID: {"controller-057": None}}, "max_builds": 2}
    await redis.set(keys.WORKER_PREFIX + "real", w.seal_advert(advert))
    await redis.set(keys.WORKER_PREFIX + "fake", json.dumps({**advert, "id": "fake"}))
    other = wire.Wire("another-cluster-" + "x" * 32)
    await redis.set(keys.WORKER_PREFIX + "other", other.seal_advert(advert))
    live = await cluster_catalog.live_workers(redis, w)
    assert [a.id for a in live] == ["real"]
    await redis.aclose()


# -- what the settings accept ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "key", "problem"),
    [
        ("redis://127.0.0.1:6379/0", None, "KIISRV_QUEUE_KEY must be set"),
        ("redis://127.0.0.1:6379/0", "short", "at least 32"),
        ("redis://redis:6379/0", QUEUE_KEY, "needs a password"),
        ("redis://10.0.0.5:6379/0", QUEUE_KEY, "needs a password"),
        ("redis://:change-me@redis:6379/0", QUEUE_KEY, "example one"),
        ("http://redis:6379/0", QUEUE_KEY, "redis://"),
    ],
)
def test_a_queue_without_secrets_is_refused_at_start(
    url: str, key: str | None, problem: str
) -> None:
    env = {"KIISRV_QUEUE_URL": url, "KIISRV_STORE_URL": STORE}
    env |= {"KIISRV_QUEUE_KEY": key} if key else {}
    with pytest.raises(ValueError, match=problem):
        Settings.from_env(env)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://localhost:6379/0",
        "redis://[::1]:6379/0",
        "unix:///run/redis.sock",
        "redis://:s3cret-of-mine@redis:6379/0",
        "rediss://:s3cret-of-mine@redis.example:6380/0",
    ],
)
def test_a_queue_with_its_secrets_is_accepted(url: str) -> None:
    s = Settings.from_env(
        {"KIISRV_QUEUE_URL": url, "KIISRV_QUEUE_KEY": QUEUE_KEY, "KIISRV_STORE_URL": STORE}
    )
    assert s.queue_key is not None and QUEUE_KEY not in repr(s)


def test_a_refused_secret_is_not_printed() -> None:
    """Start-up errors go to logs: the message names the variable, not its value."""
    with pytest.raises(ValueError) as refused:
        Settings.from_env(
            {
                "KIISRV_QUEUE_URL": "redis://127.0.0.1/0",
                "KIISRV_QUEUE_KEY": "s3cr",
                "KIISRV_STORE_URL": STORE,
            }
        )
    assert "KIISRV_QUEUE_KEY" in str(refused.value) and "s3cr" not in str(refused.value)


def test_a_queue_without_a_result_store_is_refused_at_start() -> None:
    """Workers leave finished builds in the store for every API server: without one a
    download sent to another API server than the one that waited was a 404 (#15.1)."""
    env = {"KIISRV_QUEUE_URL": "redis://127.0.0.1/0", "KIISRV_QUEUE_KEY": QUEUE_KEY}
    with pytest.raises(ValueError, match="KIISRV_STORE_URL"):
        Settings.from_env(env)
    assert Settings.from_env({**env, "KIISRV_STATS_URL": STORE}).results_url == STORE


def test_a_live_log_is_bound_to_its_build() -> None:
    """A planted live log could tell a user anything (\"flash this other file\")."""
    w = wire.Wire(QUEUE_KEY)
    sealed = w.seal_log(HASH, b"kll: compiling")
    assert w.open_log(HASH, sealed) == b"kll: compiling"
    for forged in (sealed[:64] + b"kll: evil", b"0" * 64 + b"kll: compiling", b""):
        with pytest.raises(wire.Forged):
            w.open_log(HASH, forged)
    with pytest.raises(wire.Forged):
        w.open_log("f" * 32, sealed)  # another build's log

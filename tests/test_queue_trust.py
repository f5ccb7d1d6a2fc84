"""The build queue carries data, never code (#14.1): arq's records are JSON both ways.

A real redis-server (Debian's package): a job planted as a pickle, the way arq stores
jobs by default, must not run when a worker takes it.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiisrv import distributed
from tests.helpers import REDIS_SERVER, RedisServer, skip_or_fail

pytestmark = pytest.mark.anyio


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    if not shutil.which(REDIS_SERVER) and not Path(REDIS_SERVER).is_file():
        skip_or_fail(f"redis-server is not installed ({REDIS_SERVER})")
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


class _Payload:
    """Unpickling this runs a command: what an attacker with Redis access would plant."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


async def test_a_pickled_job_planted_in_redis_is_never_unpickled(
    redis_url: str, tmp_path: Path
) -> None:
    """The job record a worker reads from Redis goes through kiisrv's deserializer, the
    one BuildWorker hands arq: a pickle (arq's default format) is refused as data."""
    from arq.constants import job_key_prefix
    from arq.jobs import DeserializationError, deserialize_job_raw

    marker = tmp_path / "pwned"
    redis = distributed.connect(redis_url)
    planted = pickle.dumps(
        {"t": 1, "f": distributed.BUILD_FUNCTION, "a": [_Payload(marker)], "k": {}, "et": 0}
    )
    await redis.set(job_key_prefix + "planted", planted)
    raw = await redis.get(job_key_prefix + "planted")
    assert redis.job_deserializer is distributed.job_deserializer
    with pytest.raises(DeserializationError):
        deserialize_job_raw(raw, deserializer=redis.job_deserializer)
    assert not marker.exists()
    pickle.loads(raw)  # arq's default would have done this: the payload is a live one
    assert marker.exists()


async def test_jobs_are_enqueued_as_json(redis_url: str) -> None:
    from arq.constants import job_key_prefix

    redis = distributed.connect(redis_url)
    await redis.enqueue_job(distributed.BUILD_FUNCTION, '{"plan": 1}', _job_id="h1")
    stored = await redis.get(job_key_prefix + "h1")
    assert json.loads(stored)["a"] == ['{"plan": 1}']
    with pytest.raises(ValueError):
        distributed.job_deserializer(pickle.dumps({"f": "x"}))

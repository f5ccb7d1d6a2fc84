"""The cluster's Redis: its keys, its records' encoding, its connection.

Builds on many machines go through an arq job queue on Redis behind the ``BuildQueue``
seam (cluster/queue.py: the API side; cluster/worker.py: the build hosts).

Why arq: it is asyncio-native like the server (no thread per waiting request), a job id
is unique while the job is queued or running (``_job_id`` = the build hash gives one
build per layout cluster-wide), and a job whose worker died is picked up again by
another worker, at most ``max_tries`` times. See docs/distributed.md.

Keys (all in the Redis of ``KIISRV_QUEUE_URL``):

- ``kiisrv:queue:<image id>``: arq's queue of the builds of one controller image; a
  worker listens only on the queues of the images it has, so a build goes only to a
  worker that can run it.
- ``kiisrv:worker:<instance>``: a worker's advertisement (its images and versions),
  expiring after ``KIISRV_WORKER_LEASE`` unless renewed. ``/versions`` is their union.
- ``kiisrv:result:<hash>``: the notice of a finished build (its signature), kept
  ``KIISRV_RESULT_TTL`` seconds (a failure: ``KIISRV_FAILED_RESULT_TTL``);
  ``kiisrv:done:<hash>`` announces it (pub/sub). The zip itself is in the result store
  (cluster/results.py), where every API server finds it, not in Redis.
- ``kiisrv:log:<hash>``: a running build's output so far, refreshed by its worker every
  second while it runs (``/builds/<hash>/log`` on any API server).
- arq's own ``arq:in-progress:<hash>`` is renewed by the worker every third of the lease
  and so expires soon after a worker is killed: another worker then takes the build.

Nothing read from Redis is trusted as it is (wire.py): jobs, results and adverts carry
an HMAC with ``KIISRV_QUEUE_KEY``, which Redis never sees, and are validated field by
field; arq's own records are JSON, never pickle. What fails is refused (a job),
deleted (a result) or ignored (an advert), and logged.

An API server keeps a copy of each zip it answered in its own builds folder, with its
job row, so that a cache hit stays a file; what it has not got (a download the load
balancer sent it, the state of a build another server queued) it reads from the store
and Redis. Its Requests rows go to the PostgreSQL all API servers share when
``KIISRV_STATS_URL`` is set (store/requests.py).
"""

from __future__ import annotations

import json
import re
from typing import Any

from arq.connections import ArqRedis

from kiisrv.cluster.wire import Wire
from kiisrv.errors import Unavailable
from kiisrv.settings import Settings

BUILD_FUNCTION = "build"
WORKER_PREFIX = "kiisrv:worker:"


def queue_name(image_id: str) -> str:
    return f"kiisrv:queue:{image_id}"


QUEUE_RE = re.compile(rb"kiisrv:queue:sha256:[0-9a-f]{64}")


def result_key(hash_: str) -> str:
    return f"kiisrv:result:{hash_}"


def done_channel(hash_: str) -> str:
    return f"kiisrv:done:{hash_}"


def log_key(hash_: str) -> str:
    return f"kiisrv:log:{hash_}"


# What of a running build's output goes to Redis each second: its end (the cap of a
# build log is larger, and the whole log comes with the zip).
LIVE_LOG_BYTES = 256 * 1024


def job_serializer(data: dict[str, Any]) -> bytes:
    """arq's job and result records as JSON, never pickle (#14.1).

    arq pickles by default, and unpickling runs code: whoever could write one key in
    Redis ran a command in every worker, which holds the Docker socket. JSON is data
    only; what is not JSON (an exception as a failed result) is stored as its repr.
    """
    return json.dumps(data, separators=(",", ":"), default=repr).encode()


def job_deserializer(raw: bytes) -> dict[str, Any]:
    """A job record, only as JSON: a planted pickle is a record that fails to parse."""
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("not a job record")
    return data


def connect(url: str) -> ArqRedis:
    """A lazy client: nothing is sent before the first command (Redis may be down)."""
    redis: ArqRedis = ArqRedis.from_url(url, socket_connect_timeout=3, socket_timeout=15)
    redis.job_serializer = job_serializer
    redis.job_deserializer = job_deserializer
    return redis


def wire(settings: Settings) -> Wire:
    """The cluster's signatures (wire.py); settings.py makes sure the key is there."""
    if settings.queue_key is None:
        raise ValueError("KIISRV_QUEUE_KEY is needed with KIISRV_QUEUE_URL")
    return Wire(settings.queue_key.get_secret_value())


def unreachable() -> Unavailable:
    """What a request gets while Redis does not answer."""
    return Unavailable(
        "the build queue (Redis) cannot be reached; try again in a moment", retry_after=10
    )

"""``GET /metrics``: the Prometheus text format, every name prefixed ``kiisrv_``.

Counted as they happen: HTTP requests by route and status, cache hits, Engine errors.
Read when scraped, from where the truth is kept: builds by version and result and
their durations (the Builds table, so a restart loses nothing and identical requests
sharing one build count it once), the queue's length and the builds running. One
registry per server object, so tests and several apps in a process stay apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from kiisrv.jobs import JobState
from kiisrv.store.rollups import DURATION_BUCKETS
from kiisrv.store.storage import Storage

if TYPE_CHECKING:
    from kiisrv.core import Kiisrv

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: a warm real build is about 1-3 s, a cold one 5-10 s, the timeout 600 s.
BUCKETS = DURATION_BUCKETS  # kept by the Builds rollup (rollups.py)


class _FromState(Collector):
    def __init__(self, server: Kiisrv) -> None:
        self.server = server
        self.builds: list[tuple[str, str, int]] = []  # version, state, count
        self.histogram: tuple[int, float, list[int]] = (0, 0.0, [])  # count, sum, buckets

    def collect(self) -> Iterator[Metric]:
        queue = self.server.queue
        jobs = [j for j in (queue.current(h) for h in queue.in_use()) if j is not None]
        yield GaugeMetricFamily(
            "kiisrv_queue_length",
            "Distinct builds waiting for a slot.",
            value=sum(1 for j in jobs if j.state is JobState.QUEUED),
        )
        yield GaugeMetricFamily(
            "kiisrv_builds_running",
            "Builds running now.",
            value=sum(1 for j in jobs if j.state is JobState.RUNNING),
        )
        yield CounterMetricFamily(
            "kiisrv_engine_errors",
            "Docker Engine calls that failed (unreachable, timed out or answered an error).",
            value=self.server.engine.errors,
        )
        builds = CounterMetricFamily(
            "kiisrv_builds", "Finished builds by version and result.", labels=["version", "result"]
        )
        for version, state, n in self.builds:
            builds.add_metric([version, state], n)
        yield builds
        count, total, cumulative = self.histogram
        yield HistogramMetricFamily(
            "kiisrv_build_duration_seconds",
            "Time from a build's start to its zip, successful builds.",
            buckets=[(str(b), float(n)) for b, n in zip(BUCKETS, cumulative, strict=False)]
            + [("+Inf", float(count))],
            sum_value=total,
        )


def _read(storage: Storage) -> tuple[list[tuple[str, str, int]], tuple[int, float, list[int]]]:
    """The Builds rollups (rows per day, version and result, one per bucket): counters
    that never go down, also when old Builds rows are pruned (blocking: pages' thread)."""
    builds = storage.query(
        "SELECT version, state, SUM(n) FROM BuildDays"
        " GROUP BY version, state HAVING SUM(n) > 0 ORDER BY version, state"
    )
    count, total = storage.query(
        "SELECT COALESCE(SUM(ms_n), 0), COALESCE(SUM(ms_sum), 0) FROM BuildDays"
        " WHERE state = 'succeeded'"
    )[0]
    under = dict(storage.query("SELECT le_ms, n FROM BuildHistogram"))
    return (
        [(str(v), str(s), int(n)) for v, s, n in builds],
        (int(count), float(total) / 1000, [int(under.get(int(b * 1000), 0)) for b in BUCKETS]),
    )


class Metrics:
    def __init__(self, server: Kiisrv) -> None:
        self.server = server
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "kiisrv_http_requests",
            "HTTP requests by route and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.cache_hits = Counter(
            "kiisrv_cache_hits",
            "Build requests answered with a zip built before.",
            registry=self.registry,
        )
        self._state = _FromState(server)
        self.registry.register(self._state)

    async def render(self) -> bytes:
        """The exposition; the Builds rollups are read on the pages' thread first."""
        storage = self.server.storage
        self._state.builds, self._state.histogram = await storage.read(_read, storage)
        return generate_latest(self.registry)


def router(measures: Metrics) -> APIRouter:
    routes = APIRouter()

    @routes.get("/metrics")
    async def metrics_page() -> Response:
        """Prometheus metrics (names prefixed ``kiisrv_``)."""
        return Response(await measures.render(), media_type=CONTENT_TYPE)

    return routes

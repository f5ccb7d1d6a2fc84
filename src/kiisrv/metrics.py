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

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from kiisrv.jobs import JobState
from kiisrv.storage import Storage

if TYPE_CHECKING:
    from kiisrv.core import Kiisrv

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: a warm real build is about 1-3 s, a cold one 5-10 s, the timeout 600 s.
BUCKETS = (0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0, 60.0, 120.0, 300.0, 600.0)


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
    """Aggregates over the Builds table (blocking: the storage thread runs it)."""
    builds = storage.query(
        "SELECT version, state, COUNT(*) FROM Builds WHERE finished_at IS NOT NULL"
        " GROUP BY version, state ORDER BY version, state"
    )
    under = ", ".join("COALESCE(SUM(duration_ms <= ?), 0)" for _ in BUCKETS)
    row = storage.query(
        f"SELECT COUNT(*), COALESCE(SUM(duration_ms), 0), {under} FROM Builds"
        " WHERE state = 'succeeded' AND duration_ms IS NOT NULL",
        *(b * 1000 for b in BUCKETS),
    )[0]
    return (
        [(str(v), str(s), int(n)) for v, s, n in builds],
        (int(row[0]), float(row[1]) / 1000, [int(n) for n in row[2:]]),
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
        """The exposition; the Builds table is read on the storage thread first."""
        storage = self.server.storage
        self._state.builds, self._state.histogram = await storage.run(_read, storage)
        return generate_latest(self.registry)

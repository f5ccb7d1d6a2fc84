"""`GET /metrics` (Prometheus text format) and `GET /stats.json`, after real builds."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ktype, request

pytestmark = pytest.mark.anyio


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


async def test_metrics_count_builds_hits_requests_and_durations(
    dclient: httpx.AsyncClient,
) -> None:
    before = await scrape(dclient)
    assert before[("kiisrv_queue_length", ())] == 0
    assert before[("kiisrv_builds_running", ())] == 0
    assert before[("kiisrv_engine_errors_total", ())] == 0

    ok = request(ktype())
    assert (await dclient.post("/", json=ok)).status_code == 200
    assert (await dclient.post("/", json=ok)).status_code == 200  # a cache hit
    assert (
        await dclient.post("/", json=request(ktype(custom="# KIISRV_TEST_FAIL")))
    ).status_code == 422
    assert (await dclient.post("/", json={"config": 1})).status_code == 400

    m = await scrape(dclient)
    assert m[("kiisrv_builds_total", (("result", "succeeded"), ("version", "latest")))] == 1
    assert m[("kiisrv_builds_total", (("result", "failed"), ("version", "latest")))] == 1
    assert m[("kiisrv_cache_hits_total", ())] == 1
    assert m[("kiisrv_build_duration_seconds_count", ())] == 1
    assert 0 < m[("kiisrv_build_duration_seconds_sum", ())] < 60
    assert m[("kiisrv_build_duration_seconds_bucket", (("le", "+Inf"),))] == 1
    post = (("method", "POST"), ("route", "build"))
    assert m[("kiisrv_http_requests_total", (*post, ("status", "200")))] == 2
    assert m[("kiisrv_http_requests_total", (*post, ("status", "422")))] == 1
    assert m[("kiisrv_http_requests_total", (*post, ("status", "400")))] == 1
    assert (
        "kiisrv_http_requests_total",
        (("method", "GET"), ("route", "metrics_page"), ("status", "200")),
    ) in m

    figures = (await dclient.get("/stats.json")).json()
    assert figures["builds"] == 3 and figures["unique"] == 2
    assert figures["keyboard"] == [["KType-(other)", 3]]  # no stock KType-Mine.json

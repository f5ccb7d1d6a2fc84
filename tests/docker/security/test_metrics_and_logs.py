"""What a client's requests may leave behind: metrics series and log lines (#14.4, #14.5).

The real app: in process for /metrics, a real ``kiisrv serve`` for its access log.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import httpx
import pytest

from kiisrv.settings import Settings
from tests.helpers import serve

pytestmark = pytest.mark.anyio


async def test_client_sent_methods_cannot_add_metrics_series(client: httpx.AsyncClient) -> None:
    """#14.4: every odd method a client sent became a series of its own, kept forever
    (2,000 random 4 KB methods made /metrics 16 MB); now they are all ``other``."""
    before = (await client.get("/metrics")).text
    for i in range(50):
        await client.request(f"X{i:04d}" + "Z" * 200, "/status")
    after = (await client.get("/metrics")).text
    assert "ZZZZ" not in after
    assert 'method="other"' in after
    assert len(after) - len(before) < 2000


def test_the_access_log_has_no_client_addresses(tmp_path: Path, settings: Settings) -> None:
    """#14.5: uvicorn's access log printed every client's address."""
    log = tmp_path / "serve.log"
    with serve(settings, log) as live:
        urllib.request.urlopen(f"{live.base}/versions", timeout=30).read()
    access = [line for line in log.read_text().splitlines() if "GET /versions" in line]
    assert access and all('"GET /versions HTTP/1.1" 200' in line for line in access)
    assert not any("127.0.0.1" in line for line in access), access

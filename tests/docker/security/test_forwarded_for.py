"""Who the client is behind proxies, for the rate limit (#14.4): a client's own
``X-Forwarded-For`` must not choose its key. The real app with real builds.
"""

from __future__ import annotations

import httpx
import pytest

from kiisrv.settings import Settings
from tests.helpers import app_client, ktype, request

pytestmark = pytest.mark.anyio


async def test_a_forged_forwarded_for_header_does_not_dodge_the_limit(
    docker_settings: Settings,
) -> None:
    """#14.5: behind a proxy with `option forwardfor`, the client's own header came first
    and was the only one read: a new forged address per request was a new budget."""
    settings = docker_settings.replace(rate_limit=1, trusted_proxies="203.0.113.7")
    async with app_client(settings) as client:
        statuses = []
        for i in range(3):
            headers = httpx.Headers(
                [("X-Forwarded-For", f"6.6.6.{i}"), ("X-Forwarded-For", "198.51.100.1")]
            )
            body = request(ktype(custom=f"# forged {i}"))  # a new build each time
            statuses.append((await client.post("/", json=body, headers=headers)).status_code)
    assert statuses == [200, 429, 429]

"""The rate limit and the client behind a proxy (ratelimit.py)."""

from __future__ import annotations

import pytest

from kiisrv.errors import RateLimited
from kiisrv.ratelimit import RateLimiter, client_address, parse_networks
from kiisrv.settings import Settings


def test_at_most_n_new_builds_a_minute_per_client() -> None:
    now = [1000.0]
    limiter = RateLimiter(3, clock=lambda: now[0])
    for _ in range(3):
        limiter.take("a")
    with pytest.raises(RateLimited) as exc:
        limiter.take("a")
    assert exc.value.status == 429 and exc.value.headers() == {"Retry-After": "60"}
    assert "at most 3 a minute" in exc.value.message
    limiter.take("b")  # another client has its own budget
    now[0] += 45
    with pytest.raises(RateLimited) as exc:
        limiter.take("a")
    assert exc.value.retry_after == 15
    now[0] += 15
    limiter.take("a")  # the first three are a minute old
    RateLimiter(0).take("a")  # 0: off


def test_x_forwarded_for_counts_only_behind_a_trusted_proxy() -> None:
    proxies = parse_networks("127.0.0.1, 10.0.0.0/8")
    assert client_address("203.0.113.7", "198.51.100.1", proxies) == "203.0.113.7"
    assert client_address("127.0.0.1", "198.51.100.1", proxies) == "198.51.100.1"
    # A client cannot pick its address: only what the trusted proxies appended counts.
    chain = "6.6.6.6, 198.51.100.1, 10.1.2.3"
    assert client_address("127.0.0.1", chain, proxies) == "198.51.100.1"
    assert client_address("127.0.0.1", None, proxies) == "127.0.0.1"
    assert client_address("127.0.0.1", "198.51.100.1", []) == "127.0.0.1"


def test_a_bad_proxy_setting_refuses_to_start() -> None:
    with pytest.raises(ValueError, match=r"KIISRV_TRUSTED_PROXIES.*not an address or network"):
        Settings.from_env({"KIISRV_TRUSTED_PROXIES": "127.0.0.1, nginx"})
    assert len(Settings.from_env({"KIISRV_TRUSTED_PROXIES": "::1,10.0.0.0/8"}).proxies) == 2

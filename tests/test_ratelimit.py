"""The rate limit and the client behind a proxy (ratelimit.py)."""

from __future__ import annotations

import pytest

from kiisrv.errors import RateLimited
from kiisrv.ratelimit import RateLimiter, client_address, limit_key, parse_networks
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


def test_every_forwarded_for_header_counts_and_the_right_most_untrusted_hop_wins() -> None:
    """#14.5: behind HAProxy's `option forwardfor` the client's own header came first
    and was the only one read, so the client chose its rate-limit key."""
    proxies = parse_networks("127.0.0.1, 10.0.0.0/8")
    # 0 proxies: headers are the client's own words.
    assert client_address("203.0.113.7", ["1.2.3.4"], proxies) == "203.0.113.7"
    # 1 proxy that adds a header of its own after the client's.
    assert client_address("127.0.0.1", ["6.6.6.6", "198.51.100.1"], proxies) == "198.51.100.1"
    # 2 proxies, one header each, the client's forged one first.
    headers = ["6.6.6.6", "198.51.100.1", "10.0.0.5"]
    assert client_address("127.0.0.1", headers, proxies) == "198.51.100.1"
    # Junk the proxy passed on is no key a client can vary: the proxy stands for it.
    assert client_address("127.0.0.1", ["198.51.100.1, junk-1"], proxies) == "127.0.0.1"
    assert client_address("127.0.0.1", ["junk, 10.0.0.5"], proxies) == "10.0.0.5"


def test_ipv4_mapped_peers_are_their_ipv4_address() -> None:
    proxies = parse_networks("127.0.0.1")
    assert client_address("::ffff:127.0.0.1", "198.51.100.1", proxies) == "198.51.100.1"
    assert client_address("::ffff:203.0.113.7", None, proxies) == "203.0.113.7"


def test_ipv6_clients_share_a_budget_per_64() -> None:
    limiter = RateLimiter(2, clock=lambda: 0.0)
    limiter.take("2001:db8:1:2::1")
    limiter.take("2001:db8:1:2:ffff::9")
    with pytest.raises(RateLimited):
        limiter.take("2001:db8:1:2:abcd::7")  # same /64, another /128
    limiter.take("2001:db8:1:3::1")  # the next /64 has its own
    assert limit_key("2001:db8:1:2::1", 48) == "2001:db8:1::/48"
    assert limit_key("::ffff:192.0.2.1") == "192.0.2.1"

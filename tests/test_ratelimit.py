"""The rate limit and the client behind a proxy (ratelimit.py).

The shared window of a cluster is tested against a real redis-server (Debian's package).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kiisrv.assembly import limiter as make_limiter
from kiisrv.build.ratelimit import RateLimiter
from kiisrv.clients import client_address, limit_key, parse_networks
from kiisrv.cluster import keys
from kiisrv.cluster.ratelimit import KEY_PREFIX, RedisRateLimiter
from kiisrv.errors import RateLimited
from kiisrv.settings import Settings
from tests.helpers import RedisServer, redis_contents

pytestmark = pytest.mark.anyio

KEY = bytes(range(32))  # the client key API servers share (<data>/client-key)


async def test_at_most_n_new_builds_a_minute_per_client() -> None:
    now = [1000.0]
    limiter = RateLimiter(3, clock=lambda: now[0])
    for _ in range(3):
        await limiter.take("a")
    with pytest.raises(RateLimited) as exc:
        await limiter.take("a")
    assert exc.value.status == 429 and exc.value.headers() == {"Retry-After": "60"}
    assert "at most 3 a minute" in exc.value.message
    await limiter.take("b")  # another client has its own budget
    now[0] += 45
    with pytest.raises(RateLimited) as exc:
        await limiter.take("a")
    assert exc.value.retry_after == 15
    now[0] += 15
    await limiter.take("a")  # the first three are a minute old
    await RateLimiter(0).take("a")  # 0: off


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


async def test_ipv6_clients_share_a_budget_per_64() -> None:
    limiter = RateLimiter(2, clock=lambda: 0.0)
    await limiter.take("2001:db8:1:2::1")
    await limiter.take("2001:db8:1:2:ffff::9")
    with pytest.raises(RateLimited):
        await limiter.take("2001:db8:1:2:abcd::7")  # same /64, another /128
    await limiter.take("2001:db8:1:3::1")  # the next /64 has its own
    assert limit_key("2001:db8:1:2::1", 48) == "2001:db8:1::/48"
    assert limit_key("::ffff:192.0.2.1") == "192.0.2.1"


# -- the window in Redis, shared by every API server ---------------------------------


@pytest.fixture
async def connections(redis: RedisServer) -> AsyncIterator[list[keys.ArqRedis]]:
    """Two connections, as two API servers have: the one the app makes of the queue URL."""
    redis = [keys.connect(redis.url) for _ in range(2)]
    yield redis
    for r in redis:
        await r.aclose()


async def test_api_servers_on_one_redis_share_one_window(
    connections: list[keys.ArqRedis],
) -> None:
    """Attack: new builds spread over N API servers got N x the limit. Refusal: the
    (limit+1)th new build in a minute, whichever server takes it, is 429 + Retry-After."""
    servers = [RedisRateLimiter(r, 3, KEY) for r in connections]
    for i in range(3):
        await servers[i % 2].take("198.51.100.1")
    for limiter in servers:
        with pytest.raises(RateLimited) as exc:
            await limiter.take("198.51.100.1")
        assert exc.value.status == 429 and exc.value.retry_after == 60
        assert "at most 3 a minute" in exc.value.message
    await servers[0].take("198.51.100.2")  # another client has its own budget
    await servers[0].take("2001:db8:1:2::1")
    await servers[1].take("2001:db8:1:2::2")
    await servers[0].take("2001:db8:1:2::3")
    with pytest.raises(RateLimited):
        await servers[1].take("2001:db8:1:2:abcd::7")  # same /64 on the other server
    await RedisRateLimiter(connections[0], 0, KEY).take("198.51.100.1")  # 0: off


async def test_the_window_slides_and_its_keys_expire(
    connections: list[keys.ArqRedis],
) -> None:
    """Attack: one request per address from many addresses fills Redis. Refusal: a
    client's key lives one window after its last new build, then is gone by itself."""
    limiter = RedisRateLimiter(connections[0], 2, KEY, window=1.0)
    await limiter.take("198.51.100.1")
    await limiter.take("198.51.100.1")
    with pytest.raises(RateLimited) as exc:
        await limiter.take("198.51.100.1")
    assert exc.value.retry_after == 1
    keys = [k async for k in connections[0].scan_iter(f"{KEY_PREFIX}*")]
    windows = [k for k in keys if not k.endswith(b"key-id")]
    assert len(windows) == 1 and 0 < await connections[0].pttl(windows[0]) <= 1000
    await asyncio.sleep(1.1)
    await limiter.take("198.51.100.1")  # the first two fell out of the window
    await asyncio.sleep(1.1)
    assert await connections[0].exists(windows[0]) == 0


async def test_redis_holds_pseudonyms_not_client_addresses(
    connections: list[keys.ArqRedis], redis: RedisServer
) -> None:
    """Attack: whoever reads Redis (a worker host, a backup) learns who builds what.
    Refusal: keys and values hold an HMAC of the client under the servers' client key,
    never an address or an IPv6 network."""
    limiter = RedisRateLimiter(connections[0], 5, KEY)
    await limiter.take("198.51.100.77")
    await limiter.take("2001:db8:99:1::5")
    stored = await redis_contents(redis.url)
    for raw in ("198.51.100.77", "2001:db8:99:1", "2001:db8:99:1::/64"):
        assert raw.encode() not in stored, stored
    other_key = RedisRateLimiter(connections[0], 5, bytes(32))
    assert other_key.redis_key("198.51.100.77") != limiter.redis_key("198.51.100.77")


async def test_a_redis_outage_lets_builds_through_with_a_log_line(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A Redis outage is no 500 (and no limit): every build needs Redis to be queued,
    so the queue answers 503 anyway; the limiter says why it did not count."""
    dead = RedisServer(tmp_path / "dead")  # a free port nothing listens on
    redis = keys.connect(dead.url)
    try:
        with caplog.at_level(logging.WARNING, logger="kiisrv"):
            await RedisRateLimiter(redis, 1, KEY).take("198.51.100.1")
            await RedisRateLimiter(redis, 1, KEY).take("198.51.100.1")
    finally:
        await redis.aclose()
    assert "rate limit not checked" in caplog.text


async def test_api_servers_with_different_client_keys_are_told(
    connections: list[keys.ArqRedis], caplog: pytest.LogCaptureFixture
) -> None:
    """Misconfiguration: each API server made its own <data>/client-key, so one client
    is a different pseudonym, and budget, per server. Refusal: the server says so."""
    await RedisRateLimiter(connections[0], 5, KEY).take("198.51.100.1")
    with caplog.at_level(logging.WARNING, logger="kiisrv"):
        await RedisRateLimiter(connections[1], 5, KEY).take("198.51.100.1")
        assert "client-key" not in caplog.text
        await RedisRateLimiter(connections[1], 5, bytes(32)).take("198.51.100.1")
    assert "client-key" in caplog.text


async def test_the_queue_url_puts_the_window_in_redis(
    settings: Settings, connections: list[keys.ArqRedis]
) -> None:
    assert isinstance(make_limiter(settings.replace(rate_limit=3), KEY, None), RateLimiter)
    shared = make_limiter(settings.replace(rate_limit=3), KEY, connections[0])
    assert isinstance(shared, RedisRateLimiter) and shared.per_minute == 3

"""The connection rules of ``kiisrv serve``, without a socket: who may connect, and
when a body is too slow. The real server over a socket: tests/docker/test_hostile.py."""

from __future__ import annotations

import ipaddress

from kiisrv.web.httpguard import BodyClock, ConnectionCount, Limits, raw_response

LIMITS = Limits(
    header_timeout=10,
    body_timeout=10,
    body_min_rate=1000,
    max_connections=5,
    max_client_connections=2,
    trusted=[ipaddress.ip_network("10.0.0.0/8")],
)


def test_a_client_gets_its_share_of_connections_and_no_more() -> None:
    count = ConnectionCount(LIMITS)
    a, b = count.key("192.0.2.1"), count.key("192.0.2.2")
    assert count.admit(a) is None and count.admit(a) is None
    assert count.admit(a) == 429
    assert count.admit(b) is None
    count.release(a)
    assert count.admit(a) is None


def test_an_ipv6_64_is_one_client_and_a_trusted_proxy_none() -> None:
    count = ConnectionCount(LIMITS)
    one, other = count.key("2001:db8::1"), count.key("2001:db8::ffff")
    assert one == other
    assert count.key("::ffff:192.0.2.1") == count.key("192.0.2.1")
    assert count.key("10.1.2.3") is None  # the load balancer speaks for many clients
    assert count.key("") is None


def test_the_server_has_a_ceiling_whoever_asks() -> None:
    count = ConnectionCount(LIMITS)
    for i in range(5):
        assert count.admit(count.key(f"192.0.2.{i}")) is None
    assert count.admit(None) == 503
    assert count.admit(count.key("192.0.2.99")) == 503
    count.release(count.key("192.0.2.0"))
    assert count.admit(None) is None
    assert dict(count.per_client) == {
        k: 1 for k in (count.key(f"192.0.2.{i}") for i in (1, 2, 3, 4))
    }


def test_a_stalled_body_is_cut_after_the_body_timeout() -> None:
    clock = BodyClock(LIMITS, now=0.0)
    clock.data(10_000_000, now=0.5)  # all but a few bytes, at once
    assert clock.stalled(now=10.4) is None
    assert clock.stalled(now=10.6) == "no body byte for 10 s"


def test_a_trickled_body_is_cut_once_its_average_is_too_low() -> None:
    clock = BodyClock(LIMITS, now=0.0)
    for t in range(1, 30):
        clock.data(100, now=float(t))  # 100 bytes/s: never idle
        if t <= 10:
            assert clock.stalled(now=float(t)) is None
    assert "slower than 1000 bytes/s" in (clock.stalled(now=29.0) or "")


def test_a_fast_body_is_never_cut_and_time_the_server_did_not_read_is_excused() -> None:
    clock = BodyClock(LIMITS, now=0.0)
    for t in range(1, 100):
        clock.data(50_000, now=float(t))
        assert clock.stalled(now=float(t)) is None
    slow = BodyClock(LIMITS, now=0.0)
    slow.data(5_000, now=1.0)
    slow.excuse(20.0, now=21.0)  # the server paused reading for 20 s
    assert slow.stalled(now=21.5) is None


def test_a_raw_answer_is_json_and_closes() -> None:
    raw = raw_response(408, "too slow", {"retry-after": "10"})
    head, body = raw.split(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"connection: close" in head and b"retry-after: 10" in head
    assert body == b'{"error": "too slow"}'
    assert f"content-length: {len(body)}".encode() in head

"""Per-client ccaches, without Docker: who gets which volume, and which volumes go.

A client's builds write a ccache of their own, so its repeated edits hit each other's
objects while no other client's build ever reads them. The volume is named after a
keyed hash of the client's rate-limit identity (an IPv4 address, an IPv6 /64): a
``docker volume ls`` must not list who built.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kiisrv import ccache, privacy
from kiisrv.retention import stale_volumes
from kiisrv.settings import Settings

KEY = bytes(range(32))
OTHER_KEY = bytes(32)
DAY = 86400.0


def test_a_clients_volume_is_named_by_a_keyed_hash_never_its_address() -> None:
    s = Settings(ccache_volume="kc")
    a = ccache.client_of(KEY, "203.0.113.7")
    assert a is not None and re.fullmatch(r"[0-9a-f]{20}", a)
    name = ccache.client_volume(s, a)
    assert name == f"kc-c{a}" and ccache.is_client_volume(s, name)
    assert "203.0.113.7" not in name and "203-0-113-7" not in name
    # Not the statistics' pseudonym either: a volume name cannot be joined to a Requests row.
    assert privacy.pseudonym(KEY, "203.0.113.7") != a
    assert ccache.client_of(KEY, "203.0.113.8") != a
    assert ccache.client_of(OTHER_KEY, "203.0.113.7") != a  # keyed: no table of addresses
    assert ccache.client_of(KEY, "") is None  # no client: no cache of its own


def test_one_client_is_what_the_rate_limit_counts_as_one() -> None:
    """An IPv6 customer holds a /64: per address, one user had 2^64 caches (and volumes)."""
    one = ccache.client_of(KEY, "2001:db8:1:2::1")
    assert one == ccache.client_of(KEY, "2001:db8:1:2:ffff::9")
    assert one != ccache.client_of(KEY, "2001:db8:1:3::1")
    assert ccache.client_of(KEY, "::ffff:203.0.113.7") == ccache.client_of(KEY, "203.0.113.7")
    wide = ccache.client_of(KEY, "2001:db8:1:2::1", ipv6_prefix=48)
    assert wide == ccache.client_of(KEY, "2001:db8:1:3::1", ipv6_prefix=48)


@pytest.mark.parametrize(
    "name",
    [
        "kc",  # the shared one
        "kc-c",
        "kc-c0123456789abcdef012",  # too long
        "kc-c0123456789abcdef01",  # too short
        "kc-c0123456789ABCDEF0123",
        "kc-c../../etc/passwd0123",
        "xkc-c0123456789abcdef0123",
        "redis-data",
    ],
)
def test_only_the_prefix_and_a_pseudonym_is_a_client_volume(name: str) -> None:
    assert not ccache.is_client_volume(Settings(ccache_volume="kc"), name)


def test_a_build_records_when_its_client_volume_was_last_used(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, ccache_volume="kc")
    client = "0123456789abcdef0123"
    ccache.record_use(s, client)
    uses = ccache.last_uses(s)
    assert set(uses) == {f"kc-c{client}"}
    assert ccache.last_uses(Settings(data_dir=tmp_path / "none", ccache_volume="kc")) == {}
    (ccache.uses_dir(s) / "not-a-volume").write_text("")
    assert set(ccache.last_uses(s)) == {f"kc-c{client}"}


def test_volumes_unused_for_the_set_days_go_then_the_oldest_past_the_cap() -> None:
    now = 100 * DAY
    used = {"old": now - 15 * DAY, "recent": now - 1 * DAY, "older": now - 30 * DAY}
    assert sorted(stale_volumes(used, now=now, max_age=14 * DAY, max_count=10)) == [
        "old",
        "older",
    ]
    used = {f"v{i}": now - i for i in range(5)}  # v0 is the newest
    assert stale_volumes(used, now=now, max_age=14 * DAY, max_count=3) == ["v4", "v3"]
    assert stale_volumes(used, now=now, max_age=14 * DAY, max_count=0) == [
        "v4",
        "v3",
        "v2",
        "v1",
        "v0",
    ]

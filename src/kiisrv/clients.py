"""Who a client is: its address behind trusted proxies, and what one budget belongs to.

Behind nginx or Caddy every request comes from the proxy; its ``X-Forwarded-For``
names the client, but only a proxy listed in ``KIISRV_TRUSTED_PROXIES`` is believed,
or anyone could pick their own address per request. The rate limit, the fair slots
and the per-client connection cap count by the same identity (``limit_key``): an IPv4
address or the IPv6 network around one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from kiisrv import privacy

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> list[Network]:
    """``10.0.0.1, 172.16.0.0/12, ::1`` -> networks; ValueError names a bad entry."""
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"not an address or network: {item!r}") from None
    return networks


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address, IPv4-mapped IPv6 (``::ffff:192.0.2.1``) as the IPv4 it is."""
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_trusted(address: str, networks: Sequence[Network]) -> bool:
    ip = _address(address)
    return ip is not None and any(ip in n for n in networks)


def client_address(
    peer: str, forwarded_for: str | Sequence[str] | None, trusted: Sequence[Network]
) -> str:
    """The client: the peer, or behind trusted proxies the right-most hop they did not add.

    Every ``X-Forwarded-For`` header counts, in order (a client's own header comes
    first and a proxy's ``option forwardfor`` adds another: reading only the first let
    the client choose its key). Walking from the right, each trusted proxy vouches for
    the hop to its left; the first hop that is not a trusted proxy is the client. A
    hop that is no address (``unknown``, junk) cannot be a key a client picks at will:
    the proxy that passed it on stands for it.
    """
    ip = _address(peer)
    peer = str(ip) if ip is not None else peer
    if not forwarded_for or not is_trusted(peer, trusted):
        return peer
    values = [forwarded_for] if isinstance(forwarded_for, str) else list(forwarded_for)
    hops = [h.strip() for value in values for h in value.split(",") if h.strip()]
    last = peer
    for hop in reversed(hops):
        ip = _address(hop)
        if ip is None:
            return last
        if not is_trusted(hop, trusted):
            return str(ip)
        last = str(ip)
    return last


def limit_key(address: str, ipv6_prefix: int = 64) -> str:
    """What one budget belongs to: an IPv4 address, or the IPv6 network around one.

    An IPv6 customer holds at least a /64: per /128, one user had 2^64 budgets.
    """
    ip = _address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{ip}/{ipv6_prefix}", strict=False))
    return str(ip) if ip is not None else address


def client_of(key: bytes, address: str, ipv6_prefix: int = 64) -> str | None:
    """Whose turns a request takes: a pseudonym of its rate-limit identity, under a
    purpose of its own (never joinable to a statistics row); None without an address."""
    if not address:
        return None
    return privacy.pseudonym(key, f"turns {limit_key(address, ipv6_prefix)}")

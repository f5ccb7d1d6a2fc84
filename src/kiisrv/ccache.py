"""Whose ccache a build writes: one volume per client, named by a pseudonym.

The shared volume (``KIISRV_CCACHE_VOLUME``) is written by stock-layout builds only
(``Plan.seeds_cache``): an object a request left there would be linked into other
users' firmware. Yet a user editing a layout key by key changes ``kll_defs.h`` away
from every stock layout's, so with the shared volume alone each edit recompiled
everything. So each client gets a writable ccache of its own, which its later edits
hit and no other client's build mounts.

A client is what the rate limit counts as one (an IPv4 address, an IPv6 /64), kept
only as a keyed hash (``privacy.py``), under a purpose of its own so a volume name
cannot be joined to a statistics row. Clients behind one NAT share one volume.

Each build touches ``<data>/ccache-clients/<volume>``; the pruner
(``retention.prune_ccache_volumes``) removes volumes unused for
``KIISRV_CCACHE_CLIENT_DAYS`` and the oldest past ``KIISRV_CCACHE_CLIENTS``.
"""

from __future__ import annotations

import re
from pathlib import Path

from kiisrv import privacy
from kiisrv.ratelimit import limit_key
from kiisrv.settings import Settings

# What crosses Redis in a plan and ends a volume name: a pseudonym, nothing else.
CLIENT_PATTERN = r"^[0-9a-f]{20}$"
_CLIENT = re.compile(CLIENT_PATTERN)
USES_DIR = "ccache-clients"


def client_of(key: bytes, address: str, ipv6_prefix: int = 64) -> str | None:
    """The pseudonym of a client's ccache; None without an address (no cache of its own)."""
    if not address:
        return None
    return privacy.pseudonym(key, f"ccache {limit_key(address, ipv6_prefix)}")


def client_volume_prefix(settings: Settings) -> str:
    return f"{settings.ccache_volume}-c"


def client_volume(settings: Settings, client: str) -> str:
    if not _CLIENT.match(client):
        raise ValueError(f"not a client pseudonym: {client!r}")
    return client_volume_prefix(settings) + client


def is_client_volume(settings: Settings, name: str) -> bool:
    return is_client_volume_name(client_volume_prefix(settings), name)


def is_client_volume_name(prefix: str, name: str) -> bool:
    """``name`` is ``prefix`` and a pseudonym: the socket proxy's rule as well."""
    return name.startswith(prefix) and bool(_CLIENT.match(name[len(prefix) :]))


def uses_dir(settings: Settings) -> Path:
    return settings.data_dir / USES_DIR


def record_use(settings: Settings, client: str) -> None:
    """Marks the client's volume as used now (blocking: call it in a worker thread)."""
    folder = uses_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / client_volume(settings, client)).touch()


def last_uses(settings: Settings) -> dict[str, float]:
    """Client volume -> when a build last used it (epoch seconds), as recorded here."""
    folder = uses_dir(settings)
    if not folder.is_dir():
        return {}
    found: dict[str, float] = {}
    for path in folder.iterdir():
        if is_client_volume(settings, path.name) and path.is_file():
            found[path.name] = path.stat().st_mtime
    return found


def forget(settings: Settings, volume: str) -> None:
    if is_client_volume(settings, volume):
        (uses_dir(settings) / volume).unlink(missing_ok=True)

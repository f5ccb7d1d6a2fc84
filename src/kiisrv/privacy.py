"""What is kept of a client: a keyed hash of its address, never the address itself.

``/stats`` counts unique users, so something stable per client must be kept; a keyed
hash (HMAC-SHA256 under a random key made on first start and kept in the data folder,
readable by the server alone) is stable, and without the key cannot be turned back into
an address, even by trying all 2^32 IPv4 addresses. Deleting the key file makes every
earlier row unlinkable to later ones. Rows older than ``KIISRV_REQUESTS_RETENTION_DAYS``
are deleted by the pruner.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
from pathlib import Path

KEY_FILE = "client-key"
_LENGTH = 20  # hex characters: 80 bits, far from any collision among real users


def load_key(data_dir: Path) -> bytes:
    """The key, made on first start (exclusively, so two processes agree on one)."""
    path = data_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


def pseudonym(key: bytes, address: str) -> str:
    """The keyed hash kept for a client address ('' stays '')."""
    if not address:
        return ""
    return hmac.new(key, address.encode(), hashlib.sha256).hexdigest()[:_LENGTH]


def is_address(value: str) -> bool:
    """A raw address, as databases written before this change hold them."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True

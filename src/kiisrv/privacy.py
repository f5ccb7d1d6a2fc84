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


KEY_BYTES = 32


def load_key(data_dir: Path) -> bytes:
    """The key of a data folder (``<data_dir>/client-key``): ``load_key_file``."""
    return load_key_file(data_dir / KEY_FILE)


def load_key_file(path: Path) -> bytes:
    """The key in ``path``, made on first start; every process that starts at once gets
    the same, also API servers sharing one file (``KIISRV_CLIENT_KEY_FILE``).

    The file appears whole or not at all: the key is written to a file of its own and
    hard-linked into place, which fails if another process got there first (a plain
    create-then-write let a concurrent start, or a crash in between, read an empty key
    and keep unkeyed hashes of addresses). A key file that is not a whole key (left by
    such a crash) is replaced: rows made under it are no more linkable than before.
    """
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        key = _read_key(path)
        if key is not None:
            return key
        tmp = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(KEY_BYTES))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            if path.exists() and _read_key(path) is None:
                os.replace(tmp, path)  # a broken key file: ours replaces it
            else:
                os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: read theirs
        finally:
            tmp.unlink(missing_ok=True)
    key = _read_key(path)
    if key is None:
        raise OSError(f"{path}: could not make a client key")
    return key


def _read_key(path: Path) -> bytes | None:
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return key if len(key) == KEY_BYTES else None


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

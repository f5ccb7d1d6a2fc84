"""The deployment's signature on what it built: Ed25519, by the ``cryptography`` library.

Every zip of a successful build carries a manifest of what went into its firmware
(recipe/manifest.py) and this deployment's signature over it, so that anyone holding
the public key (``GET /signing-key``) can tell the zip is the deployment's and
unchanged, and then rebuild it from nothing to see the same bytes (``kiisrv verify``).

The key is 32 random bytes (an Ed25519 seed), made on first start in
``<data>/signing-key`` the way the client key is (privacy.py: written whole or not at
all, readable by the server alone), or read from ``KIISRV_SIGNING_KEY_FILE``: the
workers of a cluster sign what they build, so they share the API servers' file.
Rotating it: stop the servers, move the file away, start them (docs/deployment.md);
zips signed before verify with the old public key, which whoever kept it can still use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from kiisrv import privacy

KEY_FILE = "signing-key"
ALGORITHM = "ed25519"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def key_id(public: bytes) -> str:
    """A short name of a public key, for logs and for telling keys apart."""
    return hashlib.sha256(public).hexdigest()[:16]


@dataclass(frozen=True)
class Signer:
    _key: Ed25519PrivateKey

    @classmethod
    def from_file(cls, path: Path) -> Signer:
        return cls(Ed25519PrivateKey.from_private_bytes(privacy.load_key_file(path)))

    @property
    def public(self) -> bytes:
        return self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def public_json(self) -> dict[str, str]:
        """What ``GET /signing-key`` answers: the raw public key, base64."""
        return {"algorithm": ALGORITHM, "key": _b64(self.public), "id": key_id(self.public)}

    def sign(self, data: bytes) -> dict[str, str]:
        """The signature file of ``data`` (``manifest.sig`` in a zip)."""
        return {
            "algorithm": ALGORITHM,
            "key": key_id(self.public),
            "signature": _b64(self._key.sign(data)),
        }


class BadKey(ValueError):
    pass


def public_key(text: str | bytes) -> bytes:
    """A public key as ``GET /signing-key`` gives it (its JSON, or the base64 alone)."""
    raw = text.decode() if isinstance(text, bytes) else text
    raw = raw.strip()
    if raw.startswith("{"):
        import json

        try:
            raw = str(json.loads(raw)["key"])
        except (ValueError, KeyError, TypeError):
            raise BadKey("not a kiisrv signing key") from None
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise BadKey("not a base64 public key") from None
    if len(key) != 32:
        raise BadKey("not an Ed25519 public key (32 bytes)")
    return key


def verify(public: bytes, data: bytes, signature: dict[str, object]) -> bool:
    """Whether ``signature`` (a ``manifest.sig``) is ``public``'s over ``data``."""
    try:
        sig = base64.b64decode(str(signature.get("signature", "")), validate=True)
        Ed25519PublicKey.from_public_bytes(public).verify(sig, data)
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return signature.get("algorithm") == ALGORITHM

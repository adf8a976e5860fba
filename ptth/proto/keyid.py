"""A key identity's name: the backend's public key, as a DNS label (ARCHITECTURE.md,
"Identities and claims"); no I/O.

The label is the first 26 characters of the lowercase base32 (RFC 4648 §6) of the SHA-256 of the
key's DER SubjectPublicKeyInfo: 130 bits, so nobody can make another key with the same name, and
only ``a-z2-7``, so it is a valid host label (RFC 1035 §2.3.1).
"""

from __future__ import annotations

import base64

__all__ = ["LABEL_LENGTH", "key_label"]

LABEL_LENGTH = 26


def key_label(fingerprint: bytes) -> str:
    """The host label of a key whose SPKI SHA-256 is ``fingerprint`` (32 bytes)."""
    if len(fingerprint) != 32:
        raise ValueError("a key fingerprint is the 32-byte SHA-256 of its SubjectPublicKeyInfo")
    return base64.b32encode(fingerprint).decode("ascii").lower()[:LABEL_LENGTH]

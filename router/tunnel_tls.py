"""TLS on the tunnel port (ARCHITECTURE.md, "Tunnel-side security").

A backend may present a client certificate of its own making (self-signed is fine): the router
never checks it against a CA, it only learns the SHA-256 of its public key, which *is* the
backend's key identity.
"""

from __future__ import annotations

from anyio import TypedAttributeSet, typed_attribute

__all__ = ["TunnelTLSAttribute"]


class TunnelTLSAttribute(TypedAttributeSet):
    """Read with ``stream.extra(TunnelTLSAttribute.client_key_sha256, None)``."""

    #: SHA-256 of the DER SubjectPublicKeyInfo of the client certificate, when one was presented.
    client_key_sha256: bytes = typed_attribute()

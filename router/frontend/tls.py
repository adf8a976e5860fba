"""The front end's TLS context: ALPN ``h2`` and ``http/1.1``, reloadable (SIGHUP).

A reload builds a new context from the files; connections already open keep the one they
started with, new ones get the new one. A reload that fails (a missing or mismatched file)
keeps the old context and says why.
"""

from __future__ import annotations

import logging
import ssl

from ptth.errors import ConfigError

__all__ = ["TLSFiles"]

log = logging.getLogger("router.frontend")


def _context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2", "http/1.1"])
    # RFC 9113 §9.2: TLS 1.2 for HTTP/2 without renegotiation or compression.
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS certificate {cert} / key {key}: {exc}") from None
    return context


class TLSFiles:
    """A certificate and key on disk and the context made from them."""

    def __init__(self, cert: str, key: str) -> None:
        self.cert = cert
        self.key = key
        self.context = _context(cert, key)

    def reload(self) -> bool:
        try:
            self.context = _context(self.cert, self.key)
        except ConfigError as exc:
            log.warning("TLS reload failed, keeping the current certificate: %s", exc)
            return False
        log.info("TLS certificate reloaded from %s", self.cert)
        return True

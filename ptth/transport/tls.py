"""Client TLS for ``tls://`` and ``wss://`` (ARCHITECTURE.md, "Tunnel TLS and key identities").

The router's certificate and name are verified against the system trust store, or a
``ca_file``, or a caller's own ``ssl.SSLContext``; a key identity's certificate is presented
when one is given. A failed TLS handshake is one readable :class:`TunnelTLSError`, which the
helper retries like any connection error.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass

import anyio
import anyio.abc
from anyio.streams.tls import TLSStream

from ..errors import ConfigError, TunnelTLSError

__all__ = ["ClientTLS", "client_tls", "tls_handshake"]


@dataclass(frozen=True)
class ClientTLS:
    """The context every ``tls://`` dial uses, and what it trusts, for error messages."""

    context: ssl.SSLContext
    trust: str


def client_tls(
    *,
    ca_file: str | os.PathLike[str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    client_cert: str | os.PathLike[str] | None = None,
    client_key: str | os.PathLike[str] | None = None,
) -> ClientTLS:
    """One context for all ``tls://`` routers: built once, since loading a trust store is slow.

    ``ssl_context`` is used as it is (it then carries its own trust and client certificate).
    """
    if ssl_context is not None:
        if ca_file is not None or client_cert is not None:
            raise ConfigError(
                "give ssl_context alone: it carries its own CA and client certificate"
            )
        return ClientTLS(ssl_context, "the given ssl_context")
    if client_key is not None and client_cert is None:
        raise ConfigError("client_key needs client_cert")
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load CA file {os.fspath(ca_file or '')}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_cert is not None:
        try:
            context.load_cert_chain(client_cert, client_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load client certificate {os.fspath(client_cert)}"
                f"{' / key ' + os.fspath(client_key) if client_key else ''}: {exc}"
            ) from None
    trust = f"CA file {os.fspath(ca_file)}" if ca_file is not None else "the system trust store"
    return ClientTLS(context, trust)


async def tls_handshake(sock: anyio.abc.ByteStream, hostname: str, tls: ClientTLS) -> TLSStream:
    """TLS over ``sock`` to ``hostname``, verified as ``tls`` says; TunnelTLSError if it fails."""
    try:
        # Not "standard compatible": closing skips waiting for the router's close_notify, and
        # an end without it is an end (HTTP/2 frames its own end, RFC 9113 §9.2.1).
        return await TLSStream.wrap(
            sock,
            hostname=hostname,
            ssl_context=tls.context,
            standard_compatible=False,
        )
    except ssl.SSLCertVerificationError as exc:
        reason = (exc.verify_message or exc.reason or str(exc)).rstrip(".")
        raise TunnelTLSError(
            f"TLS certificate not accepted: {reason} (checked against {tls.trust})"
        ) from None
    except ssl.SSLError as exc:
        reason = (exc.reason or str(exc)).lower().replace("_", " ")
        raise TunnelTLSError(
            f"TLS handshake failed: {reason} (does that port speak TLS? a plain one is tcp://)"
        ) from None
    except (anyio.BrokenResourceError, anyio.EndOfStream, OSError):
        raise TunnelTLSError("closed the connection during the TLS handshake") from None

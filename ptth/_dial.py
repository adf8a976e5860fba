"""Dialling a router: a :class:`RouterAddress` in, a byte stream out (ARCHITECTURE.md,
"Transports").

The dialler is picked by the address's transport (its scheme's row in
``ptth.proto.address``); each lives in ``ptth.transport`` and yields the byte stream the
handshake and HTTP/2 then run over, unchanged. A new transport is one entry in
:data:`DIALLERS`. ``tls://`` and ``wss://`` verify the router as ``ptth.transport.tls`` says.
"""

from __future__ import annotations

import ipaddress
import math
from typing import Protocol

import anyio
import anyio.abc

from .errors import ConfigError
from .httpsock._router import dial_router
from .proto.address import RouterAddress
from .proto.connect import ProxyURL
from .transport import tcp, websocket
from .transport.tls import ClientTLS, client_tls

__all__ = ["DIALLERS", "ClientTLS", "Dialler", "client_tls", "dial", "plaintext_token_warning"]


class Dialler(Protocol):
    """Connect to a router and return the tunnel's byte stream; closes what it opened on every
    way out (cancellation included). OSError, TunnelTLSError, ForwardProxyError or
    HandshakeError when it fails. ``proxy`` and ``ip`` go to ``ptth.transport.proxy.open_tcp``
    (the TCP connection under every transport)."""

    async def __call__(
        self,
        address: RouterAddress,
        tls: ClientTLS | None,
        *,
        proxy: ProxyURL | None = None,
        ip: str | None = None,
        token: str | None = None,
    ) -> anyio.abc.ByteStream: ...


# By RouterAddress.transport.
DIALLERS: dict[str, Dialler] = {
    "tcp": tcp.dial,
    "ws": websocket.dial,
    "httpsock": dial_router,
}


async def dial(
    address: RouterAddress,
    tls: ClientTLS | None = None,
    *,
    timeout: float = math.inf,
    proxy: ProxyURL | None = None,
    ip: str | None = None,
    token: str | None = None,
) -> anyio.abc.ByteStream:
    """Connect to ``address`` within ``timeout`` seconds (TLS and any transport handshake
    included), with ``tls`` for ``tls://``/``wss://`` or the system defaults. OSError if the
    TCP connection fails, TimeoutError, TunnelTLSError if the TLS handshake does, HandshakeError
    (HandshakeRefused) if the transport's own handshake does. ``proxy``: through that HTTP
    proxy's CONNECT (ForwardProxyError when it fails); ``ip``: dial this address of the name;
    ``token``: the tunnel's, for a transport that binds its session to it (httpsock).

    Each dialler closes its socket on every way out, so a cancellation delivered as the
    connection completes cannot leak it.
    """
    dialler = DIALLERS.get(address.transport)
    if dialler is None:
        raise ConfigError(f"no dialler for {address.scheme}:// in this helper")
    with anyio.fail_after(timeout):
        return await dialler(address, tls, proxy=proxy, ip=ip, token=token)


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plaintext_token_warning(address: RouterAddress, token: str | None) -> str | None:
    """Why this helper's token would cross the network in clear text, or None."""
    if token is None or address.tls or _loopback(address.host):
        return None
    if address.transport == "ws":
        return (
            f"the token travels in plain text to {address}: dial "
            f"wss://{address.authority}{address.path} (the router needs --tls-cert and --tls-key)"
        )
    return (
        f"the token travels in plain text to {address}: dial tls://{address.authority} "
        "(the router needs --tunnel-tls-cert and --tunnel-tls-key, or --tls-cert and --tls-key "
        "for its front end's port)"
    )

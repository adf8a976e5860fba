"""``tcp://`` and ``tls://``: the tunnel on a TCP connection, TLS when the scheme says.

:func:`connect` is also the bottom layer of the other transports (``ws://`` runs its WebSocket
over it), so whatever reaches the router's TCP port (a CONNECT proxy) plugs in here once.
"""

from __future__ import annotations

import anyio
import anyio.abc

from ..proto.address import RouterAddress
from ..proto.connect import ProxyURL
from .proxy import open_tcp
from .tls import ClientTLS, client_tls, tls_handshake

__all__ = ["connect", "dial", "tls_for"]


async def connect(
    host: str,
    port: int,
    *,
    tls: ClientTLS | None,
    proxy: ProxyURL | None = None,
    ip: str | None = None,
) -> anyio.abc.ByteStream:
    """A TCP connection to ``host:port`` (at ``ip``, or through ``proxy``: see
    :func:`ptth.transport.proxy.open_tcp`), with TLS to ``host`` when ``tls`` is given.

    OSError if the connection fails, ForwardProxyError if the proxy does, TunnelTLSError if the
    TLS handshake does; the socket is closed on every way out, cancellation included.
    """
    sock = await open_tcp(host, port, proxy=proxy, ip=ip)
    if tls is None:
        return sock
    try:
        return await tls_handshake(sock, host, tls)
    except BaseException:
        await anyio.aclose_forcefully(sock)
        raise


async def dial(
    address: RouterAddress,
    tls: ClientTLS | None,
    *,
    proxy: ProxyURL | None = None,
    ip: str | None = None,
    token: str | None = None,
) -> anyio.abc.ByteStream:
    """The tunnel's byte stream for ``tcp://`` / ``tls://`` (system trust when ``tls`` is None);
    ``token`` is unused here: the handshake carries it."""
    return await connect(address.host, address.port, tls=tls_for(address, tls), proxy=proxy, ip=ip)


def tls_for(address: RouterAddress, tls: ClientTLS | None) -> ClientTLS | None:
    if not address.tls:
        return None
    return tls or client_tls()

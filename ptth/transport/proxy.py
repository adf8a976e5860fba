"""TCP to a router, directly or through an HTTP forward proxy's ``CONNECT`` (RFC 9110 §9.3.6).

The rules (which proxy, the exchange itself) are in :mod:`ptth.proto.connect`; this module only
moves bytes. What it returns is a plain socket stream either way, so TLS, WebSocket and the
ReverseHTTP handshake run over it unchanged (ARCHITECTURE.md, "Transports" > "Forward proxies").
"""

from __future__ import annotations

import anyio
import anyio.abc

from ..errors import ForwardProxyError
from ..proto.connect import MAX_PROXY_HEAD, ConnectExchange, ProxyURL

__all__ = ["ProxyURL", "open_tcp"]


async def open_tcp(
    host: str, port: int, *, proxy: ProxyURL | None = None, ip: str | None = None
) -> anyio.abc.SocketStream:
    """A TCP stream to ``host:port``: dialled at ``ip`` when given (one of the name's
    addresses), else at ``host``; or, with ``proxy``, a connection to the proxy on which a
    ``CONNECT host:port`` succeeded (the proxy resolves the name; ``ip`` is then unused).

    Raises OSError when the direct connection fails and :class:`ForwardProxyError` for every
    proxy failure (unreachable, refusal, nonsense, a close). The caller bounds the time.
    """
    if proxy is None:
        return await anyio.connect_tcp(ip or host, port)
    try:
        sock = await anyio.connect_tcp(proxy.host, proxy.port)
    except OSError as exc:
        raise ForwardProxyError(f"cannot connect to proxy {proxy}: {exc.strerror or exc}") from None
    try:
        exchange = ConnectExchange(proxy, host, port)
        await sock.send(exchange.request_bytes())
        while True:
            try:
                data = await sock.receive(MAX_PROXY_HEAD)
            except anyio.EndOfStream:
                data = b""
            if exchange.receive(data):
                return sock
    except (anyio.BrokenResourceError, OSError):
        await anyio.aclose_forcefully(sock)
        raise ForwardProxyError(f"proxy {proxy} reset the connection during CONNECT") from None
    except BaseException:
        await anyio.aclose_forcefully(sock)
        raise

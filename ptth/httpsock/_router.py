"""``http://`` and ``https://`` router addresses: the helper's tunnel over httpsock
(ARCHITECTURE.md, "Transports" > "Socket over plain HTTP").

The router serves httpsock on its front end at ``--httpsock-path`` (default
``/.well-known/ptth/socket``); the session is the tunnel's byte stream, and the ReverseHTTP
handshake and HTTP/2 run over it unchanged.
"""

from __future__ import annotations

from ..proto.address import RouterAddress
from ..proto.connect import ProxyURL
from ..transport.tls import ClientTLS, client_tls
from ._client import ClientStream, dial

__all__ = ["dial_router"]


async def dial_router(
    address: RouterAddress,
    tls: ClientTLS | None,
    *,
    proxy: ProxyURL | None = None,
    ip: str | None = None,
    token: str | None = None,
) -> ClientStream:
    """An httpsock session with the router at ``address``; ``https://`` verifies it as
    ``tls://`` does. ``proxy`` is the helper's resolved forward proxy (the environment was
    already consulted, so httpx does not read it again); ``ip``: this address of the name.
    ``token``: the tunnel's, sent as ``Authorization`` on every request, so the session is
    bound to the tunnel's credentials (its token alone opens nothing)."""
    scheme = "https" if address.tls else "http"
    context = (tls or client_tls()).context if address.tls else None
    return await dial(
        f"{scheme}://{address.authority}{address.target}",
        proxy=proxy.url if proxy is not None else None,
        trust_env=False,
        ssl_context=context,
        connect_ip=ip,
        authorization=f"Bearer {token}" if token is not None else None,
    )

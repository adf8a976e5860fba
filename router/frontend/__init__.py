"""The router's native front end: HTTP/1.1 on h11, HTTP/2 on the engine, TLS with ALPN.

No application server sits between users and the proxy (ARCHITECTURE.md, "The front end"):
:class:`FrontEnd` accepts connections and hands each request to the proxy as an
:class:`~router.frontend.exchange.Exchange`.
"""

from __future__ import annotations

from .exchange import Exchange, UserRequest
from .limits import FrontLimits
from .listener import FrontEnd
from .tls import TLSFiles

__all__ = ["Exchange", "FrontEnd", "FrontLimits", "TLSFiles", "UserRequest"]

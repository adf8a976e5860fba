"""The ASGI app hypercorn serves on the front end: every request is proxied through a tunnel."""

from __future__ import annotations

from ptth.types import Receive, Scope, Send

from .proxy_common import ProxyContext
from .proxy_http import forward
from .proxy_ws import forward_websocket

__all__ = ["RouterApp"]


class RouterApp:
    """ASGI 3 entry point: ``lifespan`` answered at once; ``http`` and ``websocket`` proxied."""

    def __init__(self, context: ProxyContext) -> None:
        self.context = context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await forward(self.context, scope, receive, send)
        elif kind == "websocket":
            await forward_websocket(self.context, scope, receive, send)
        elif kind == "lifespan":
            # hypercorn's serve fails at start-up if lifespan is silently ignored.
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

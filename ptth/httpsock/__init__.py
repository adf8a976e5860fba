"""httpsock: a byte stream over plain HTTP requests, for networks that allow nothing else.

For proxies that pass neither ``CONNECT`` nor WebSockets nor long-lived responses: ``POST``
opens a session (``201`` and a 256-bit token), ``PUT`` sends bytes, ``GET`` long-polls for
them, ``DELETE`` closes. Every byte is numbered, so a retried, duplicated or reordered request
never loses or repeats one (ARCHITECTURE.md, "Transports" > "Socket over plain HTTP")::

    # server: any ASGI server (uvicorn, hypercorn, ...) on asyncio or trio
    listener = ptth.httpsock.Listener()
    async with listener:                       # serve `listener` as the ASGI app
        stream = await listener.accept()       # an anyio.abc.ByteStream

    # client
    stream = await ptth.httpsock.dial("https://example.com/socket", proxy="http://proxy:3128")
    await stream.send(b"hello")

The ptth helper dials a router's ``http://`` and ``https://`` addresses with it.
"""

from __future__ import annotations

from ._client import ClientStream, dial
from ._server import HttpSockAttribute, Listener, Request, Response, ServerStream
from .protocol import Limits

__all__ = [
    "ClientStream",
    "HttpSockAttribute",
    "Limits",
    "Listener",
    "Request",
    "Response",
    "ServerStream",
    "dial",
]

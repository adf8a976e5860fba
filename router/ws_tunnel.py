"""WebSocket tunnels on the front end (ARCHITECTURE.md, "Transports").

A backend dialling ``ws://`` or ``wss://`` opens a WebSocket to ``--ws-path`` (default
``/.well-known/ptth/ws``), over HTTP/1.1 Upgrade or RFC 8441 on HTTP/2. Once accepted, the
exchange's raw frames become a byte stream (:class:`ExchangeStream`), its binary messages the
tunnel's bytes (:class:`ptth.transport.ws_stream.WebSocketStream`, the server end), handed to
the tunnel listener as any tunnel: admission, the handshake deadline, authentication, limits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc

from ptth.transport.websocket import SUBPROTOCOL
from ptth.transport.ws_stream import WebSocketStream

from .frontend.exchange import Exchange
from .frontend.http1 import ClientGoneError
from .tunnel_listener import TunnelListener

__all__ = ["ExchangeStream", "serve_ws_tunnel"]

CLOSE_WRITE_TIMEOUT = 1.0


class ExchangeStream(anyio.abc.ByteStream):
    """The raw bytes of an accepted WebSocket exchange (after ``accept_websocket``)."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self._buffer = b""
        self._eof = False
        self._ended = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while not self._buffer:
            if self._eof:
                raise anyio.EndOfStream
            try:
                data, more = await self.exchange.receive()
            except ClientGoneError:
                raise anyio.EndOfStream from None  # the WebSocket layer calls it 1006
            self._eof = not more
            self._buffer = data
        data, self._buffer = self._buffer[:max_bytes], self._buffer[max_bytes:]
        return data

    async def send(self, item: bytes) -> None:
        if self._ended:
            raise anyio.ClosedResourceError
        try:
            await self.exchange.send(item)
        except ClientGoneError:
            raise anyio.BrokenResourceError from None

    async def send_eof(self) -> None:
        if self._ended:
            return
        self._ended = True
        try:
            await self.exchange.send(b"", end=True)  # HTTP/2: END_STREAM; HTTP/1.1: nothing
        except ClientGoneError:
            raise anyio.BrokenResourceError from None

    async def aclose(self) -> None:
        with anyio.move_on_after(CLOSE_WRITE_TIMEOUT, shield=True):
            try:
                await self.send_eof()
            except anyio.BrokenResourceError:
                pass

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        request = self.exchange.request
        return {
            anyio.abc.SocketAttribute.remote_address: lambda: request.client,
            anyio.abc.SocketAttribute.local_address: lambda: request.server,
        }


async def _answer(
    exchange: Exchange, status: int, reason: str, extra: list[tuple[bytes, bytes]]
) -> None:
    body = (reason + "\n").encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"%d" % len(body)),
        (b"cache-control", b"no-store"),
        *extra,
    ]
    await exchange.start(status, headers)
    await exchange.send(body, end=True)


async def serve_ws_tunnel(exchange: Exchange, listener: TunnelListener, *, allowed: bool) -> None:
    """One request for the WebSocket tunnel path: a tunnel if it is a WebSocket and front-end
    tunnels are on; 403 (``--no-front-end-tunnels``) or 426 (not a WebSocket) otherwise."""
    request = exchange.request
    if not allowed:
        await _answer(
            exchange,
            403,
            "this router takes no tunnels on its public port (--no-front-end-tunnels); "
            "dial its tunnel port",
            [],
        )
        return
    if request.protocol != b"websocket":
        await _answer(
            exchange,
            426,
            "WebSocket tunnels only here (a backend dials ws:// or wss://)",
            # Upgrade is a connection-specific field: never in HTTP/2 (RFC 9113 §8.2.2).
            [(b"upgrade", b"websocket")] if request.http_version.startswith("1") else [],
        )
        return
    subprotocol = SUBPROTOCOL if SUBPROTOCOL in request.subprotocols else None
    await exchange.accept_websocket(subprotocol, [])
    exchange.carries_tunnel()
    stream = WebSocketStream(ExchangeStream(exchange), client=False)
    await listener.accept_stream(stream, client=request.client[0], transport="ws")

"""``ws://`` and ``wss://``: the tunnel in WebSocket binary messages (ARCHITECTURE.md,
"Transports").

The helper opens a WebSocket (RFC 6455 §4.1, wsproto as the client) to the router's front end at
the URL's path (default ``/.well-known/ptth/ws``), ``wss://`` verifying the router like
``tls://``, and returns a :class:`~ptth.transport.ws_stream.WebSocketStream`: the ReverseHTTP
handshake and HTTP/2 then run over it unchanged. A refusal of the WebSocket (the router's 403
for ``--no-front-end-tunnels``, a 404 from something that is not a ptth router) is a
:class:`HandshakeRefused` with the status and the body's first line, as on the tunnel port.
"""

from __future__ import annotations

import anyio
import anyio.abc
from wsproto import ConnectionType
from wsproto.events import AcceptConnection, Event, RejectConnection, RejectData, Request
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

from ..errors import HandshakeError, HandshakeRefused
from ..proto.address import RouterAddress
from ..proto.connect import ProxyURL
from ..proto.handshake import MAX_HEAD_SIZE, MAX_REASON_SIZE, parse_retry_after
from .tcp import connect, tls_for
from .tls import ClientTLS
from .ws_stream import WebSocketStream

__all__ = ["SUBPROTOCOL", "dial"]

# Offered by the helper, chosen by the router: says what the messages carry.
SUBPROTOCOL = "ptth"
RECEIVE_SIZE = 64 * 1024


async def dial(
    address: RouterAddress,
    tls: ClientTLS | None,
    *,
    proxy: ProxyURL | None = None,
    ip: str | None = None,
    token: str | None = None,
) -> WebSocketStream:
    """The tunnel's byte stream over a WebSocket to ``address`` (``ws://`` or ``wss://``);
    ``proxy`` and ``ip`` as for :func:`ptth.transport.tcp.connect`; ``token`` is unused here:
    the handshake inside carries it."""
    tls = tls_for(address, tls)
    sock = await connect(address.host, address.port, tls=tls, proxy=proxy, ip=ip)
    try:
        handshake = H11Handshake(ConnectionType.CLIENT)
        request = Request(host=address.authority, target=address.target, subprotocols=[SUBPROTOCOL])
        await sock.send(handshake.send(request))
        buffer = bytearray()
        events = _feed(handshake, await _read_head(sock, buffer))
        first = events[0] if events else None
        if isinstance(first, AcceptConnection):
            return WebSocketStream(sock, client=True, initial=bytes(buffer))
        if isinstance(first, RejectConnection):
            raise await _refusal(sock, handshake, first, events[1:], buffer)
        raise HandshakeError("malformed WebSocket handshake response from the router")
    except BaseException:
        await anyio.aclose_forcefully(sock)
        raise


def _feed(handshake: H11Handshake, data: bytes | None) -> list[Event]:
    try:
        handshake.receive_data(data)
        return list(handshake.events())
    except RemoteProtocolError as exc:
        raise HandshakeError(f"malformed WebSocket handshake response: {exc}") from None


async def _read_head(sock: anyio.abc.ByteStream, buffer: bytearray) -> bytes:
    """One response head (up to CRLF CRLF); what follows it stays in ``buffer``: after a 101
    those are the first WebSocket frames, which the handshake parser must not swallow."""
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        if len(buffer) > MAX_HEAD_SIZE:
            raise HandshakeError("router sent an oversized WebSocket handshake response")
        try:
            data = await sock.receive(RECEIVE_SIZE)
        except anyio.EndOfStream:
            data = b""
        if not data:
            raise HandshakeError("router closed the connection during the WebSocket handshake")
        buffer += data
    head = bytes(buffer[: end + 4])
    del buffer[: end + 4]
    return head


async def _refusal(
    sock: anyio.abc.ByteStream,
    handshake: H11Handshake,
    refusal: RejectConnection,
    events: list[Event],
    buffer: bytearray,
) -> HandshakeRefused:
    """The refusal with its body's first line as the reason (at most MAX_REASON_SIZE read)."""
    body = bytearray()
    pending = bytes(buffer)
    done = not refusal.has_body
    with anyio.move_on_after(2.0):
        while not done and len(body) < MAX_REASON_SIZE:
            if pending:
                events += _feed(handshake, pending)
                pending = b""
            for event in events:
                if isinstance(event, RejectData):
                    body += event.data
                    done = done or event.body_finished
            events = []
            if done:
                break
            try:
                pending = await sock.receive(RECEIVE_SIZE)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                break
            if not pending:
                break
    text = body[:MAX_REASON_SIZE].decode("utf-8", "replace")
    reason = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    retry_after = None
    for name, value in refusal.headers:
        if name.lower() == b"retry-after":
            retry_after = parse_retry_after(value.decode("latin-1"))
    status = refusal.status_code
    return HandshakeRefused(status, reason or f"WebSocket refused ({status})", retry_after)

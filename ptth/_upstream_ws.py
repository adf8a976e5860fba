"""Agent mode: a WebSocket (RFC 8441 extended CONNECT in the tunnel) to an HTTP/1.1 upstream.

The router is the WebSocket client inside the tunnel: the DATA of the CONNECT stream is the
WebSocket byte stream itself, client frames masked (RFC 8441 §5). The agent opens a TCP
connection to the upstream, does the HTTP/1.1 Upgrade handshake there (RFC 6455 §4.1, with
wsproto) offering the same subprotocols, and answers the tunnel with 200 (+ the chosen
``sec-websocket-protocol``) or with the upstream's refusal. From then on the two byte streams are
the same WebSocket connection seen from the same client, so bytes pass through unchanged both
ways: masking rules match (client→server masked) and no frame is parsed or rebuilt.

No extension is offered upstream: the router's side never sees a ``sec-websocket-extensions``
answer, so neither end compresses and frames stay valid on both legs.
"""

from __future__ import annotations

import logging

import anyio
import anyio.abc
import wsproto.utilities
from wsproto import ConnectionType
from wsproto.events import AcceptConnection, Event, RejectConnection, RejectData, Request
from wsproto.handshake import H11Handshake

from ._upstream_common import (
    Progress,
    UpstreamFailed,
    downstream,
    receive_downstream,
    relaying,
    watch_downstream,
)
from ._upstream_url import UpstreamURL
from .driver import Stream
from .engine import Headers
from .errors import HeaderError
from .proto.fields import strip_hop_by_hop
from .proto.headers import RequestHead

__all__ = ["relay_websocket"]

log = logging.getLogger("ptth.agent")

MAX_HEAD = 64 * 1024
RECEIVE_SIZE = 64 * 1024
CLOSE_LINGER = 10.0  # after one direction ended, how long the other may still run
# Fields wsproto writes itself, and ones that have no meaning on the HTTP/1.1 leg.
_NOT_FORWARDED = frozenset(
    {
        b"host",
        b"content-length",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-protocol",
        b"sec-websocket-extensions",
    }
)


async def relay_websocket(
    target: UpstreamURL, stream: Stream, head: RequestHead, *, connect_timeout: float
) -> None:
    """Serve one extended CONNECT stream by an HTTP/1.1 WebSocket connection to ``target``."""
    progress = Progress()
    sock: anyio.abc.ByteStream | None = None
    try:
        async with relaying(stream, progress):
            try:
                with anyio.fail_after(connect_timeout):
                    sock = await anyio.connect_tcp(target.host, target.port)
            except (OSError, TimeoutError) as exc:
                reason = exc or "timed out"
                raise UpstreamFailed(f"{target}: upstream unreachable ({reason})") from None
            # Nobody reads the tunnel stream during the handshake: watch it for a reset.
            async with anyio.create_task_group() as nursery:
                nursery.start_soon(watch_downstream, stream)
                rest = await _handshake(sock, stream, head, progress)
                nursery.cancel_scope.cancel()
            if rest is not None:
                await _pipe(sock, stream, rest)
    finally:
        if sock is not None:
            await anyio.aclose_forcefully(sock)


def _offer(head: RequestHead) -> Request:
    subprotocols: list[str] = []
    extra: Headers = []
    for name, value in head.headers:
        if name == b"sec-websocket-protocol":
            subprotocols += wsproto.utilities.split_comma_header(value)
        elif name not in _NOT_FORWARDED:
            extra.append((name, value))
    return Request(
        host=head.authority,
        target=head.raw_path.decode("ascii"),
        subprotocols=subprotocols,
        extra_headers=extra,
    )


async def _read_head(sock: anyio.abc.ByteStream, buffer: bytearray) -> bytes:
    """One response head (up to CRLF CRLF) off ``buffer``/the socket; the rest stays buffered."""
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        if len(buffer) > MAX_HEAD:
            raise UpstreamFailed("upstream sent an oversized WebSocket handshake response")
        data = await _receive(sock)
        if not data:
            raise UpstreamFailed("upstream closed the connection during the WebSocket handshake")
        buffer += data
    head = bytes(buffer[: end + 4])
    del buffer[: end + 4]
    return head


async def _handshake(
    sock: anyio.abc.ByteStream, stream: Stream, head: RequestHead, progress: Progress
) -> bytes | None:
    """The Upgrade exchange; returns bytes already read past the 101, or None if refused."""
    handshake = H11Handshake(ConnectionType.CLIENT)
    await _send(sock, handshake.send(_offer(head)))
    buffer = bytearray()
    while True:
        events = _feed(handshake, await _read_head(sock, buffer))
        if events:
            break
    first = events[0]
    if isinstance(first, AcceptConnection):
        block: Headers = [(b":status", b"200")]
        if first.subprotocol is not None:
            block.append((b"sec-websocket-protocol", first.subprotocol.encode("ascii")))
        block += _response_fields(first.extra_headers, drop={b"sec-websocket-extensions"})
        await downstream(stream.send_headers(block))
        progress.headers_sent = True
        return bytes(buffer)
    assert isinstance(first, RejectConnection)
    await _relay_refusal(sock, stream, handshake, first, events[1:], buffer, progress)
    return None


async def _relay_refusal(
    sock: anyio.abc.ByteStream,
    stream: Stream,
    handshake: H11Handshake,
    refusal: RejectConnection,
    events: list[Event],
    buffer: bytearray,
    progress: Progress,
) -> None:
    """The upstream said no (a 403, a 404...): the router's client gets that answer."""
    block: Headers = [(b":status", str(refusal.status_code).encode())]
    block += _response_fields(refusal.headers, drop=frozenset())
    await downstream(stream.send_headers(block, end_stream=not refusal.has_body))
    progress.headers_sent = True
    if not refusal.has_body:
        return
    pending = bytes(buffer)
    while True:
        if pending:
            events += _feed(handshake, pending)
        for event in events:
            assert isinstance(event, RejectData)
            await downstream(stream.send_data(event.data, end_stream=event.body_finished))
            if event.body_finished:
                return
        events = []
        pending = await _receive(sock)
        if not pending:
            events = _feed(handshake, None)
            if not events:
                raise UpstreamFailed("upstream closed mid-way through its refusal body")


def _feed(handshake: H11Handshake, data: bytes | None) -> list[Event]:
    try:
        handshake.receive_data(data)
        return list(handshake.events())
    except wsproto.utilities.RemoteProtocolError as exc:
        raise UpstreamFailed(f"upstream WebSocket handshake failed: {exc}") from None


def _response_fields(headers: Headers, *, drop: frozenset[bytes] | set[bytes]) -> Headers:
    try:
        fields = strip_hop_by_hop(headers)
    except HeaderError as exc:
        raise UpstreamFailed(f"upstream sent an invalid response: {exc}") from None
    return [(n, v) for n, v in fields if n not in drop and n != b"sec-websocket-accept"]


async def _pipe(sock: anyio.abc.ByteStream, stream: Stream, rest: bytes) -> None:
    """Bytes both ways until both directions ended (or one ended and the other lingered)."""
    up_done, down_done, any_done = anyio.Event(), anyio.Event(), anyio.Event()

    def done(event: anyio.Event) -> None:
        event.set()
        any_done.set()

    async def upstream_to_tunnel() -> None:
        if rest:
            await downstream(stream.send_data(rest))
        while data := await _receive(sock):
            await downstream(stream.send_data(data))
        await downstream(stream.end())  # RFC 8441 §4: END_STREAM stands for the TCP FIN
        done(up_done)

    async def tunnel_to_upstream() -> None:
        while data := await receive_downstream(stream):
            await _send(sock, data)
        try:
            await sock.send_eof()
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        done(down_done)

    async with anyio.create_task_group() as nursery:
        nursery.start_soon(upstream_to_tunnel)
        nursery.start_soon(tunnel_to_upstream)
        await any_done.wait()
        # One side closed; a well-behaved peer closes the other soon (the WebSocket closing
        # handshake is already over by then), a stuck one is not waited for.
        with anyio.move_on_after(CLOSE_LINGER):
            await up_done.wait()
            await down_done.wait()
        nursery.cancel_scope.cancel()


async def _receive(sock: anyio.abc.ByteStream) -> bytes:
    try:
        return await sock.receive(RECEIVE_SIZE)
    except anyio.EndOfStream:
        return b""
    except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
        raise UpstreamFailed(f"upstream connection lost: {exc}") from None


async def _send(sock: anyio.abc.ByteStream, data: bytes) -> None:
    try:
        await sock.send(data)
    except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
        raise UpstreamFailed(f"upstream connection lost: {exc}") from None

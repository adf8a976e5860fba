"""A small HTTP/1.1 server for the admin listener: h11 over trio, GET and HEAD only.

Bounded like the front end, on a smaller scale: a request head must arrive within
``HEAD_TIMEOUT`` and fit in ``MAX_HEAD``; at most ``MAX_CONNECTIONS`` at once (more are closed
at once). A handler answers with a :class:`Reply` (a whole body) or a :class:`Streamed` body
(server-sent events), which is written as it comes, chunked.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import h11
import trio

__all__ = ["AdminRequest", "Handler", "Reply", "Streamed", "serve_listeners"]

log = logging.getLogger("router.admin")

HEAD_TIMEOUT = 10.0
IDLE_TIMEOUT = 60.0
WRITE_TIMEOUT = 10.0
MAX_HEAD = 16 * 1024
MAX_CONNECTIONS = 64
# Every reply: the page loads nothing from elsewhere, and no other site may frame or sniff it.
COMMON_HEADERS = [
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        b"img-src 'self' data:; frame-ancestors 'none'",
    ),
]


@dataclass(frozen=True)
class AdminRequest:
    method: str
    path: str  # without the query
    query: str
    headers: list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass(frozen=True)
class Streamed:
    """A body written as ``chunks`` yields it, until it ends or the client leaves."""

    chunks: Callable[[], AsyncIterator[bytes]]
    content_type: str = "text/event-stream; charset=utf-8"


Handler = Callable[[AdminRequest], Awaitable[Reply | Streamed]]


class _Gone(Exception):
    """The client left or broke the protocol."""


async def serve_listeners(listeners: list[trio.SocketListener], handler: Handler) -> None:
    """Accept on every listener until cancelled."""
    active = 0

    async def connection(stream: trio.SocketStream) -> None:
        nonlocal active
        try:
            if active >= MAX_CONNECTIONS:
                return
            active += 1
            try:
                await _serve(stream, handler)
            except Exception:  # a bug here costs this connection, never the router
                log.exception("admin listener: a connection failed")
            finally:
                active -= 1
        finally:
            await trio.aclose_forcefully(stream)

    async def accept(listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # EMFILE and the like: wait, never die
                log.warning("admin listener: accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            nursery.start_soon(connection, stream)

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(accept, listener, nursery)


async def _serve(stream: trio.SocketStream, handler: Handler) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    first = True
    while True:
        try:
            request = await _read_request(conn, stream, HEAD_TIMEOUT if first else IDLE_TIMEOUT)
        except _Gone:
            return
        except h11.RemoteProtocolError as exc:
            await _bad_request(conn, stream, exc)
            return
        if request is None:
            return
        first = False
        try:
            await _answer(conn, stream, request, handler)
        except _Gone:
            return
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return
        conn.start_next_cycle()


async def _read_request(
    conn: h11.Connection, stream: trio.SocketStream, timeout: float
) -> h11.Request | None:
    """The next request, its (ignored) body read; None when the client closed cleanly."""
    request: h11.Request | None = None
    with trio.move_on_after(timeout):
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await stream.receive_some(16384)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    raise _Gone() from None
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.EndOfMessage):
                return request
            elif isinstance(event, h11.ConnectionClosed):
                return None
    raise _Gone()


async def _send(stream: trio.SocketStream, data: bytes | None) -> None:
    if not data:
        return
    with trio.move_on_after(WRITE_TIMEOUT) as scope:
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            raise _Gone() from None
    if scope.cancelled_caught:
        raise _Gone()


async def _bad_request(
    conn: h11.Connection, stream: trio.SocketStream, exc: h11.RemoteProtocolError
) -> None:
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):  # h11's rule after a peer error
        return
    body = f"bad request: {exc}\n".encode()
    headers = [(b"content-length", b"%d" % len(body)), (b"connection", b"close")]
    try:
        await _send(stream, conn.send(h11.Response(status_code=400, headers=headers)))
        await _send(stream, conn.send(h11.Data(data=body)))
        await _send(stream, conn.send(h11.EndOfMessage()))
    except (_Gone, h11.LocalProtocolError):
        pass


async def _answer(
    conn: h11.Connection, stream: trio.SocketStream, event: h11.Request, handler: Handler
) -> None:
    method = event.method.decode("ascii", "replace")
    target = event.target.decode("latin-1")
    path, _, query = target.partition("?")
    request = AdminRequest(method, path, query, list(event.headers))
    if method not in ("GET", "HEAD"):
        reply: Reply | Streamed = Reply(405, b"only GET and HEAD\n", headers=[(b"allow", b"GET")])
    else:
        try:
            reply = await handler(request)
        except Exception:  # a bug here must cost one answer, never the router
            log.exception("admin listener: %s %s failed", method, path)
            reply = Reply(500, b"internal error (see the router's log)\n")
    head = method == "HEAD"
    if isinstance(reply, Reply):
        headers = [
            (b"content-type", reply.content_type.encode()),
            (b"content-length", b"%d" % len(reply.body)),
            *COMMON_HEADERS,
            *reply.headers,
        ]
        await _send(stream, conn.send(h11.Response(status_code=reply.status, headers=headers)))
        if not head:
            await _send(stream, conn.send(h11.Data(data=reply.body)))
        await _send(stream, conn.send(h11.EndOfMessage()))
        return
    headers = [(b"content-type", reply.content_type.encode()), *COMMON_HEADERS]
    await _send(stream, conn.send(h11.Response(status_code=200, headers=headers)))
    if head:
        await _send(stream, conn.send(h11.EndOfMessage()))
        return
    chunks = reply.chunks()
    try:
        async for chunk in chunks:
            await _send(stream, conn.send(h11.Data(data=chunk)))
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            with trio.CancelScope(shield=True):
                await aclose()
    await _send(stream, conn.send(h11.EndOfMessage()))

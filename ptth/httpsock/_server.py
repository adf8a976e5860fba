"""The httpsock server: :class:`Listener`, an ASGI app that yields one byte stream per session.

The decisions are :mod:`ptth.httpsock.protocol`'s; this module holds requests open, wakes the
ones a change concerns, and turns sessions into :class:`anyio.abc.ByteStream` objects. It uses
anyio only, so it runs in any ASGI server on asyncio or trio, and behind the router's own front
end (:meth:`Listener.respond` takes a transport-neutral :class:`Request`).
"""

from __future__ import annotations

import dataclasses
import logging
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..types import Receive, Scope, Send
from . import protocol as p
from .protocol import Limits, ServerSession, SessionTable

__all__ = ["HttpSockAttribute", "Listener", "Request", "Response", "ServerStream"]

log = logging.getLogger("ptth.httpsock")

NO_STORE = ("cache-control", "no-store")


class HttpSockAttribute(anyio.TypedAttributeSet):
    """What a :class:`ServerStream` knows about its client (``stream.extra(...)``)."""

    client: str = anyio.typed_attribute()  # the address the session was opened from


@dataclass(frozen=True)
class Request:
    """One HTTP request, whatever server received it. ``path`` is below the listener's base
    (``""`` or ``"/"`` opens a session, ``"/TOKEN"`` names one); header names are lower case."""

    method: str
    path: str
    headers: Mapping[str, str]
    client: tuple[str, int]
    body: bytes = b""


@dataclass(frozen=True)
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


def _text(status: int, reason: str, *extra: tuple[str, str]) -> Response:
    headers = [NO_STORE, ("content-type", "text/plain; charset=utf-8"), *extra]
    return Response(status, headers, reason.encode() + b"\n")


class _Live:
    """A session and the event its waiters sleep on (replaced on every change)."""

    def __init__(self, session: ServerSession, client: tuple[str, int]) -> None:
        self.session = session
        self.client = client
        self.event = anyio.Event()
        self.seen = session.version

    def notify(self) -> None:
        if self.session.version != self.seen:
            self.seen = self.session.version
            self.event.set()
            self.event = anyio.Event()

    async def wait(self, timeout: float) -> None:
        """Until the session changes or ``timeout`` passes (checked by the caller)."""
        event = self.event
        with anyio.move_on_after(max(0.0, timeout)):
            await event.wait()


class ServerStream(anyio.abc.ByteStream):
    """The server's end of one session. ``send`` waits while the client has not acknowledged
    ``limits.outbox`` bytes; ``receive`` raises ``BrokenResourceError`` when the client reset,
    deleted the session before its EOF, or let it expire."""

    def __init__(self, live: _Live, table: SessionTable) -> None:
        self._live = live
        self._table = table
        self._closed = False
        self._send_lock = anyio.Lock()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        client = self._live.client
        return {
            HttpSockAttribute.client: lambda: client[0],
            anyio.abc.SocketAttribute.remote_address: lambda: client,
        }

    def _deadline(self) -> float:
        """How long to sleep before checking idle expiry again."""
        session = self._live.session
        if session.in_flight:
            return session.limits.idle_timeout
        return session.deadline() - anyio.current_time() + 0.01

    def _check_expiry(self) -> None:
        session = self._live.session
        if not session.aborted and session.expired(anyio.current_time()):
            log.info("httpsock session from %s expired (idle)", self._live.client[0])
            session.reset()
            self._table.forget(session)
            self._live.notify()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            self._check_expiry()
            try:
                data = self._live.session.app_read(max_bytes)
            except ConnectionResetError:
                raise anyio.BrokenResourceError from None
            if data is not None:
                self._live.notify()
                if not data:
                    raise anyio.EndOfStream
                return data
            await self._live.wait(self._deadline())

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        async with self._send_lock:
            while view:
                if self._closed or self._live.session.outbox.eof:
                    raise anyio.ClosedResourceError
                self._check_expiry()
                try:
                    room = self._live.session.app_room()
                except ConnectionResetError:
                    raise anyio.BrokenResourceError from None
                if room:
                    self._live.session.app_write(bytes(view[:room]))
                    self._live.notify()
                    view = view[room:]
                else:
                    await self._live.wait(self._deadline())

    async def send_eof(self) -> None:
        self._live.session.app_eof()
        self._live.notify()

    def reset(self) -> None:
        """Abort the session: the client's next request gets ``410`` and ``X-Reset: 1``."""
        self._live.session.reset()
        self._live.notify()

    async def aclose(self) -> None:
        """EOF after what was written (the client may still fetch it); bytes the client sends
        afterwards reset the session, as TCP answers data for a closed socket."""
        if not self._closed:
            self._closed = True
            self._live.session.app_close()
            self._live.notify()
        await anyio.lowlevel.checkpoint()


class Listener:
    """An ASGI app serving the httpsock protocol; :meth:`accept` gives each new session's stream.

    ::

        async with Listener() as listener:   # mount `listener` in uvicorn, hypercorn, Starlette
            stream = await listener.accept()

    Mounted below a path (``root_path``), it serves ``POST {base}`` and ``PUT/GET/DELETE
    {base}/{token}``. ``bind_client_address`` binds each session to the address that opened it
    (turn it off behind proxies that spread one client over several addresses); the
    ``Authorization`` header given at creation is always part of the binding. At most
    ``max_sessions`` live at once, ``max_sessions_per_client`` from one address (``None``: no
    such cap), and ``backlog`` wait for :meth:`accept` (then ``503``).
    ``max_buffered`` bounds the memory of every session together: bytes received and not yet
    read, and PUT bodies being read (over it, a PUT waits or gets ``503``; the client retries).
    """

    def __init__(
        self,
        *,
        limits: Limits | None = None,
        max_sessions: int = 1000,
        max_sessions_per_client: int | None = 64,
        backlog: int = 64,
        bind_client_address: bool = True,
        max_buffered: int = 64 * 1024 * 1024,
    ) -> None:
        self.limits = limits or Limits()
        self.max_buffered = max_buffered
        self._reserved = 0  # PUT bodies being read
        self._inbox_bound = 0  # at least the bytes in every session's inbox (see _free)
        self.table = SessionTable(self.limits, max_sessions, max_sessions_per_client)
        self.bind_client_address = bind_client_address
        # A session's waiters, while its stream exists: a stream the application dropped
        # takes its session with it (the client's next request gets 404, a reset).
        self._lives: weakref.WeakValueDictionary[str, _Live] = weakref.WeakValueDictionary()
        self._backlog = backlog
        self._queues: (
            tuple[MemoryObjectSendStream[ServerStream], MemoryObjectReceiveStream[ServerStream]]
            | None
        ) = None
        self._closed = False

    def _queue(
        self,
    ) -> tuple[MemoryObjectSendStream[ServerStream], MemoryObjectReceiveStream[ServerStream]]:
        """The accept queue, made on first use: a listener built and never used (a router
        that never served) leaves no unclosed stream behind."""
        if self._queues is None:
            if self._closed:
                raise anyio.ClosedResourceError
            self._queues = anyio.create_memory_object_stream[ServerStream](self._backlog)
        return self._queues

    async def __aenter__(self) -> Listener:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Refuse new sessions and reset the live ones."""
        self._closed = True
        if self._queues is not None:
            self._queues[0].close()
            self._queues[1].close()
        for live in list(self._lives.values()):
            live.session.reset()
            live.notify()
        self._lives.clear()
        await anyio.lowlevel.checkpoint()

    async def accept(self) -> ServerStream:
        """The next session's stream; ``ClosedResourceError`` once the listener is closed."""
        try:
            return await self._queue()[1].receive()
        except anyio.EndOfStream:
            raise anyio.ClosedResourceError from None

    # -- requests ------------------------------------------------------------------------

    def _free(self, needed: int) -> int:
        """Bytes left in the ``max_buffered`` budget. The inboxes' total is counted up as
        PUTs fill them and recounted (one pass over the sessions) only when the bound says
        there is less than ``needed``, so a busy listener does not sum them on every PUT."""
        free = self.max_buffered - self._reserved - self._inbox_bound
        if free < needed:
            self._inbox_bound = sum(len(session.inbox.buf) for session in self.table)
            free = self.max_buffered - self._reserved - self._inbox_bound
        return free

    def admit(self, request: Request, length: int | None) -> Response | int:
        """Before a request's body is read (``length``: its Content-Length, if any): an early
        answer, or how many body bytes to read at most. A PUT's are reserved from the memory
        budget until :meth:`release`; a PUT for no session is refused unread (``404``)."""
        if request.method != "PUT":
            return _text(413, "only a PUT has a body") if length else 0
        token = request.path.strip("/")
        found = None
        if token and "/" not in token:
            found = self.table.find(token, self._binding(request), anyio.current_time())
        if found is None or token not in self._lives:
            return _text(404, "no such session")
        if length is not None and length > self.limits.max_put:
            return _text(413, f"a PUT carries at most {self.limits.max_put} bytes")
        size = self.limits.max_put if length is None else length
        if size > self._free(size):
            return _text(503, "too many bytes buffered; retry", ("retry-after", "1"))
        self._reserved += size
        return size

    def release(self, reserved: int) -> None:
        """Give back what :meth:`admit` reserved, once the request has been answered."""
        self._reserved -= reserved

    def _binding(self, request: Request) -> bytes:
        client = request.client[0] if self.bind_client_address else ""
        headers = request.headers
        return p.binding(client, headers.get("authorization"), headers.get(p.SESSION_KEY))

    async def respond(self, request: Request) -> Response:
        """The answer to one request (every answer says ``Cache-Control: no-store``)."""
        path = request.path.strip("/")
        if not path:
            if request.method != "POST":
                return _text(405, "POST opens a session", ("allow", "POST"))
            return self._open(request)
        if "/" in path:
            return _text(404, "no such session")
        now = anyio.current_time()
        for expired in self.table.sweep(now):
            woken = self._lives.get(expired.token)
            if woken is not None:
                woken.notify()
        found = self.table.find(path, self._binding(request), now)
        live = self._lives.get(path) if found is not None else None
        if live is None:
            if found is not None:  # its stream was dropped unclosed: nobody will serve it
                found.reset()
                self.table.forget(found)
            return _text(404, "no such session")
        session = live.session
        session.begin(now)
        try:
            if request.method == "PUT":
                return await self._put(live, request)
            if request.method == "GET":
                return await self._get(live, request)
            if request.method == "DELETE":
                session.delete(reset=p.flag(request.headers.get(p.RESET)))
                self._lives.pop(session.token, None)
                live.notify()
                return Response(204, [NO_STORE])
            return _text(405, "PUT, GET or DELETE", ("allow", "PUT, GET, DELETE"))
        finally:
            session.end(anyio.current_time())
            if session.closed:
                self.table.forget(session)

    def _open(self, request: Request) -> Response:
        if self._closed:
            return _text(503, "not accepting sessions", ("retry-after", "5"))
        now = anyio.current_time()
        session = self.table.create(self._binding(request), now, request.client[0])
        if session is None:
            return _text(503, "too many sessions", ("retry-after", "5"))
        live = _Live(session, request.client)
        stream = ServerStream(live, self.table)
        try:
            self._queue()[0].send_nowait(stream)
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.table.forget(session)
            return _text(503, "too many sessions waiting to be accepted", ("retry-after", "1"))
        self._lives[session.token] = live
        headers = [
            NO_STORE,
            ("content-type", "text/plain; charset=utf-8"),
            (p.SESSION, session.token),
            (p.MAX_PUT, str(self.limits.max_put)),
            (p.POLL_TIMEOUT, f"{self.limits.poll_timeout:g}"),
            (p.IDLE_TIMEOUT, f"{self.limits.idle_timeout:g}"),
        ]
        return Response(201, headers, session.token.encode() + b"\n")

    def _hold(self, request: Request) -> float:
        """How long a GET or PUT may be held: the poll timeout, or less if the client asks
        (it is behind something that cuts quiet requests early)."""
        asked = p.parse_seconds(request.headers.get(p.POLL_TIMEOUT))
        return self.limits.poll_timeout if asked is None else min(self.limits.poll_timeout, asked)

    async def _put(self, live: _Live, request: Request) -> Response:
        session = live.session
        seq = p.parse_offset(request.headers.get(p.SEQ))
        deadline = anyio.current_time() + self._hold(request)
        # No room for new bytes: hold the PUT until the application reads (backpressure).
        # Its own body is in the budget already (admit reserved it).
        while (
            session.put_would_wait(seq, request.body, self._free(0) + len(request.body))
            and anyio.current_time() < deadline
        ):
            await live.wait(deadline - anyio.current_time())
        budget = self._free(0) + len(request.body)
        answer = session.put(seq, request.body, p.flag(request.headers.get(p.EOF)), budget)
        self._inbox_bound += answer.taken
        live.notify()
        if answer.status == 410:
            return _text(410, "session reset", (p.RESET, "1"))
        headers = [NO_STORE, (p.ACK, str(answer.ack))]
        if answer.eof:
            headers.append((p.EOF, "1"))
        if answer.status == 400:
            return _text(400, "bad X-Seq, or bytes past the end", *headers[1:])
        if answer.status == 409:
            return _text(409, "X-Seq is past the received bytes: resend from X-Ack", *headers[1:])
        return Response(answer.status, headers)

    async def _get(self, live: _Live, request: Request) -> Response:
        session = live.session
        ack = p.parse_offset(request.headers.get(p.ACK))
        size = p.parse_offset(request.headers.get(p.CONTENT_LENGTH))
        deadline = anyio.current_time() + self._hold(request)
        while True:
            answer = session.get(ack, size)
            live.notify()
            if answer is not None or anyio.current_time() >= deadline:
                break
            await live.wait(deadline - anyio.current_time())
        if answer is None or answer.status == 204:
            return Response(204, [NO_STORE, (p.SEQ, str(ack))])
        if answer.status == 410:
            return _text(410, "session reset", (p.RESET, "1"))
        if answer.status == 400:
            return _text(400, "bad X-Ack or X-Content-Length")
        if answer.status == 409:
            return _text(409, "X-Ack is behind what was acknowledged", (p.ACK, str(answer.seq)))
        headers = [NO_STORE, ("content-type", "application/octet-stream"), (p.SEQ, str(answer.seq))]
        if answer.eof:
            headers.append((p.EOF, "1"))
        return Response(200, headers, answer.data)

    # -- ASGI ----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        path: str = scope.get("path", "")
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        headers = {
            bytes(name).decode("latin-1").lower(): bytes(value).decode("latin-1")
            for name, value in scope.get("headers", [])
        }
        client = scope.get("client") or ("", 0)
        request = Request(scope["method"], path, headers, (str(client[0]), int(client[1])))
        admitted = self.admit(request, p.parse_offset(headers.get("content-length")))
        if isinstance(admitted, Response):
            await _send(send, admitted)
            return
        try:
            body = bytearray()
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                if len(body) > admitted:
                    await _send(send, _text(413, f"at most {admitted} bytes here"))
                    return
                if not message.get("more_body", False):
                    break
            response = await self.respond(dataclasses.replace(request, body=bytes(body)))
        finally:
            self.release(admitted)
        await _send(send, response)


async def _send(send: Send, response: Response) -> None:
    headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in response.headers]
    if response.status != 204:  # a 204 has no Content-Length (RFC 9110 §8.6)
        headers.append((b"content-length", str(len(response.body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return

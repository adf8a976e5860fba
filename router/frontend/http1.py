"""One HTTP/1.1 user connection on h11 (ARCHITECTURE.md, "The front end").

Requests are answered one at a time, in order (pipelined ones wait in the receive buffer). A
fresh ``h11.Connection`` parses each request, after :func:`router.frontend.h1_rules.scan_head`
has checked its raw head, so no byte reaches h11 unchecked that could start a request. The body
is read from the socket only when the proxy asks for it: the user's TCP window is the
backpressure. A framing error, an aborted response or an unread body closes the connection.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import NoReturn

import anyio
import anyio.abc
import h11
import trio

from ptth.driver import linger_close
from ptth.proto.fields import Headers

from .exchange import Exchange, UserRequest, offered_subprotocols
from .h1_rules import (
    ChunkScanner,
    HeadError,
    reason,
    scan_head,
    split_target,
    websocket_accept,
    websocket_key,
)
from .limits import FrontLimits

__all__ = ["H1Connection", "ClientGoneError"]

log = logging.getLogger("router.frontend")

RECEIVE_SIZE = 64 * 1024
# After a switch of protocols (a WebSocket) the bytes are bulk frames, not heads: larger reads.
SWITCHED_RECEIVE_SIZE = 256 * 1024
PIPELINE_LIMIT = 64 * 1024  # bytes read ahead of the request being answered
_BROKEN = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
_FRAMING_NOMINEES = frozenset({b"content-length", b"transfer-encoding", b"host"})

Handler = Callable[[Exchange], Awaitable[None]]
Upgrade = Callable[[anyio.abc.ByteStream, bytes, UserRequest, bytes], Awaitable[None]]
# A ReverseHTTP handshake on the front end: the socket and every byte read from it so far.
Tunnel = Callable[[anyio.abc.ByteStream, bytes], Awaitable[None]]
NO_FRONT_END_TUNNELS = (
    "this router takes no tunnels on its public port (--no-front-end-tunnels); dial its tunnel port"
)


class ClientGoneError(Exception):
    """The user's side of an exchange is gone (closed, framing broken, write deadline)."""


def _error_bytes(status: int, message: str, *, close: bool = True) -> bytes:
    body = (message + "\n").encode("utf-8", "replace")
    head = [
        b"HTTP/1.1 %d %s" % (status, reason(status)),
        b"content-type: text/plain; charset=utf-8",
        b"content-length: %d" % len(body),
        b"date: " + formatdate(usegmt=True).encode(),
    ]
    if close:
        head.append(b"connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _valid_settings(value: bytes) -> bool:
    """An HTTP2-Settings value: base64url of a SETTINGS payload (RFC 7540 §3.2.1)."""
    try:
        payload = base64.urlsafe_b64decode(value + b"=" * (-len(value) % 4))
    except ValueError:
        return False
    return len(payload) % 6 == 0


class H1Connection:
    """Serve one connection: :meth:`run` returns when it is closed."""

    def __init__(
        self,
        sock: anyio.abc.ByteStream,
        handler: Handler,
        limits: FrontLimits,
        *,
        client: tuple[str, int],
        server: tuple[str, int],
        scheme: bytes,
        initial: bytes = b"",
        upgrade_h2c: Upgrade | None = None,
        draining: Callable[[], bool] = lambda: False,
        tunnel: Tunnel | None = None,
        on_tunnel: Callable[[], None] = lambda: None,
    ) -> None:
        self.sock = sock
        self.handler = handler
        self.limits = limits
        self.client = client
        self.server = server
        self.scheme = scheme
        self.pending = bytearray(initial)
        self.upgrade_h2c = upgrade_h2c
        self.draining = draining
        self.tunnel = tunnel  # None: tunnel handshakes are refused (403)
        self.on_tunnel = on_tunnel  # the connection now carries a tunnel, not a user
        self.eof = False
        self.requests = 0
        self.idle = True  # between requests: a drain may close the connection now

    async def run(self) -> None:
        try:
            await self._serve()
        except _BROKEN:
            pass
        finally:
            with trio.CancelScope(shield=True):
                await anyio.aclose_forcefully(self.sock)

    async def _serve(self) -> None:
        while True:
            self.idle = True
            try:
                head_size = await self._read_head(first=self.requests == 0)
            except HeadError as exc:
                await self._refuse(exc.status, str(exc))
                return
            if head_size is None:
                return  # closed, idle past the keep-alive timeout, or drained
            self.idle = False
            self.requests += 1
            exchange = H1Exchange(self)
            try:
                exchange.parse(head_size)
            except HeadError as exc:
                await self._refuse(exc.status, str(exc))
                return
            except h11.RemoteProtocolError as exc:
                await self._refuse(exc.error_status_hint, f"malformed request: {exc}")
                return
            if exchange.reverse:
                await self._hand_over(exchange)
                return
            if exchange.h2c_settings is not None and self.upgrade_h2c is not None:
                await exchange.switch_to_h2c()
                return
            await self._handle(exchange)
            if exchange.bad_body is not None and not exchange.response_started:
                await self._refuse(400, f"malformed request body: {exchange.bad_body}")
                return
            if not exchange.reusable():
                if exchange.aborted or exchange.broken:
                    return
                with trio.CancelScope(shield=True):
                    await linger_close(self.sock, timeout=2.0)
                return
            self.pending = bytearray(exchange.conn.trailing_data[0]) + exchange.read_ahead

    async def _hand_over(self, exchange: H1Exchange) -> None:
        """A ReverseHTTP handshake (``Upgrade: reverse``) is never a user's request: the socket
        and every byte read so far go to the tunnel listener, which parses the handshake again
        and runs the tunnel port's admission and limits (ARCHITECTURE.md, "Transports")."""
        if self.tunnel is None:
            await self._refuse(403, NO_FRONT_END_TUNNELS)
            return
        self.on_tunnel()
        await self.tunnel(self.sock, exchange.raw)

    async def _handle(self, exchange: H1Exchange) -> None:
        try:
            await self.handler(exchange)
        except ClientGoneError:
            exchange.broken = True
        except Exception:
            log.exception("front end: request handler failed")
            if not exchange.response_started and not exchange.broken:
                try:
                    await exchange.write(_error_bytes(500, "internal error"))
                except ClientGoneError:
                    pass
            exchange.broken = True

    async def _read_head(self, *, first: bool) -> int | None:
        """Wait for a complete request head in ``pending``; its size, or None to close.

        The connection's first head, and every head once its first byte arrived, must be
        complete within the header timeout; between requests the keep-alive timeout applies.
        """
        limits = self.limits
        started = trio.current_time()
        deadline = started + (limits.header_timeout if first else limits.keepalive_timeout)
        if self.pending:
            deadline = min(deadline, started + limits.header_timeout)
        while True:
            while self.pending[:2] == b"\r\n":
                del self.pending[:2]
            size = scan_head(
                self.pending, max_size=limits.max_header_size, max_fields=limits.max_header_fields
            )
            if size is not None:
                return size
            if self.eof or (self.draining() and not self.pending):
                return None
            had_bytes = bool(self.pending)
            with trio.move_on_at(deadline):
                data = await self._recv()
                if not data:
                    return None
                self.pending += data
                if not had_bytes:
                    deadline = min(deadline, trio.current_time() + limits.header_timeout)
                continue
            if self.pending:
                log.info(
                    "front end: %s request head incomplete after the header timeout", self.peer
                )
            return None

    @property
    def peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}"

    async def _recv(self, size: int = RECEIVE_SIZE) -> bytes:
        try:
            return await self.sock.receive(size)
        except anyio.EndOfStream:
            self.eof = True
            return b""
        except _BROKEN:
            self.eof = True
            return b""

    async def _refuse(self, status: int, message: str) -> None:
        log.info("front end: %s refused (%d): %s", self.peer, status, message)
        try:
            with trio.move_on_after(self.limits.write_timeout):
                await self.sock.send(_error_bytes(status, message))
        except _BROKEN:
            return
        with trio.CancelScope(shield=True):
            await linger_close(self.sock, timeout=2.0)


class H1Exchange(Exchange):
    """One request/response cycle on an :class:`H1Connection`."""

    def __init__(self, owner: H1Connection) -> None:
        self.owner = owner
        self.conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=owner.limits.max_header_size
        )
        self.read_ahead = bytearray()  # pipelined bytes read while waiting for the user to leave
        self.aborted = False
        self.broken = False
        self.gone = False
        self.body_done = False
        self.response_started = False
        self.close_after = False
        self.h2c_settings: bytes | None = None
        self.reverse = False  # a ReverseHTTP tunnel handshake: handed over, never proxied
        self.raw = b""  # the bytes parsed: the head and whatever came after it
        self._head = b""
        self._lookahead: h11.Data | h11.EndOfMessage | None = None
        self._wants_trailers = False
        self._trailers_promised = False
        self._websocket_key: bytes | None = None
        self._switched = False
        self._raw = b""  # bytes after a switch of protocols, before the next read
        self._chunks: ChunkScanner | None = None
        self.bad_body: str | None = None  # the body's framing broke before any response

    # -- the request -------------------------------------------------------------------------

    def parse(self, head_size: int) -> None:
        owner = self.owner
        conn = self.conn
        data = self.raw = bytes(owner.pending)
        owner.pending = bytearray()
        conn.receive_data(data)
        event = conn.next_event()
        if not isinstance(event, h11.Request):
            raise HeadError(400, "malformed request head")
        headers: Headers = list(event.headers)
        method = event.method
        version = event.http_version.decode("ascii")
        if method == b"CONNECT":
            raise HeadError(405, "CONNECT is not supported: this is not a forward proxy")
        if version not in ("1.0", "1.1"):
            raise HeadError(505, f"HTTP/{version} is not spoken here")
        authority, target = split_target(event.target, method)
        hosts = 0
        te = cl = False
        upgrade = b""
        connection_tokens: set[bytes] = set()
        for name, value in headers:
            if name == b"host":
                hosts += 1
            elif name == b"transfer-encoding":
                te = True
            elif name == b"content-length":
                cl = True
            elif name == b"upgrade":
                upgrade = value.lower()
            elif name == b"connection":
                connection_tokens.update(t.strip().lower() for t in value.split(b","))
            elif name == b"te":
                self._wants_trailers = b"trailers" in value.lower()
        if hosts > 1:
            raise HeadError(400, "several Host header fields (RFC 9112 §3.2)")
        if te and cl:
            raise HeadError(400, "both Content-Length and Transfer-Encoding (request smuggling)")
        if te and version == "1.0":
            raise HeadError(400, "Transfer-Encoding in an HTTP/1.0 request (RFC 9112 §6.1)")
        if connection_tokens & _FRAMING_NOMINEES:
            raise HeadError(400, "Connection may not nominate framing fields")
        if version == "1.0":
            self._wants_trailers = False
        if te:
            self._chunks = ChunkScanner()
            self._chunks.feed(data[head_size:])
        protocol: bytes | None = None
        upgrades = {t.strip() for t in upgrade.split(b",")}
        if b"upgrade" in connection_tokens and b"reverse" in upgrades:
            self.reverse = True
            return
        if b"upgrade" in connection_tokens and upgrade == b"websocket":
            if method != b"GET":
                raise HeadError(400, "a WebSocket handshake must be a GET (RFC 6455 §4.1)")
            self._websocket_key = websocket_key(headers)
            protocol = b"websocket"
        elif (
            b"upgrade" in connection_tokens
            and upgrade == b"h2c"
            and owner.upgrade_h2c is not None
            and not te
            and not cl
        ):
            settings = [v for n, v in headers if n == b"http2-settings"]
            if len(settings) == 1 and _valid_settings(settings[0]):
                self.h2c_settings = settings[0]
        self.request = UserRequest(
            method=method,
            target=target,
            scheme=owner.scheme,
            authority=authority,
            headers=headers,
            http_version=version,
            client=owner.client,
            server=owner.server,
            protocol=protocol,
            has_body=te or cl,
            subprotocols=offered_subprotocols(headers),
        )
        if owner.requests >= owner.limits.max_requests_per_connection or owner.draining():
            self.close_after = True
        if b"close" in connection_tokens or (
            version == "1.0" and b"keep-alive" not in connection_tokens
        ):
            self.close_after = True

    async def switch_to_h2c(self) -> None:
        """RFC 7540 §3.2: 101, then HTTP/2 on this connection, the request as stream 1."""
        assert self.h2c_settings is not None and self.owner.upgrade_h2c is not None
        while True:  # the request has no body: read to its end so h11 keeps nothing back
            event = self.conn.next_event()
            if event is h11.PAUSED or isinstance(event, h11.EndOfMessage):
                break
        switch = self.conn.send(
            h11.InformationalResponse(
                status_code=101, headers=[(b"connection", b"Upgrade"), (b"upgrade", b"h2c")]
            )
        )
        await self.write(switch)
        rest = self.conn.trailing_data[0]
        await self.owner.upgrade_h2c(self.owner.sock, rest, self.request, self.h2c_settings)

    @property
    def can_send_trailers(self) -> bool:
        return self._wants_trailers

    async def receive(self) -> tuple[bytes, bool]:
        if self._switched:
            if self._raw:
                data, self._raw = self._raw, b""
                return data, True
            data = await self.owner._recv(SWITCHED_RECEIVE_SIZE)
            if not data:
                self.gone = True
                raise ClientGoneError()
            return data, True
        if self.body_done:
            return b"", False
        conn = self.conn
        while True:
            event = self._lookahead
            self._lookahead = None
            if event is None:
                try:
                    event = self._next_body_event()
                except h11.RemoteProtocolError as exc:
                    self._framing_broken(str(exc))
            if event is None:
                if conn.client_is_waiting_for_100_continue:
                    go_on = h11.InformationalResponse(
                        status_code=100, headers=[], reason=b"Continue"
                    )
                    await self.write(conn.send(go_on))
                data = await self.owner._recv()
                if not data and self.owner.eof:
                    self.gone = True
                if self._chunks is not None and not self._chunks.done:
                    try:
                        self._chunks.feed(data)
                    except HeadError as exc:
                        self._framing_broken(str(exc))
                conn.receive_data(data)
                continue
            if isinstance(event, h11.EndOfMessage):
                return b"", False
            chunk = bytes(event.data)
            try:
                after = self._next_body_event()
            except h11.RemoteProtocolError:
                after = None  # reported on the next call
            if isinstance(after, h11.EndOfMessage):
                return chunk, False
            self._lookahead = after
            return chunk, True

    def _framing_broken(self, why: str) -> NoReturn:
        log.info("front end: %s broke the body framing: %s", self.owner.peer, why)
        self.broken = True
        if not self.gone:
            self.bad_body = why
        raise ClientGoneError()

    def _next_body_event(self) -> h11.Data | h11.EndOfMessage | None:
        event = self.conn.next_event()
        if event is h11.NEED_DATA:
            return None
        if event is h11.PAUSED:
            self.body_done = True
            return h11.EndOfMessage()
        if isinstance(event, h11.ConnectionClosed):
            raise h11.RemoteProtocolError("connection closed in the body")
        assert isinstance(event, h11.Data | h11.EndOfMessage)
        if isinstance(event, h11.EndOfMessage):
            self.body_done = True
            if event.headers:
                self.trailers = list(event.headers)
        return event

    async def wait_gone(self) -> None:
        owner = self.owner
        while not self.gone:
            if len(self.read_ahead) > PIPELINE_LIMIT or owner.eof:
                await trio.sleep_forever()
            data = await owner._recv()
            if not data:
                self.gone = True
                return
            self.read_ahead += data

    # -- the response ------------------------------------------------------------------------

    async def informational(self, status: int, headers: Headers) -> None:
        if self.response_started or self.request.http_version == "1.0" or status == 101:
            return
        await self.write(
            self.conn.send(
                h11.InformationalResponse(
                    status_code=status, headers=headers, reason=reason(status)
                )
            )
        )

    def _response_head(self, status: int, headers: Headers, trailers: bool) -> bytes:
        if trailers:
            headers = [(n, v) for n, v in headers if n.lower() != b"content-length"]
        if self.close_after:
            headers = [*headers, (b"connection", b"close")]
        self._trailers_promised = trailers
        try:
            return self.conn.send(
                h11.Response(status_code=status, headers=headers, reason=reason(status))
            )
        except h11.LocalProtocolError as exc:
            self.broken = True
            raise ResponseError(f"response head refused: {exc}") from None

    async def start(
        self, status: int, headers: Headers, *, end: bool = False, trailers: bool = False
    ) -> None:
        self.response_started = True
        head = self._response_head(status, headers, trailers and self._wants_trailers)
        if end:
            await self.write(head + self._send(h11.EndOfMessage()))
        else:
            self._head = head

    def _send(self, event: h11.Data | h11.EndOfMessage) -> bytes:
        try:
            return self.conn.send(event) or b""
        except h11.LocalProtocolError as exc:
            # The backend's body disagrees with its Content-Length: the user must see it cut.
            self.aborted = True
            raise ResponseError(f"backend response framing: {exc}") from None

    async def flush(self) -> None:
        if self._head:
            head, self._head = self._head, b""
            await self.write(head)

    async def send(self, data: bytes, *, end: bool = False) -> None:
        if self._switched:
            if data:
                await self.write(data)
            return
        out = self._head
        self._head = b""
        if data:
            out += self._send(h11.Data(data=data))
        if end:
            out += self._send(h11.EndOfMessage())
        if out:
            await self.write(out)

    async def send_trailers(self, headers: Headers) -> None:
        out = self._head
        self._head = b""
        trailers = headers if self._trailers_promised else []
        await self.write(out + self._send(h11.EndOfMessage(headers=trailers)))

    def abort(self) -> None:
        self.aborted = True

    def carries_tunnel(self) -> None:
        self.owner.on_tunnel()

    async def accept_websocket(self, subprotocol: str | None, headers: Headers) -> None:
        assert self._websocket_key is not None
        while not self.body_done:  # h11 switches only once the (empty) request has ended
            if self._next_body_event() is None:
                break
        fields: Headers = [
            (b"upgrade", b"websocket"),
            (b"connection", b"Upgrade"),
            (b"sec-websocket-accept", websocket_accept(self._websocket_key)),
        ]
        if subprotocol is not None:
            fields.append((b"sec-websocket-protocol", subprotocol.encode("latin-1")))
        fields.extend(headers)
        self.response_started = True
        head = self.conn.send(h11.InformationalResponse(status_code=101, headers=fields))
        self._raw = self.conn.trailing_data[0]
        self._switched = True
        await self.write(head)

    async def write(self, data: bytes) -> None:
        """Write ``data`` under the write deadline; a partial write breaks the connection."""
        if self.broken or self.aborted:
            raise ClientGoneError()
        done = False
        try:
            with trio.move_on_after(self.owner.limits.write_timeout):
                await self.owner.sock.send(data)
                done = True
        except _BROKEN:
            pass
        finally:
            if not done:
                self.broken = True
        if not done:
            raise ClientGoneError()

    def reusable(self) -> bool:
        """The connection can carry the next request (both sides finished cleanly)."""
        conn = self.conn
        if not self.body_done and not self.broken and conn.their_state is h11.SEND_BODY:
            try:  # a request without a body ends at once, with no I/O
                self._next_body_event()
            except h11.RemoteProtocolError:
                return False
        return (
            not (self.aborted or self.broken or self.close_after or self._switched)
            and conn.our_state is h11.DONE
            and conn.their_state is h11.DONE
        )


class ResponseError(ClientGoneError):
    """The response could not be framed for this user; the connection is closed."""

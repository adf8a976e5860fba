"""One HTTP/2 user connection: the engine in its server role (ARCHITECTURE.md, "The front end").

The same engine and driver as the tunnels, so a user's connection has the tunnel's flood
budgets (rapid reset, CONTINUATION, PING/SETTINGS/empty-DATA/WINDOW_UPDATE/PRIORITY floods),
its flow control (a stream's credit returns only as the proxy forwards its body) and its write
deadline. Each stream becomes an :class:`H2Exchange`; an exception in one never leaves its task.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
import trio
from h2.errors import ErrorCodes

from ptth.driver import Connection, Stream
from ptth.engine import BudgetLimits, Liveness, Settings
from ptth.errors import TunnelClosed, TunnelError
from ptth.proto.fields import Headers

from .exchange import Exchange, UserRequest, offered_subprotocols
from .http1 import ClientGoneError
from .limits import FrontLimits

__all__ = ["H2Exchange", "serve_h2"]

log = logging.getLogger("router.frontend")

Handler = Callable[[Exchange], Awaitable[None]]


# A user who cancels streams is normal (a browser leaving a page), a thousand every ten seconds
# is not: that is the Rapid Reset pattern (CVE-2023-44487), closed with ENHANCE_YOUR_CALM.
USER_BUDGETS = BudgetLimits(resets_per_window=1000)


def _settings(limits: FrontLimits) -> Settings:
    return Settings(
        max_concurrent_streams=limits.max_concurrent_streams,
        max_header_list_size=limits.max_header_size,
        enable_connect_protocol=True,
    )


async def serve_h2(
    sock: anyio.abc.ByteStream,
    handler: Handler,
    limits: FrontLimits,
    *,
    client: tuple[str, int],
    server: tuple[str, int],
    scheme: bytes,
    initial: bytes = b"",
    draining: Callable[[], bool] = lambda: False,
    drain_timeout: float = 30.0,
    upgraded: tuple[UserRequest, bytes] | None = None,
    closed: Callable[[TunnelClosed | None], None] | None = None,
) -> None:
    """Serve HTTP/2 on ``sock`` (its preface may be in ``initial``) until it closes.

    ``upgraded``: the HTTP/1.1 request that asked for ``Upgrade: h2c`` and its HTTP2-Settings;
    it becomes stream 1 (RFC 7540 §3.2)."""
    served = 0
    busy = 0
    limit_reached = trio.Event()

    async def on_stream(stream: Stream) -> None:
        nonlocal served, busy
        served += 1
        if served >= limits.max_requests_per_connection:
            limit_reached.set()
        if stream.error is not None:
            return  # reset in the same read it was opened in (Rapid Reset): no work at all
        if busy >= 2 * limits.max_concurrent_streams:
            # ARCHITECTURE.md, attack 1: a stream reset by the client leaves the engine's table
            # at once, but its handler may still be finishing; count handlers too, so reset
            # streams cannot pile up work behind the concurrency limit.
            await stream.reset(ErrorCodes.REFUSED_STREAM)
            return
        busy += 1
        try:
            await _serve_stream(stream)
        finally:
            busy -= 1

    async def _serve_stream(stream: Stream) -> None:
        try:
            exchange = H2Exchange(
                stream,
                scheme=scheme,
                client=client,
                server=server,
                max_fields=limits.max_header_fields,
            )
        except _Refused as refused:
            await stream.send_headers(
                [(b":status", b"%d" % refused.status), (b"content-length", b"0")], end_stream=True
            )
            return
        await handler(exchange)

    connection = Connection(
        sock,
        client_side=False,
        tunnel_id=f"user {client[0]}:{client[1]}",
        settings=_settings(limits),
        liveness=Liveness(
            interval=limits.keepalive_timeout,
            dead_after=limits.keepalive_timeout * 2,
            write_timeout=limits.write_timeout,
        ),
        on_stream=on_stream,
        limits=USER_BUDGETS,
        initial_data=initial,
        upgrade=None if upgraded is None else (upgraded[1], _upgrade_block(upgraded[0])),
    )

    async def supervise() -> None:
        """Header deadline for the preface, idle timeout, requests per connection, drain."""
        with trio.move_on_after(limits.header_timeout):
            await connection.wait_remote_settings()
        if not connection.engine.settings_received:
            await connection.abort()
            return
        idle_since = trio.current_time()
        while not connection.closed:
            if limit_reached.is_set() or draining():
                await connection.drain(drain_timeout)
                return
            if connection.open_streams:
                idle_since = trio.current_time()
            elif trio.current_time() - idle_since >= limits.keepalive_timeout:
                await connection.close(ErrorCodes.NO_ERROR, "idle")
                return
            with trio.move_on_after(min(1.0, limits.keepalive_timeout)):
                await connection.wait_streams_changed()
                await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        await nursery.start(connection.run)
        nursery.start_soon(supervise)
        await connection.wait_closed()
        nursery.cancel_scope.cancel()
    if closed is not None:  # why it closed: the admin listener counts flood-guard trips
        closed(connection.close_reason)


_NOT_IN_H2 = frozenset(
    {
        b"host",
        b"connection",
        b"upgrade",
        b"http2-settings",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
    }
)


def _upgrade_block(request: UserRequest) -> Headers:
    """The HTTP/2 header block of an HTTP/1.1 request that upgraded to h2c."""
    block: Headers = [
        (b":method", request.method),
        (b":scheme", request.scheme),
        (b":authority", request.host.encode("latin-1")),
        (b":path", request.target),
    ]
    te = [(n, v) for n, v in request.headers if n == b"te" and v.lower() == b"trailers"]
    block.extend((n, v) for n, v in request.headers if n not in _NOT_IN_H2 and n != b"te")
    return block + te[:1]


class _Refused(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


class H2Exchange(Exchange):
    """One stream the user opened."""

    def __init__(
        self,
        stream: Stream,
        *,
        scheme: bytes,
        client: tuple[str, int],
        server: tuple[str, int],
        max_fields: int = 100,
    ) -> None:
        self.stream = stream
        block = stream.headers or []
        method = path = authority = protocol = None
        user_scheme = scheme
        headers: Headers = []
        for name, value in block:
            if name[:1] == b":":
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
                elif name == b":protocol":
                    protocol = value
                elif name == b":scheme":
                    user_scheme = value
            else:
                headers.append((name, value))
        if len(headers) > max_fields:
            raise _Refused(431)
        if method is None or (path is None and method != b"CONNECT"):
            raise _Refused(400)
        if method == b"CONNECT" and protocol is None:
            raise _Refused(405)
        self.request = UserRequest(
            method=method,
            target=path or b"/",
            scheme=user_scheme if user_scheme in (b"http", b"https") else scheme,
            authority=authority,
            headers=headers,
            http_version="2",
            client=client,
            server=server,
            protocol=protocol.lower() if protocol else None,
            has_body=not stream.received_end or stream.buffered > 0,
            subprotocols=offered_subprotocols(headers),
        )
        self.response_started = False
        self.trailers = None

    @property
    def can_send_trailers(self) -> bool:
        return True

    async def receive(self) -> tuple[bytes, bool]:
        stream = self.stream
        try:
            data = await stream.receive_data()
        except TunnelError:
            raise ClientGoneError() from None
        more = not (stream.received_end and stream.buffered == 0)
        if not more:
            self.trailers = stream.trailers
        return data, more

    async def wait_gone(self) -> None:
        stream = self.stream
        while stream.error is None and not stream.finished:
            await stream.wait_changed()
        if stream.error is None:
            await trio.sleep_forever()

    async def informational(self, status: int, headers: Headers) -> None:
        if self.response_started or status == 101:
            return
        await self._guard(self.stream.send_headers([(b":status", b"%d" % status), *headers]))

    async def start(
        self, status: int, headers: Headers, *, end: bool = False, trailers: bool = False
    ) -> None:
        self.response_started = True
        block = [(b":status", b"%d" % status), *headers]
        await self._guard(self.stream.send_headers(block, end_stream=end))

    async def flush(self) -> None:
        return

    async def send(self, data: bytes, *, end: bool = False) -> None:
        if data or end:
            await self._guard(self.stream.send_data(data, end_stream=end))

    async def send_trailers(self, headers: Headers) -> None:
        await self._guard(self.stream.send_trailers(headers))

    def abort(self) -> None:
        connection = self.stream.connection
        connection.engine.reset(self.stream.state, ErrorCodes.INTERNAL_ERROR)
        connection.wake_writer()

    async def accept_websocket(self, subprotocol: str | None, headers: Headers) -> None:
        block: Headers = [(b":status", b"200")]
        if subprotocol is not None:
            block.append((b"sec-websocket-protocol", subprotocol.encode("latin-1")))
        block.extend(headers)
        self.response_started = True
        await self._guard(self.stream.send_headers(block))

    @staticmethod
    async def _guard(step: Awaitable[None]) -> None:
        try:
            await step
        except TunnelError:
            raise ClientGoneError() from None

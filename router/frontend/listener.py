"""The front end's listening socket: connection caps, TLS with ALPN, and the protocol choice.

Per accepted connection: over the global or per-address cap it is closed at once; with TLS the
handshake must finish within the header timeout and ALPN picks HTTP/2 or HTTP/1.1; in clear
text the first bytes decide (the HTTP/2 client preface, RFC 9113 §3.3, else HTTP/1.1). Nothing
one connection does can end the listener: every connection's failure stays in its task.
"""

from __future__ import annotations

import logging
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
import trio
from anyio.streams.tls import TLSAttribute, TLSStream

from ptth.engine import CLIENT_PREFACE
from ptth.errors import TunnelClosed

from .exchange import Exchange, UserRequest
from .http1 import H1Connection
from .http2 import serve_h2
from .limits import FrontLimits
from .tls import TLSFiles

__all__ = ["FrontEnd"]

log = logging.getLogger("router.frontend")

Handler = Callable[[Exchange], Awaitable[None]]
# A tunnel handshake on the front end: the socket (TLS already terminated), every byte read from
# it so far, and the client's address (router/tunnel_listener.py, ``accept_stream``).
TunnelHandler = Callable[[anyio.abc.ByteStream, bytes, tuple[str, int]], Awaitable[None]]
_BROKEN = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError)


def _address(sock: anyio.abc.ByteStream, attribute: object) -> tuple[str, int]:
    try:
        address = sock.extra(attribute)
    except anyio.TypedAttributeLookupError:
        return ("-", 0)
    if isinstance(address, tuple) and len(address) >= 2:
        return (str(address[0]), int(address[1]))
    return (str(address), 0)


class FrontEnd:
    """Accept users' connections and hand each request to ``handler`` as an :class:`Exchange`."""

    def __init__(
        self,
        handler: Handler,
        limits: FrontLimits,
        *,
        tls: TLSFiles | None = None,
        h2c_upgrade: bool = False,
        max_connections: int = 10_000,
        max_connections_per_client: int = 2500,
        drain_timeout: float = 30.0,
        tunnel: TunnelHandler | None = None,
    ) -> None:
        self.handler = handler
        self.tunnel = tunnel  # None: tunnel handshakes on this port are refused (403)
        self.limits = limits
        self.tls = tls
        self.h2c_upgrade = h2c_upgrade
        self.max_connections = max_connections
        self.max_connections_per_client = max_connections_per_client
        self.drain_timeout = drain_timeout
        self.draining = False
        self.connections = 0
        self.per_client: Counter[str] = Counter()
        self._h1: set[H1Connection] = set()
        self._h1_scopes: dict[H1Connection, trio.CancelScope] = {}
        self._idle = trio.Event()
        # Told why each HTTP/2 user connection closed (the admin listener's flood-guard trips).
        self.on_h2_closed: Callable[[TunnelClosed | None], None] | None = None

    async def handle(self, sock: anyio.abc.ByteStream) -> None:
        """One accepted connection, from the caps to its close."""
        client = _address(sock, anyio.abc.SocketAttribute.remote_address)
        host = client[0]
        if (
            self.draining
            or self.connections >= self.max_connections
            or self.per_client[host] >= self.max_connections_per_client
        ):
            log.warning("front end: connection from %s refused (connection cap)", host)
            await anyio.aclose_forcefully(sock)
            return
        self.connections += 1
        self.per_client[host] += 1
        counted = True

        def release() -> None:
            """Once: the connection is closed, or it now carries a tunnel (which the tunnel
            listener's admission and drain cover, not the user caps and the users' drain)."""
            nonlocal counted
            if not counted:
                return
            counted = False
            self.connections -= 1
            self.per_client[host] -= 1
            if not self.per_client[host]:
                del self.per_client[host]
            if not self.connections:
                self._idle.set()

        try:
            await self._serve(sock, client, release)
        except _BROKEN:
            pass
        except Exception:
            log.exception("front end: connection from %s failed", host)
        finally:
            release()
            with trio.CancelScope(shield=True):
                await anyio.aclose_forcefully(sock)

    async def _serve(
        self, sock: anyio.abc.ByteStream, client: tuple[str, int], release: Callable[[], None]
    ) -> None:
        server = _address(sock, anyio.abc.SocketAttribute.local_address)
        scheme = b"http"
        initial = b""
        if self.tls is not None:
            scheme = b"https"
            with trio.move_on_after(self.limits.header_timeout):
                try:
                    sock = await TLSStream.wrap(
                        sock,
                        server_side=True,
                        ssl_context=self.tls.context,
                        standard_compatible=False,
                    )
                except (ssl.SSLError, *_BROKEN) as exc:
                    log.info("front end: TLS handshake with %s failed: %s", client[0], exc)
                    return
            if not isinstance(sock, TLSStream):
                return
            http2 = sock.extra(TLSAttribute.alpn_protocol) == "h2"
        else:
            with trio.move_on_after(self.limits.header_timeout):
                initial = await self._sniff(sock)
            http2 = initial.startswith(CLIENT_PREFACE)
            if not initial:
                return
        if http2:
            await self._run_h2(sock, client, server, scheme, initial)
        else:
            await self._run_h1(sock, client, server, scheme, initial, release)

    @staticmethod
    async def _sniff(sock: anyio.abc.ByteStream) -> bytes:
        """The first bytes, enough to tell the HTTP/2 preface from an HTTP/1.1 request line."""
        data = b""
        while len(data) < len(CLIENT_PREFACE) and CLIENT_PREFACE.startswith(data):
            try:
                more = await sock.receive(65536)
            except _BROKEN:
                return b""
            data += more
        return data

    async def _run_h1(
        self,
        sock: anyio.abc.ByteStream,
        client: tuple[str, int],
        server: tuple[str, int],
        scheme: bytes,
        initial: bytes,
        release: Callable[[], None],
    ) -> None:
        async def upgrade(
            raw: anyio.abc.ByteStream, rest: bytes, request: UserRequest, settings: bytes
        ) -> None:
            await self._run_h2(raw, client, server, scheme, rest, upgraded=(request, settings))

        tunnel = None
        if self.tunnel is not None:
            handler = self.tunnel

            async def tunnel(raw: anyio.abc.ByteStream, read: bytes) -> None:
                await handler(raw, read, client)

        connection = H1Connection(
            sock,
            self.handler,
            self.limits,
            client=client,
            server=server,
            scheme=scheme,
            initial=initial,
            upgrade_h2c=upgrade if self.h2c_upgrade else None,
            draining=lambda: self.draining,
            tunnel=tunnel,
            on_tunnel=release,
        )
        scope = trio.CancelScope()
        self._h1.add(connection)
        self._h1_scopes[connection] = scope
        try:
            with scope:
                await connection.run()
        finally:
            self._h1.discard(connection)
            del self._h1_scopes[connection]

    async def _run_h2(
        self,
        sock: anyio.abc.ByteStream,
        client: tuple[str, int],
        server: tuple[str, int],
        scheme: bytes,
        initial: bytes,
        upgraded: tuple[UserRequest, bytes] | None = None,
    ) -> None:
        await serve_h2(
            sock,
            self.handler,
            self.limits,
            client=client,
            server=server,
            scheme=scheme,
            initial=initial,
            draining=lambda: self.draining,
            drain_timeout=self.drain_timeout,
            upgraded=upgraded,
            closed=self.on_h2_closed,
        )

    def drain(self) -> None:
        """Stop taking requests: idle HTTP/1.1 connections close now, busy ones after their
        response (``Connection: close``), HTTP/2 connections get a graceful GOAWAY."""
        self.draining = True
        for connection in list(self._h1):
            if connection.idle:
                self._h1_scopes[connection].cancel()
        if not self.connections:
            self._idle.set()

    async def wait_closed(self) -> None:
        """Until every user connection is closed (after :meth:`drain`)."""
        while self.connections:
            for connection in list(self._h1):
                if connection.idle:
                    self._h1_scopes[connection].cancel()
            with trio.move_on_after(0.1):
                await self._idle.wait()
            self._idle = trio.Event()

    def reload_tls(self) -> None:
        if self.tls is not None:
            self.tls.reload()

"""httpsock tunnels on the front end (ARCHITECTURE.md, "Transports" > "Socket over plain HTTP").

A backend dialling ``http://`` or ``https://`` speaks the httpsock protocol to ``--httpsock-path``
(default ``/.well-known/ptth/socket``). Each request is handed, as a transport-neutral
:class:`ptth.httpsock.Request`, to the same :class:`ptth.httpsock.Listener` that serves ASGI
servers; each session it accepts is a byte stream that goes to the tunnel listener like any
tunnel (admission, the handshake deadline, authentication, limits, the drain).
"""

from __future__ import annotations

import dataclasses
import logging

import anyio
import anyio.abc
import trio

from ptth.errors import ConfigError
from ptth.httpsock import HttpSockAttribute, Limits, Listener, Request, Response, ServerStream
from ptth.httpsock.protocol import parse_offset
from ptth.proto.fields import Headers

from .config import RouterConfig
from .frontend.exchange import Exchange
from .frontend.http1 import ClientGoneError
from .tunnel_listener import TunnelListener

__all__ = ["HttpSockFront"]

log = logging.getLogger("router.tunnel")


class HttpSockFront:
    """The httpsock path of the front end: :meth:`handle` answers its requests, :meth:`serve`
    (a task of the router's) runs each accepted session as a tunnel."""

    def __init__(self, config: RouterConfig, tunnels: TunnelListener) -> None:
        path = config.httpsock_path
        if not path.startswith("/") or not path.isascii() or any(c in path for c in " ?#"):
            raise ConfigError(f"httpsock_path must be a plain path starting with '/': {path!r}")
        try:
            limits = Limits(
                poll_timeout=config.httpsock_poll_timeout,
                idle_timeout=config.httpsock_idle_timeout,
            )
        except ValueError as exc:
            raise ConfigError(f"httpsock: {exc}") from None
        if config.httpsock_max_sessions < 1 or config.httpsock_max_sessions_per_client < 0:
            raise ConfigError("httpsock_max_sessions must be at least 1, per client >= 0")
        self.path = path.rstrip("/").encode("ascii")
        self.allowed = config.front_end_tunnels
        # A session lives in one process; with several workers its requests would reach
        # others, which do not know it (ARCHITECTURE.md, "Socket over plain HTTP").
        self.single_process = str(getattr(config, "workers", "1")).strip() == "1"
        self.tunnels = tunnels
        self.listener = Listener(
            limits=limits,
            max_sessions=config.httpsock_max_sessions,
            max_sessions_per_client=config.httpsock_max_sessions_per_client or None,
        )
        self._scope = trio.CancelScope()

    def matches(self, target: bytes) -> bool:
        path = target.partition(b"?")[0]
        return path == self.path or path.startswith(self.path + b"/")

    async def handle(self, exchange: Exchange) -> None:
        """One request below the httpsock path (403 with ``--no-front-end-tunnels``)."""
        request = exchange.request
        if not self.allowed:
            await _answer(
                exchange,
                403,
                [(b"content-type", b"text/plain; charset=utf-8")],
                b"this router takes no tunnels on its public port (--no-front-end-tunnels); "
                b"dial its tunnel port\n",
            )
            return
        if not self.single_process:
            await _answer(
                exchange,
                403,
                [(b"content-type", b"text/plain; charset=utf-8")],
                b"httpsock tunnels need a router with one worker (--workers 1); dial tcp://, "
                b"tls://, ws:// or wss:// here\n",
            )
            return
        path = request.target.partition(b"?")[0][len(self.path) :]
        head = Request(
            method=request.method.decode("latin-1"),
            path=path.decode("latin-1"),
            headers={n.decode("latin-1"): v.decode("latin-1") for n, v in request.headers},
            client=request.client,
        )
        length = parse_offset(head.headers.get("content-length")) if request.has_body else 0
        admitted = self.listener.admit(head, length)
        if isinstance(admitted, Response):  # refused before a byte of the body is read
            await _send(exchange, admitted)
            return
        try:
            body = bytearray()
            more = request.has_body
            while more:
                data, more = await exchange.receive()
                body += data
                if len(body) > admitted:
                    await _answer(exchange, 413, [], b"at most %d bytes here\n" % admitted)
                    return
            if path.strip(b"/"):
                # A request on a session: its connection now carries a tunnel's bytes, so
                # the drain closes it with the tunnels rather than waiting for a held GET.
                exchange.carries_tunnel()
            response = await self.listener.respond(dataclasses.replace(head, body=bytes(body)))
        except ClientGoneError:
            return
        finally:
            self.listener.release(admitted)
        await _send(exchange, response)

    async def serve(self) -> None:
        """Run every accepted session as a tunnel until :meth:`stop` (then reset the rest)."""
        with self._scope:
            try:
                async with trio.open_nursery() as tunnels:
                    while True:
                        stream = await self.listener.accept()
                        tunnels.start_soon(self._run, stream)
            finally:
                with trio.CancelScope(shield=True):
                    await self.listener.aclose()

    def stop(self) -> None:
        """End :meth:`serve`: after the router's drain, the sessions still open are reset."""
        self._scope.cancel()

    async def _run(self, stream: ServerStream) -> None:
        client = stream.extra(HttpSockAttribute.client)
        await self.tunnels.accept_stream(stream, client=client, transport="httpsock")


async def _send(exchange: Exchange, response: Response) -> None:
    headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in response.headers]
    await _answer(exchange, response.status, headers, response.body)


async def _answer(exchange: Exchange, status: int, headers: Headers, body: bytes) -> None:
    fields: Headers = [
        *[(n, v) for n, v in headers if n not in (b"cache-control", b"content-length")],
        (b"cache-control", b"no-store"),
    ]
    if status != 204:  # a 204 has no Content-Length (RFC 9110 §8.6)
        fields.append((b"content-length", b"%d" % len(body)))
    try:
        await exchange.start(status, fields, end=not body)
        if body:
            await exchange.send(body, end=True)
    except (ClientGoneError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass  # the client left; a retry asks again

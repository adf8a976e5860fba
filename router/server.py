"""Run the whole router: the tunnel listener and the native front end, with a graceful drain."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anyio
import anyio.abc
import trio
from anyio.streams.stapled import MultiListener

from ptth.logs import drain_summary
from ptth.proto.address import format_address, parse_address

from . import worker_process
from .admin import admin_for
from .config import RouterConfig
from .frontend import FrontEnd, FrontLimits, TLSFiles
from .frontend.exchange import Exchange
from .httpsock_front import HttpSockFront
from .proxy_common import ProxyContext
from .proxy_http import forward
from .proxy_ws import forward_websocket
from .registry import Registry
from .tunnel_listener import TunnelListener
from .tunnel_tls import plaintext_token_warning
from .ws_tunnel import serve_ws_tunnel

__all__ = ["Router", "RouterAddresses"]

log = logging.getLogger("router")


@dataclass(frozen=True)
class RouterAddresses:
    """Where the router actually listens (ports resolved when the config said 0)."""

    http: tuple[str, int]
    tunnel: tuple[str, int] | None  # None: no separate tunnel port (``--tunnel none``)
    tls: bool = False
    admin: tuple[str, int] | None = None  # the admin listener; None: off or could not bind

    @property
    def admin_url(self) -> str:
        """The admin listener's base URL (LookupError when there is none)."""
        if self.admin is None:
            raise LookupError("this router has no admin listener (--admin none)")
        return "http://" + format_address(*self.admin)

    @property
    def http_url(self) -> str:
        return ("https://" if self.tls else "http://") + format_address(*self.http)

    @property
    def tunnel_addr(self) -> str:
        """The tunnel port as HOST:PORT (LookupError with ``--tunnel none``)."""
        if self.tunnel is None:
            raise LookupError("this router has no separate tunnel port (--tunnel none)")
        return format_address(*self.tunnel)

    @property
    def front_end_addr(self) -> str:
        """Where a backend dials the front end: ``tcp://`` or ``tls://`` HOST:PORT."""
        return ("tls://" if self.tls else "tcp://") + format_address(*self.http)


class Router:
    """`await nursery.start(router.serve)` gives the bound addresses; `shutdown()` drains."""

    def __init__(self, config: RouterConfig | None = None) -> None:
        self.config = config = config or RouterConfig()
        self.registry = Registry(
            default_service=config.default_service,
            grace=config.grace,
            queue_timeout=config.queue_timeout,
        )
        self.listener = TunnelListener(config, self.registry)
        self.httpsock = HttpSockFront(config, self.listener)
        warning = plaintext_token_warning(config)
        if warning is not None:
            log.warning("%s", warning)
        self.context = ProxyContext(
            config=config,
            registry=self.registry,
            trusted_proxies=frozenset(config.trusted_proxies),
        )
        tls = None
        if config.tls_cert is not None and config.tls_key is not None:
            tls = TLSFiles(config.tls_cert, config.tls_key)  # ConfigError if unreadable
        self.front = FrontEnd(
            self.handle,
            FrontLimits(
                header_timeout=config.header_timeout,
                keepalive_timeout=config.keepalive_timeout,
                write_timeout=config.write_timeout,
                max_requests_per_connection=config.max_requests_per_connection,
                max_header_size=config.max_header_size,
                max_header_fields=config.max_header_fields,
                max_concurrent_streams=config.max_concurrent_streams,
            ),
            tls=tls,
            h2c_upgrade=config.h2c_upgrade,
            max_connections=config.max_connections,
            max_connections_per_client=config.max_connections_per_client,
            drain_timeout=config.drain_timeout,
            tunnel=self._front_end_tunnel if config.front_end_tunnels else None,
        )
        self._tunnel_path = config.tunnel_path.encode("ascii")
        self._ws_path = config.ws_path.encode("ascii")
        self._shutdown = trio.Event()
        self.admin = admin_for(self)  # ConfigError when --admin names a public port

    async def handle(self, exchange: Exchange) -> None:
        """Every user request: a WebSocket tunnel (ARCHITECTURE.md, "Transports"), or a
        WebSocket session or a plain request, proxied."""
        if exchange.request.target.partition(b"?")[0] == self._ws_path:
            await serve_ws_tunnel(exchange, self.listener, allowed=self.config.front_end_tunnels)
        elif self.httpsock.matches(exchange.request.target):
            await self.httpsock.handle(exchange)
        elif exchange.request.protocol == b"websocket":
            await forward_websocket(self.context, exchange)
        else:
            await forward(self.context, exchange)

    async def _front_end_tunnel(
        self, sock: anyio.abc.ByteStream, initial: bytes, client: tuple[str, int]
    ) -> None:
        """A plain ReverseHTTP handshake on the front end's port: the tunnel port's rules."""
        await self.listener.accept_stream(
            sock, initial=initial, client=client[0], transport="front end", path=self._tunnel_path
        )

    def _log_drain(self) -> None:
        """Say what the drain waits for (ARCHITECTURE.md, "Logs")."""
        ctx = self.context
        websockets = ctx.websockets
        requests = max(0, ctx.in_flight - websockets)
        tunnels = len(self.listener.connections)
        timeout = self.config.drain_timeout
        log.info(
            "%s",
            drain_summary(websockets, requests, timeout, tunnels),
            extra={
                "event": "draining",
                "websockets": websockets,
                "requests": requests,
                "tunnels": tunnels,
                "timeout": timeout,
            },
        )

    def shutdown(self) -> None:
        """Start the graceful drain; ``serve`` returns when it is done."""
        self._shutdown.set()

    def reload(self) -> None:
        """SIGHUP: reload what can change without a restart (TLS certificates, tokens file)."""
        self.front.reload_tls()
        if self.listener.tls is not None:
            self.listener.tls.reload()
        self.listener.reload_tokens()

    async def serve(
        self, *, task_status: trio.TaskStatus[RouterAddresses] = trio.TASK_STATUS_IGNORED
    ) -> None:
        separate = self.config.tunnel.strip().lower() != "none"
        front_host, front_port = parse_address(self.config.http, allow_port_zero=True)
        # A worker of several inherits its sockets (ARCHITECTURE.md, "Several cores").
        front = await worker_process.listen("http", front_host, front_port)
        tunnels: MultiListener[anyio.abc.SocketStream] | None = None
        tunnel_bound: tuple[str, int] | None = None
        if separate:
            try:
                tunnel_host, tunnel_port = parse_address(self.config.tunnel, allow_port_zero=True)
                tunnels = await worker_process.listen("tunnel", tunnel_host, tunnel_port)
            except BaseException:
                await front.aclose()
                raise
            bound = tunnels.extra(anyio.abc.SocketAttribute.local_address)
            tunnel_bound = (str(bound[0]), int(bound[1]))
        front_bound = front.extra(anyio.abc.SocketAttribute.local_address)
        async with trio.open_nursery() as nursery:
            tunnel_scope = trio.CancelScope()
            front_scope = trio.CancelScope()

            async def run_tunnel_port() -> None:
                if tunnels is None:
                    return
                with tunnel_scope:
                    async with tunnels:
                        listeners = [
                            listener
                            for listener in tunnels.listeners
                            if isinstance(listener, anyio.abc.SocketListener)
                        ]
                        await self.listener.serve(listeners)

            connections = trio.CancelScope()

            async def accept(listener: anyio.abc.SocketListener, group: trio.Nursery) -> None:
                while True:
                    try:
                        sock = await listener.accept()
                    except OSError as exc:  # EMFILE and the like: wait, never die
                        log.warning("front end: accept failed: %s", exc)
                        await trio.sleep(0.1)
                        continue
                    group.start_soon(self.front.handle, sock)

            async def run_front() -> None:
                # Connections live in their own nursery so that the drain can close the
                # listening sockets (new users are refused) while requests finish.
                with connections:
                    async with trio.open_nursery() as group:
                        with front_scope:
                            async with front, trio.open_nursery() as accepting:
                                await worker_process.warm_up(lambda: len(self.registry.tunnels()))
                                for listener in front.listeners:
                                    assert isinstance(listener, anyio.abc.SocketListener)
                                    accepting.start_soon(accept, listener, group)

            nursery.start_soon(run_tunnel_port)
            nursery.start_soon(run_front)
            nursery.start_soon(self.httpsock.serve)
            admin_bound = None if self.admin is None else await nursery.start(self.admin.serve)
            addresses = RouterAddresses(
                http=(str(front_bound[0]), int(front_bound[1])),
                tunnel=tunnel_bound,
                tls=self.front.tls is not None,
                admin=admin_bound,
            )
            # The first line's shape is what scripts (and tests) read the ports from.
            if tunnel_bound is not None:
                log.info(
                    "front end on %s, tunnel port on %s", addresses.http_url, addresses.tunnel_addr
                )
            else:
                log.info("front end on %s, no separate tunnel port", addresses.http_url)
            if self.config.front_end_tunnels:
                log.info(
                    "front end takes tunnels too: backends may dial %s, or %s://%s%s",
                    addresses.front_end_addr,
                    "wss" if addresses.tls else "ws",
                    format_address(*addresses.http),
                    self.config.ws_path,
                )
            if self.admin is not None:
                self.admin.started(addresses)
            task_status.started(addresses)
            await self._shutdown.wait()
            log.info("shutting down: draining requests and tunnels")
            self._log_drain()
            # Users first: no new connections, in-flight requests finish (drain_timeout);
            # tunnels must outlive those requests, then get drained themselves.
            self.listener.draining = True
            self.front.drain()
            front_scope.cancel()
            with trio.move_on_after(self.config.drain_timeout) as users:
                await self.front.wait_closed()
            if users.cancelled_caught:
                log.warning(
                    "drain timeout: %d request(s) still open after %g s; closing them",
                    self.context.in_flight,
                    self.config.drain_timeout,
                )
            # Tunnels on the front end's port (plain handshake, WebSocket) live in its
            # connections' tasks but no longer count as users: drain them with the others
            # before those tasks are cancelled.
            with trio.move_on_after(self.config.drain_timeout):
                await self.listener.drain()
            connections.cancel()
            tunnel_scope.cancel()
            self.httpsock.stop()
            if self.admin is not None:
                self.admin.stop()
            log.info("router stopped")

"""Run the whole router: tunnel listener + hypercorn front end, with a graceful drain."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anyio
import anyio.abc
import trio
from hypercorn.trio import serve as hypercorn_serve

from ptth.proto.address import format_address, parse_address
from ptth.proto.ws_frames import MAX_MESSAGE_SIZE

from . import _hypercorn_patches, _hypercorn_write, _hypercorn_ws
from .app import RouterApp
from .config import RouterConfig
from .proxy_common import ProxyContext
from .registry import Registry
from .tunnel_listener import TunnelListener

__all__ = ["Router", "RouterAddresses"]

log = logging.getLogger("router")


@dataclass(frozen=True)
class RouterAddresses:
    """Where the router actually listens (ports resolved when the config said 0)."""

    http: tuple[str, int]
    tunnel: tuple[str, int]

    @property
    def http_url(self) -> str:
        return "http://" + format_address(*self.http)

    @property
    def tunnel_addr(self) -> str:
        return format_address(*self.tunnel)


class Router:
    """`await nursery.start(router.serve)` gives the bound addresses; `shutdown()` drains."""

    def __init__(self, config: RouterConfig | None = None) -> None:
        self.config = config or RouterConfig()
        self.registry = Registry(
            default_service=self.config.default_service,
            grace=self.config.grace,
            queue_timeout=self.config.queue_timeout,
        )
        self.listener = TunnelListener(self.config, self.registry)
        self.context = ProxyContext(
            config=self.config,
            registry=self.registry,
            trusted_proxies=frozenset(self.config.trusted_proxies),
        )
        self.app = RouterApp(self.context)
        self._shutdown = trio.Event()

    def shutdown(self) -> None:
        """Start the graceful drain; ``serve`` returns when it is done."""
        self._shutdown.set()

    def _hypercorn_config(self) -> _hypercorn_write.FrontConfig:
        cfg = _hypercorn_write.FrontConfig()
        cfg.bind = [self.config.http]
        cfg.accesslog = None
        cfg.errorlog = logging.getLogger("router.frontend")
        cfg.graceful_timeout = self.config.drain_timeout
        cfg.keep_alive_timeout = self.config.read_timeout
        cfg.h2_max_concurrent_streams = 100
        cfg.keep_alive_max_requests = 1000
        # A user who takes no response bytes for this long loses the connection (row 13).
        cfg.send_timeout = self.config.response_idle_timeout
        # The backend's Server and Date are the ones users should see; the proxy adds a Date
        # only when the backend sent none (RFC 9110 §6.6.1), never a second one.
        cfg.include_server_header = False
        cfg.include_date_header = False
        cfg.websocket_max_message_size = MAX_MESSAGE_SIZE  # the limit inside the tunnel too
        return cfg

    async def serve(
        self, *, task_status: trio.TaskStatus[RouterAddresses] = trio.TASK_STATUS_IGNORED
    ) -> None:
        _hypercorn_patches.install()
        _hypercorn_write.install()
        _hypercorn_ws.install()
        tunnel_host, tunnel_port = parse_address(self.config.tunnel, allow_port_zero=True)
        listener = await anyio.create_tcp_listener(local_host=tunnel_host, local_port=tunnel_port)
        tunnel_bound = listener.extra(anyio.abc.SocketAttribute.local_address)
        async with trio.open_nursery() as nursery:
            tunnel_scope = trio.CancelScope()

            async def run_tunnel_port() -> None:
                with tunnel_scope:
                    async with listener:
                        await listener.serve(self.listener.handle)

            nursery.start_soon(run_tunnel_port)
            front_done = trio.Event()

            async def run_front(task_status: trio.TaskStatus[list[str]]) -> None:
                try:
                    await hypercorn_serve(
                        self.app,  # type: ignore[arg-type]
                        self._hypercorn_config(),
                        shutdown_trigger=self._shutdown.wait,
                        task_status=task_status,
                    )
                finally:
                    front_done.set()

            binds: list[str] = await nursery.start(run_front)
            host, _, port = binds[0].split("://", 1)[1].rpartition(":")
            addresses = RouterAddresses(
                http=(host.strip("[]"), int(port)),
                tunnel=(str(tunnel_bound[0]), int(tunnel_bound[1])),
            )
            log.info(
                "front end on %s, tunnel port on %s", addresses.http_url, addresses.tunnel_addr
            )
            task_status.started(addresses)
            await self._shutdown.wait()
            log.info("shutting down: draining requests and tunnels")
            # hypercorn stops accepting and finishes in-flight requests (graceful_timeout);
            # tunnels must outlive those requests, then get drained themselves.
            self.listener.draining = True
            await front_done.wait()
            with trio.move_on_after(self.config.drain_timeout):
                await self.listener.drain()
            tunnel_scope.cancel()
            log.info("router stopped")

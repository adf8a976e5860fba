"""The admin listener: ``/metrics``, ``/healthz``, ``/readyz``, ``/api/status``, the status page.

It listens on its own address (``--admin``, default 127.0.0.1:8889), never the public port: an
operator's view of the router is not something users may reach. :class:`Admin` wires itself into
the router it watches (the proxies' observer, a registry watcher) and serves what it counted
(ARCHITECTURE.md, "Operations: the admin listener").
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import TYPE_CHECKING

import trio

from ptth.errors import ConfigError
from ptth.proto.address import format_address, parse_address

from .. import worker_process
from ..proxy_common import Finished
from ..registry import RouterTunnel
from .http import AdminRequest, Reply, Streamed, serve_listeners
from .inspector import Inspected, Inspector, record
from .metrics import LiveState, Metrics
from .status import Rates, RouterFacts, snapshot

if TYPE_CHECKING:
    from ..server import Router, RouterAddresses

__all__ = ["Admin", "admin_address", "admin_for"]

log = logging.getLogger("router.admin")

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATUS_INTERVAL = 1.0  # seconds between status events on /api/events (and rate samples)
STATIC = {
    "/": ("page.html", "text/html; charset=utf-8"),
    "/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/page.css": ("page.css", "text/css; charset=utf-8"),
}


def admin_address(config_admin: str, public: list[str]) -> tuple[str, int] | None:
    """``--admin`` as (host, port), or None for ``none``; ConfigError when it names one of the
    router's public ports (``public``: the front end's and the tunnel port's HOST:PORT)."""
    if config_admin.strip().lower() in ("none", "off", ""):
        return None
    host, port = parse_address(config_admin, allow_port_zero=True)
    for other in public:
        if other.strip().lower() == "none":
            continue
        _, other_port = parse_address(other, allow_port_zero=True)
        if port and port == other_port:
            raise ConfigError(
                f"admin {config_admin!r} is on a public port ({other}); give it its own"
            )
    context = worker_process.current()
    if context is not None and port:
        port += context.index  # one admin listener per worker (ARCHITECTURE.md, "Several cores")
    return host, port


def admin_for(router: Router) -> Admin | None:
    """The router's admin listener, or None with ``--admin none`` (then nothing is counted)."""
    cfg = router.config
    address = admin_address(cfg.admin, [cfg.http, cfg.tunnel])
    return None if address is None else Admin(router, address)


class Admin:
    def __init__(self, router: Router, address: tuple[str, int]) -> None:
        self.router = router
        self.address = address
        self.inspector = Inspector(
            router.config.inspector_size, bodies=router.config.inspect_bodies
        )
        self.body_limit = self.inspector.body_limit
        context = router.context
        self.metrics = Metrics(
            LiveState(
                tunnels=router.registry.tunnels,
                in_flight=lambda: context.in_flight,
                queued=lambda: router.registry.queued,
                websockets=lambda: context.websockets,
                refusals=lambda: router.listener.refusals,
            )
        )
        self.rates = Rates()
        self.addresses: RouterAddresses | None = None
        self.bound: tuple[str, int] | None = None
        self.started_at = 0.0
        self._scope = trio.CancelScope()
        context.observer = self
        router.registry.watchers.append(self._tunnel_event)
        router.front.on_h2_closed = self.metrics.user_connection_closed

    # -- the observer (the proxies call it once per request) ---------------------------------

    def finished(self, done: Finished) -> None:
        self.metrics.finished(done)
        self.inspector.add(done)

    def _tunnel_event(self, event: str, tunnel: RouterTunnel) -> None:
        self.metrics.tunnel_event(event, tunnel)
        self.inspector.changed()  # live pages show a tunnel that came or went at once

    # -- life --------------------------------------------------------------------------------

    async def serve(
        self, *, task_status: trio.TaskStatus[tuple[str, int] | None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind and serve until :meth:`stop`. A port that cannot be bound is logged and the
        router runs without its admin listener (started with None): losing the operator's view
        must not take the data path down."""
        host, port = self.address
        self.started_at = trio.current_time()
        with self._scope:
            try:
                listeners = await trio.open_tcp_listeners(port, host=host)
            except OSError as exc:
                log.error(
                    "admin listener: cannot listen on %s: %s; running without it",
                    format_address(host, port),
                    exc,
                )
                task_status.started(None)
                return
            try:
                name = listeners[0].socket.getsockname()
                self.bound = (str(name[0]), int(name[1]))
                task_status.started(self.bound)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._sample_rates)
                    await serve_listeners(listeners, self.handle)
            finally:
                for listener in listeners:
                    await trio.aclose_forcefully(listener)

    def started(self, addresses: RouterAddresses) -> None:
        """The router listens: /readyz answers 200 from now on (until the drain)."""
        self.addresses = addresses
        if self.bound is not None:
            log.info("status page, /metrics and /api/status on %s", self.url)

    def stop(self) -> None:
        self._scope.cancel()

    @property
    def url(self) -> str:
        if self.bound is None:
            raise LookupError("the admin listener is not listening")
        return "http://" + format_address(*self.bound)

    @property
    def draining(self) -> bool:
        return self.router.listener.draining

    async def _sample_rates(self) -> None:
        while True:
            self.rates.sample(trio.current_time(), self.metrics.served, self.metrics.errors)
            await trio.sleep(STATUS_INTERVAL)

    # -- requests ----------------------------------------------------------------------------

    async def handle(self, request: AdminRequest) -> Reply | Streamed:
        path = request.path
        if not self._host_allowed(request):
            return Reply(403, b"this Host is not the admin listener's (DNS rebinding guard)\n")
        if path == "/metrics":
            return Reply(200, self.metrics.render(), METRICS_TYPE)
        if path == "/healthz":
            return Reply(200, b"ok\n")
        if path == "/readyz":
            if self.draining:
                return Reply(503, b"draining\n")
            if self.addresses is None:
                return Reply(503, b"starting\n")
            return Reply(200, b"ready\n")
        if path == "/api/status":
            return _json(self.status())
        if path == "/api/requests":
            return _json({"requests": [record(item) for item in self.inspector.recent()]})
        if path == "/api/events":
            return Streamed(self._events)
        if path in STATIC:
            name, kind = STATIC[path]
            return Reply(200, resources.files(__package__).joinpath(name).read_bytes(), kind)
        return Reply(404, b"not found: try /, /metrics, /healthz, /readyz, /api/status\n")

    def _host_allowed(self, request: AdminRequest) -> bool:
        """On loopback, only a Host that cannot be rebound (an IP literal, localhost): else a
        web page the operator has open could point its own name at 127.0.0.1 and read this
        listener from the operator's browser (DNS rebinding)."""
        if self.bound is None or not ipaddress.ip_address(self.bound[0]).is_loopback:
            return True
        host = next((v for n, v in request.headers if n == b"host"), b"").decode("latin-1")
        host = host.lower()
        if host.startswith("["):
            host = host[1 : host.find("]")]
        elif host.count(":") == 1:
            host = host.partition(":")[0]
        if host == "localhost" or host.endswith(".localhost"):
            return True
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return False
        return True

    def status(self) -> dict[str, object]:
        now = trio.current_time()
        addresses = self.addresses
        facts = RouterFacts(
            ready=addresses is not None and not self.draining,
            draining=self.draining,
            started=self.started_at,
            front_end=None if addresses is None else addresses.http_url,
            tunnel_port=None
            if addresses is None or addresses.tunnel is None
            else addresses.tunnel_addr,
            in_flight=self.router.context.in_flight,
            queued=self.router.registry.queued,
            websockets=self.router.context.websockets,
        )
        return snapshot(
            facts,
            self.router.registry.tunnels(),
            self.metrics.draining_tunnels(),
            self.metrics,
            self.rates,
            now,
        ) | {"time": time.time(), "inspect_bodies": bool(self.body_limit)}

    async def _events(self) -> AsyncIterator[bytes]:
        """Server-sent events: ``status`` every second and when a tunnel comes or goes,
        ``request`` as each one finishes."""
        receive = self.inspector.subscribe()
        with receive:
            yield b"retry: 1000\n\n" + _event("status", self.status())
            next_status = trio.current_time() + STATUS_INTERVAL
            while True:
                item: Inspected | None = None
                timed_out = True
                with trio.move_on_at(next_status):  # never yield inside a cancel scope
                    item = await receive.receive()
                    timed_out = False
                if item is not None:
                    yield _event("request", record(item))
                    continue
                if not timed_out:
                    # A tunnel came or went: let its tunnel settle in the registry first, and
                    # fold a burst of changes into one event.
                    await trio.sleep(0.05)
                yield _event("status", self.status())
                next_status = trio.current_time() + STATUS_INTERVAL


def _json(data: object) -> Reply:
    return Reply(200, json.dumps(data).encode() + b"\n", "application/json")


def _event(name: str, data: object) -> bytes:
    # JSON has no raw newline, so one data: line carries it (the SSE format, WHATWG HTML §9.2).
    return b"event: %s\ndata: %s\n\n" % (name.encode(), json.dumps(data).encode())

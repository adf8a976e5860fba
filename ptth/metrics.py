"""The helper's own metrics (``--metrics HOST:PORT``): what one backend sees of its tunnels.

The router's admin listener counts what users see (ARCHITECTURE.md, "Operations: the admin
listener"); a helper behind NAT has its own view worth scraping: its tunnels to each router and
their RTT, reconnects and why, the requests its app answered by status class. Counting is plain
integer increments on the request path; prometheus-client only formats them when scraped, from
a registry of this helper's own (several helpers in one process do not mix).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import anyio
import anyio.abc
import h11
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .proto.address import parse_address

__all__ = ["HelperMetrics", "TunnelView", "failure_reason", "serve_metrics"]

log = logging.getLogger("ptth.metrics")

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
MAX_HEAD = 16 * 1024
READ_TIMEOUT = 10.0


@dataclass(frozen=True)
class TunnelView:
    """One live tunnel, as the collector shows it."""

    router: str
    tunnel_id: str
    open_streams: int
    rtt: float | None


def _status_class(status: int | None) -> str:
    return "none" if status is None else f"{status // 100}xx"


class HelperMetrics:
    """Counters the backend updates; ``tunnels`` gives the live tunnels when scraped."""

    def __init__(self, tunnels: Callable[[], Iterable[TunnelView]], instance: str) -> None:
        self._tunnels = tunnels
        self.instance = instance
        self.requests: Counter[tuple[str, str]] = Counter()  # (kind, status class)
        self.in_flight = [0, 0]  # http, websocket
        self.registered: Counter[str] = Counter()  # by router
        self.failures: Counter[tuple[str, str]] = Counter()  # (router, reason)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    def stream_started(self, websocket: bool) -> None:
        self.in_flight[websocket] += 1

    def stream_finished(self, websocket: bool, status: int | None) -> None:
        self.in_flight[websocket] -= 1
        self.requests["websocket" if websocket else "http", _status_class(status)] += 1

    def tunnel_registered(self, router: str) -> None:
        self.registered[router] += 1

    def dial_failed(self, router: str, reason: str) -> None:
        self.failures[router, reason] += 1

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def tunnels(self) -> list[TunnelView]:
        return list(self._tunnels())


class _Collector(Collector):
    def __init__(self, metrics: HelperMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        requests = CounterMetricFamily(
            "ptth_helper_requests",
            "Requests this helper's app (or upstream) answered, by kind and status class",
            labels=["kind", "status_class"],
        )
        for (kind, status_class), count in sorted(m.requests.items()):
            requests.add_metric([kind, status_class], count)
        yield requests
        in_flight = GaugeMetricFamily(
            "ptth_helper_in_flight", "Requests being answered now, by kind", labels=["kind"]
        )
        in_flight.add_metric(["http"], m.in_flight[0])
        in_flight.add_metric(["websocket"], m.in_flight[1])
        yield in_flight
        views = m.tunnels()
        tunnels = GaugeMetricFamily(
            "ptth_helper_tunnels", "Live tunnels, by router", labels=["router"]
        )
        per_router = Counter(view.router for view in views)
        for router in sorted(set(per_router) | set(m.registered)):
            tunnels.add_metric([router], per_router[router])
        yield tunnels
        rtt = GaugeMetricFamily(
            "ptth_helper_tunnel_rtt_seconds",
            "Round-trip time of each live tunnel's last PING",
            labels=["router", "tunnel_id"],
        )
        streams = GaugeMetricFamily(
            "ptth_helper_tunnel_open_streams",
            "Open streams on each live tunnel",
            labels=["router", "tunnel_id"],
        )
        for view in views:
            streams.add_metric([view.router, view.tunnel_id], view.open_streams)
            if view.rtt is not None:
                rtt.add_metric([view.router, view.tunnel_id], view.rtt)
        yield rtt
        yield streams
        registered = CounterMetricFamily(
            "ptth_helper_tunnels_registered",
            "Tunnels registered with each router (reconnects included)",
            labels=["router"],
        )
        for router, count in sorted(m.registered.items()):
            registered.add_metric([router], count)
        yield registered
        failures = CounterMetricFamily(
            "ptth_helper_dial_failures",
            "Failed dials or handshakes, by router and reason",
            labels=["router", "reason"],
        )
        for (router, reason), count in sorted(m.failures.items()):
            failures.add_metric([router, reason], count)
        yield failures


def failure_reason(exc: BaseException) -> str:
    """A short, bounded label for a failed dial (metrics labels must not grow unbounded)."""
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return f"refused_{status}"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, anyio.EndOfStream | anyio.BrokenResourceError | ConnectionResetError):
        return "closed"
    name = type(exc).__name__
    if name in ("TunnelTLSError", "ForwardProxyError", "HandshakeError"):
        return name.removesuffix("Error").lower()
    if isinstance(exc, OSError):
        return "connect"
    return "other"


async def serve_metrics(
    metrics: HelperMetrics,
    address: str,
    *,
    task_status: anyio.abc.TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Answer ``GET /metrics`` and ``GET /healthz`` on ``address`` until cancelled; one request
    per connection (a scraper's pattern), so a slow or hostile client holds one task briefly."""
    host, port = parse_address(address, allow_port_zero=True)
    multi = await anyio.create_tcp_listener(local_host=host, local_port=port)
    bound = multi.extra(anyio.abc.SocketAttribute.local_address)
    async with multi, anyio.create_task_group() as group:
        for listener in multi.listeners:
            group.start_soon(_accept, metrics, listener, group)
        task_status.started((str(bound[0]), int(bound[1])))


async def _accept(
    metrics: HelperMetrics,
    listener: anyio.abc.Listener[anyio.abc.SocketStream],
    group: anyio.abc.TaskGroup,
) -> None:
    assert isinstance(listener, anyio.abc.SocketListener)
    while True:
        try:
            sock = await listener.accept()
        except OSError as exc:  # EMFILE and the like: wait, never end the helper
            log.warning("metrics listener: accept failed: %s", exc)
            await anyio.sleep(0.1)
            continue
        group.start_soon(_answer, metrics, sock)


async def _answer(metrics: HelperMetrics, sock: anyio.abc.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    try:
        with anyio.fail_after(READ_TIMEOUT):
            event: object = h11.NEED_DATA
            while event is h11.NEED_DATA:
                try:
                    conn.receive_data(await sock.receive(65536))
                except anyio.EndOfStream:
                    conn.receive_data(b"")
                event = conn.next_event()
            if not isinstance(event, h11.Request):
                return
            path = event.target.split(b"?", 1)[0]
            if event.method not in (b"GET", b"HEAD"):
                status, body, kind = 405, b"only GET\n", b"text/plain"
            elif path == b"/metrics":
                status, body, kind = 200, metrics.render(), CONTENT_TYPE
            elif path == b"/healthz":
                status, body, kind = 200, b"ok\n", b"text/plain"
            else:
                status, body, kind = 404, b"try /metrics\n", b"text/plain"
            headers = [
                (b"content-type", kind),
                (b"content-length", b"%d" % len(body)),
                (b"connection", b"close"),
                (b"cache-control", b"no-store"),
            ]
            data = conn.send(h11.Response(status_code=status, headers=headers)) or b""
            if event.method != b"HEAD":
                data += conn.send(h11.Data(data=body)) or b""
            data += conn.send(h11.EndOfMessage()) or b""
            await sock.send(data)
    except (h11.RemoteProtocolError, TimeoutError, OSError, anyio.BrokenResourceError):
        pass
    finally:
        await anyio.aclose_forcefully(sock)

"""The router's Prometheus metrics (``/metrics``), counted cheaply and rendered on a scrape.

The hot path only adds to plain ints in dicts, once per finished request (:meth:`Metrics.finished`)
and once per tunnel event (:meth:`Metrics.tunnel_event`): no locks, no label lookups in
prometheus-client's own (lock-guarded) metric objects. A custom collector turns those ints, and
what can be read from the live router at scrape time (in-flight and queued requests, tunnels by
state, their RTT from PINGs, refusals, WebSocket sessions), into metric families on a
:class:`~prometheus_client.CollectorRegistry` of this router's own, so several routers in one
process keep separate numbers (ARCHITECTURE.md, "Operations: the admin listener").
"""

from __future__ import annotations

import bisect
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import trio
from h2.errors import ErrorCodes
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ptth.errors import TunnelClosed

from ..proxy_common import Finished
from ..registry import RouterTunnel

__all__ = ["LATENCY_BUCKETS", "Histogram", "LiveState", "Metrics", "REFUSAL_REASONS"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)
# The tunnel handshake's refusals (ARCHITECTURE.md, "The handshake"), by status.
REFUSAL_REASONS = {
    400: "malformed",
    401: "unauthorized",
    403: "forbidden",
    408: "timeout",
    409: "conflict",
    421: "other worker",
    426: "no upgrade",
    429: "throttled",
    503: "unavailable",
}
RECENT_INSTANCES = 10_000  # instances remembered after their tunnel went, to see reconnects


@dataclass(slots=True)
class Histogram:
    """Bucket counts (not cumulative) plus the sum; the last bucket is +Inf."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        cumulative, out = 0, []
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self.counts, strict=True):
            cumulative += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(cumulative)))
        return out


@dataclass
class LiveState:
    """What a scrape reads from the running router (functions, so nothing is copied before)."""

    tunnels: Callable[[], list[RouterTunnel]]
    in_flight: Callable[[], int]
    queued: Callable[[], int]
    websockets: Callable[[], int]
    refusals: Callable[[], Counter[int]]


def _status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "none"


class Metrics:
    def __init__(self, live: LiveState) -> None:
        self.live = live
        # (service, status class, method) -> count; bytes by service; histograms by service.
        self.requests: Counter[tuple[str, str, str]] = Counter()
        self.websocket_sessions: Counter[tuple[str, str]] = Counter()
        self.bytes_in: Counter[str] = Counter()
        self.bytes_out: Counter[str] = Counter()
        self.headers_seconds: defaultdict[str, Histogram] = defaultdict(Histogram)
        self.total_seconds: defaultdict[str, Histogram] = defaultdict(Histogram)
        # Per service: requests and 5xx, for the status page's rates.
        self.served: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.registered: Counter[str] = Counter()
        self.lost: Counter[str] = Counter()
        self.reconnects: Counter[str] = Counter()
        self.flood_trips: Counter[tuple[str, str]] = Counter()  # (side, what tripped)
        # Tunnels out of rotation whose connection still runs (draining), and the instances
        # whose tunnel went recently (a new tunnel of one of them is a reconnect).
        self.leaving: dict[str, RouterTunnel] = {}
        self._gone: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    # -- counting (the hot path) -------------------------------------------------------------

    def finished(self, done: Finished) -> None:
        service = done.service
        if done.kind == "websocket":
            self.websocket_sessions[service, _status_class(done.status)] += 1
        else:
            method = done.request.method.decode("latin-1")
            self.requests[
                service, _status_class(done.status), method if method in METHODS else "other"
            ] += 1
            if done.headers_at:
                self.headers_seconds[service].observe(done.headers_at - done.started)
            self.total_seconds[service].observe(done.ended - done.started)
        self.served[service] += 1
        if done.status >= 500:
            self.errors[service] += 1
        self.bytes_in[service] += done.bytes_in
        self.bytes_out[service] += done.bytes_out

    def tunnel_event(self, event: str, tunnel: RouterTunnel) -> None:
        """A registry watcher: a tunnel was added or removed."""
        key = (tunnel.service, tunnel.registration.instance or "")
        if event == "added":
            self.registered[tunnel.service] += 1
            if key[1] and key in self._gone:
                del self._gone[key]
                self.reconnects[tunnel.service] += 1
            return
        self.lost[tunnel.service] += 1
        if key[1]:
            self._gone[key] = None
            if len(self._gone) > RECENT_INSTANCES:
                self._gone.popitem(last=False)
        reason = tunnel.connection.close_reason
        if reason is None:
            self.leaving[tunnel.tunnel_id] = tunnel  # draining: still counted until it closes
        else:
            self._count_flood("tunnel", reason)

    def user_connection_closed(self, reason: TunnelClosed | None) -> None:
        """The front end's watcher: an HTTP/2 user connection closed (``reason``: why)."""
        if reason is not None:
            self._count_flood("user", reason)

    def _count_flood(self, side: str, reason: TunnelClosed) -> None:
        """A connection closed by the engine's budgets (ENHANCE_YOUR_CALM, the reason names the
        budget) or its frame guard (FRAME_SIZE_ERROR): ARCHITECTURE.md, "Budgets"."""
        if reason.error_code == ErrorCodes.ENHANCE_YOUR_CALM:
            self.flood_trips[side, str(reason)] += 1
        elif reason.error_code == ErrorCodes.FRAME_SIZE_ERROR:
            self.flood_trips[side, "oversized frame"] += 1

    def draining_tunnels(self) -> list[RouterTunnel]:
        """Tunnels out of rotation whose connection is still open (closed ones are forgotten)."""
        for tunnel_id, tunnel in list(self.leaving.items()):
            reason = tunnel.connection.close_reason
            if reason is not None:
                del self.leaving[tunnel_id]
                self._count_flood("tunnel", reason)
        return list(self.leaving.values())

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> Iterator[Metric]:
        m, live = self.m, self.m.live
        family = CounterMetricFamily(
            "ptth_requests",
            "HTTP requests finished, by service, status class and method",
            labels=["service", "code", "method"],
        )
        for (service, code, method), value in m.requests.items():
            family.add_metric([service, code, method], value)
        yield family
        for name, doc, histograms in (
            (
                "ptth_request_headers_seconds",
                "time from the request's arrival to the response head sent to the user",
                m.headers_seconds,
            ),
            (
                "ptth_request_duration_seconds",
                "time from the request's arrival to the end of its response",
                m.total_seconds,
            ),
        ):
            hist = HistogramMetricFamily(name, doc, labels=["service"])
            for service, histogram in histograms.items():
                hist.add_metric([service], histogram.buckets(), histogram.total)
            yield hist
        yield _by_service("ptth_request_bytes", "request body bytes from users", m.bytes_in)
        yield _by_service("ptth_response_bytes", "response body bytes to users", m.bytes_out)
        yield GaugeMetricFamily(
            "ptth_requests_in_flight", "requests being proxied now", value=live.in_flight()
        )
        yield GaugeMetricFamily(
            "ptth_requests_queued",
            "requests waiting for a free tunnel stream slot",
            value=live.queued(),
        )
        yield from self._tunnels()
        yield _by_service("ptth_tunnels_registered", "tunnels registered since start", m.registered)
        yield _by_service("ptth_tunnels_lost", "tunnels that left rotation since start", m.lost)
        yield _by_service(
            "ptth_tunnel_reconnects",
            "tunnels registered by an instance whose earlier tunnel had gone",
            m.reconnects,
        )
        refusals = CounterMetricFamily(
            "ptth_handshake_refusals",
            "tunnel handshakes refused, by status and reason",
            labels=["status", "reason"],
        )
        for status, value in sorted(live.refusals().items()):
            refusals.add_metric([str(status), REFUSAL_REASONS.get(status, "other")], value)
        yield refusals
        floods = CounterMetricFamily(
            "ptth_flood_guard_trips",
            "connections closed by a flood budget or the frame guard, by side and what tripped",
            labels=["side", "kind"],
        )
        for (side, kind), value in m.flood_trips.items():
            floods.add_metric([side, kind], value)
        yield floods
        yield GaugeMetricFamily(
            "ptth_websocket_sessions_open", "WebSocket sessions open now", value=live.websockets()
        )
        sessions = CounterMetricFamily(
            "ptth_websocket_sessions",
            "WebSocket sessions finished, by service and status class (1xx: accepted)",
            labels=["service", "code"],
        )
        for (service, code), value in m.websocket_sessions.items():
            sessions.add_metric([service, code], value)
        yield sessions

    def _tunnels(self) -> Iterator[Metric]:
        m, live = self.m, self.m.live
        tunnels = live.tunnels()
        states: Counter[tuple[str, str]] = Counter()
        rtt = GaugeMetricFamily(
            "ptth_tunnel_rtt_seconds",
            "round-trip time of the tunnel's last PING",
            labels=["service", "instance", "tunnel"],
        )
        in_flight = GaugeMetricFamily(
            "ptth_tunnel_in_flight",
            "streams in use on the tunnel",
            labels=["service", "instance", "tunnel"],
        )
        now = trio.current_time()
        for tunnel in tunnels:
            states[tunnel.service, "ejected" if tunnel.health.ejected(now) else "ready"] += 1
            labels = [tunnel.service, tunnel.registration.instance or "-", tunnel.tunnel_id]
            if tunnel.connection.rtt is not None:
                rtt.add_metric(labels, tunnel.connection.rtt)
            in_flight.add_metric(labels, tunnel.in_flight)
        for tunnel in m.draining_tunnels():
            states[tunnel.service, "draining"] += 1
        family = GaugeMetricFamily(
            "ptth_tunnels", "tunnels by service and state", labels=["service", "state"]
        )
        for (service, state), value in sorted(states.items()):
            family.add_metric([service, state], value)
        yield family
        yield rtt
        yield in_flight


def _by_service(name: str, doc: str, values: Counter[str]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=["service"])
    for service, value in values.items():
        family.add_metric([service], value)
    return family

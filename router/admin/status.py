"""``/api/status``: services, their tunnels, and request and error rates, as JSON-ready data.

Rates come from :class:`Rates`, which samples the per-service totals of
:class:`~router.admin.metrics.Metrics` once a second and divides over the last ``window``
seconds, so a request costs nothing extra for them. Nothing here is secret: no token, no
identity's credential, only names the backend announced (ARCHITECTURE.md, "Operations: the
admin listener").
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

from ..registry import RouterTunnel
from .metrics import Metrics

__all__ = ["Rates", "RouterFacts", "snapshot", "tunnel_facts"]

RATE_WINDOW = 10.0  # seconds the status page's rates average over


@dataclass(frozen=True)
class RouterFacts:
    """The router-wide part of the snapshot."""

    ready: bool
    draining: bool
    started: float  # trio.current_time() when the admin listener started
    front_end: str | None
    tunnel_port: str | None
    in_flight: int
    queued: int
    websockets: int


class Rates:
    """Per-service requests and errors per second over the last ``window`` seconds."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._samples: deque[tuple[float, Counter[str], Counter[str]]] = deque()

    def sample(self, now: float, served: Counter[str], errors: Counter[str]) -> None:
        self._samples.append((now, Counter(served), Counter(errors)))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()

    def rates(self, service: str, now: float) -> tuple[float, float]:
        if len(self._samples) < 2:
            return 0.0, 0.0
        (first, served0, errors0), (last, served1, errors1) = self._samples[0], self._samples[-1]
        span = max(last - first, 1e-9)
        return (
            (served1[service] - served0[service]) / span,
            (errors1[service] - errors0[service]) / span,
        )


def tunnel_facts(tunnel: RouterTunnel, now: float, *, draining: bool = False) -> dict[str, object]:
    rtt = tunnel.connection.rtt
    return {
        "id": tunnel.tunnel_id,
        "instance": tunnel.registration.instance or "-",
        "address": tunnel.peer,
        "hosts": list(tunnel.registration.hosts),
        "path_prefix": tunnel.registration.path_prefix or None,
        "identity": tunnel.identity.owner,
        "age": round(now - tunnel.registered_at, 3),
        "in_flight": tunnel.in_flight,
        "max_streams": tunnel.max_streams,
        "served": tunnel.served,
        "rtt_ms": None if rtt is None else round(rtt * 1000, 3),
        "weight": tunnel.weight,
        "draining": draining or tunnel.connection.draining,
        "ejected": tunnel.health.ejected(now),
    }


def snapshot(
    facts: RouterFacts,
    live: list[RouterTunnel],
    leaving: list[RouterTunnel],
    metrics: Metrics,
    rates: Rates,
    now: float,
) -> dict[str, object]:
    """The whole status document."""
    pools: dict[str, list[dict[str, object]]] = {}
    for tunnel in live:
        pools.setdefault(tunnel.service, []).append(tunnel_facts(tunnel, now))
    for tunnel in leaving:
        pools.setdefault(tunnel.service, []).append(tunnel_facts(tunnel, now, draining=True))
    names = sorted(set(pools) | set(metrics.served))
    services = []
    for name in names:
        requests, errors = rates.rates(name, now)
        tunnels = sorted(pools.get(name, []), key=lambda t: str(t["instance"]))
        services.append(
            {
                "name": name,
                "tunnels": tunnels,
                "requests_per_second": round(requests, 3),
                "errors_per_second": round(errors, 3),
                "requests_total": metrics.served[name],
                "errors_total": metrics.errors[name],
            }
        )
    return {
        "router": {
            "ready": facts.ready,
            "draining": facts.draining,
            "uptime": round(now - facts.started, 3),
            "front_end": facts.front_end,
            "tunnel_port": facts.tunnel_port,
            "in_flight": facts.in_flight,
            "queued": facts.queued,
            "websockets": facts.websockets,
            "tunnels": len(live),
        },
        "services": services,
    }

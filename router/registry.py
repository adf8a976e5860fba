"""Live tunnels by service, and the one place requests acquire and release a tunnel stream slot.

The choice itself is plain code (``balancer.pick``); this module only waits when every tunnel
is full, and wakes waiters when a slot frees or a tunnel arrives.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from ptth.driver import Connection
from ptth.errors import HandshakeRefused, HeaderError, NoTunnel
from ptth.logs import tunnel_fields
from ptth.proto.handshake import Registration

from .balancer import pick
from .identity import Identity
from .outlier import NEUTRAL, OutlierDetector, StreamOutcome
from .routing import Route, RoutingTable

__all__ = ["Registry", "RouterTunnel"]

log = logging.getLogger("router.registry")


@dataclass(eq=False)
class RouterTunnel:
    """A registered tunnel as the balancer sees it."""

    tunnel_id: str
    registration: Registration
    connection: Connection
    peer: str
    stream_cap: int = 1000
    in_flight: int = 0
    served: int = 0
    registered_at: float = field(default_factory=trio.current_time)
    identity: Identity = field(default_factory=lambda: Identity("anonymous"))
    health: OutlierDetector = field(default_factory=OutlierDetector)

    def in_rotation(self, now: float) -> bool:
        """Not ejected by passive health (ARCHITECTURE.md, "Passive health"); logs a return."""
        returned = self.health.take_return(now)
        if returned is not None:
            log.info(
                "tunnel %s (instance %s): back in rotation after a %g s ejection",
                self.tunnel_id,
                self.registration.instance or "-",
                returned.duration,
                extra=tunnel_fields(
                    self.tunnel_id, self.registration.instance, self.service, "returned"
                ),
            )
        return not self.health.ejected(now)

    def report(self, outcome: StreamOutcome, now: float) -> None:
        """Count one finished stream for passive health; logs an ejection."""
        ejection = self.health.record(outcome, now)
        if ejection is not None:
            log.warning(
                "tunnel %s (instance %s): ejected for %g s after %d failed streams in a row%s "
                "(last: %s)",
                self.tunnel_id,
                self.registration.instance or "-",
                ejection.duration,
                ejection.failures,
                f", ejection {ejection.times} without a success" if ejection.times > 1 else "",
                ejection.last_failure,
                extra=tunnel_fields(
                    self.tunnel_id, self.registration.instance, self.service, "ejected"
                ),
            )

    @property
    def max_streams(self) -> int:
        if self.connection.draining:
            return 0
        return min(self.stream_cap, self.connection.peer_max_concurrent_streams)

    @property
    def weight(self) -> float:
        return self.registration.weight

    @property
    def service(self) -> str:
        return self.registration.service


def all_ejected(service: str, tunnels: list[RouterTunnel], now: float) -> NoTunnel:
    """The 503 when passive health ejected every live tunnel of the pool: no request is sent to
    a backend known to fail; Retry-After says when the first one is back."""
    ejections = [t.health.ejection for t in tunnels if t.health.ejection is not None]
    first = min(ejections, key=lambda e: e.until, default=None)
    back = first.until if first is not None else now
    error = NoTunnel(
        f"every tunnel of service {service!r} is ejected after failed streams "
        f"(last: {first.last_failure if first else '?'}); "
        f"the first is back in {max(0.0, back - now):.0f} s"
    )
    error.retry_after = max(1, math.ceil(back - now))
    return error


class Registry:
    def __init__(
        self,
        *,
        default_service: str | None = "default",
        grace: float = 30.0,
        queue_timeout: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self.routing = RoutingTable(default_service=default_service, grace=grace)
        self.queue_timeout = queue_timeout
        self._services: dict[str, list[RouterTunnel]] = {}
        self._tunnels: dict[str, RouterTunnel] = {}
        self._slot_freed = trio.Event()
        self._rng = rng or random.Random()
        self.queued = 0  # requests waiting in acquire() for a free slot
        # Called with ("added" | "removed", tunnel): the admin listener's counts and events.
        self.watchers: list[Callable[[str, RouterTunnel], None]] = []

    # -- registration ------------------------------------------------------------------------

    def check(self, registration: Registration, owner: str = "") -> None:
        """Raise the refusal (409, 400) a registration must get before it is accepted."""
        try:
            self.routing.check_claim(
                registration.service,
                registration.hosts,
                registration.path_prefix,
                trio.current_time(),
                owner,
            )
        except HeaderError as exc:
            raise HandshakeRefused(400, str(exc)) from None

    def add(self, tunnel: RouterTunnel) -> None:
        reg = tunnel.registration
        self.routing.add(
            tunnel.tunnel_id,
            reg.service,
            reg.hosts,
            reg.path_prefix,
            trio.current_time(),
            tunnel.identity.owner,
        )
        self._tunnels[tunnel.tunnel_id] = tunnel
        self._services.setdefault(reg.service, []).append(tunnel)
        self._wake()
        for watcher in self.watchers:
            watcher("added", tunnel)

    def remove(self, tunnel: RouterTunnel, *, keep_claims: bool = True) -> None:
        if self._tunnels.pop(tunnel.tunnel_id, None) is None:
            return
        self.routing.remove(tunnel.tunnel_id, trio.current_time(), keep_claims=keep_claims)
        pool = self._services.get(tunnel.service, [])
        if tunnel in pool:
            pool.remove(tunnel)
        if not pool:
            self._services.pop(tunnel.service, None)
        self._wake()
        for watcher in self.watchers:
            watcher("removed", tunnel)

    def tunnels(self) -> list[RouterTunnel]:
        return list(self._tunnels.values())

    def pool(self, service: str) -> list[RouterTunnel]:
        return list(self._services.get(service, ()))

    # -- requests ----------------------------------------------------------------------------

    def match(self, host: str, path: str) -> str | None:
        return self.routing.match(host, path, trio.current_time())

    def route(self, host: str, path: str) -> Route | None:
        """The service, matched prefix and claim of a request (see :meth:`RoutingTable.route`)."""
        return self.routing.route(host, path, trio.current_time())

    async def acquire(self, route: Route, *, exclude: set[str] | None = None) -> RouterTunnel:
        """A tunnel with a free stream slot, waiting up to the queue timeout when all are full.

        Raises :class:`NoTunnel` (503) when the claim has no live tunnel or the wait ran out.
        """
        with trio.move_on_after(self.queue_timeout):
            while True:
                chosen = self.try_acquire(route, exclude=exclude)
                if chosen is not None:
                    return chosen
                self.queued += 1
                try:
                    await self._slot_freed.wait()
                finally:
                    self.queued -= 1
        raise NoTunnel(f"every tunnel of service {route.service!r} is busy")

    def try_acquire(self, route: Route, *, exclude: set[str] | None = None) -> RouterTunnel | None:
        """A tunnel with a free stream slot right now, or None when every one is full.

        Only the tunnels holding the matched claim are candidates: a tunnel of the same service
        but another identity never serves it. Raises :class:`NoTunnel` (503) when none is live.
        """
        holders = self.routing.holders(route.claim) if route.claim is not None else ()
        live = [
            t
            for t in map(self._tunnels.__getitem__, holders)
            if not t.connection.draining and (not exclude or t.tunnel_id not in exclude)
        ]
        now = trio.current_time()
        pool = [t for t in live if t.in_rotation(now)]
        if not pool:
            if live:
                raise all_ejected(route.service, live, now)
            raise NoTunnel(f"no live tunnel for service {route.service!r}")
        chosen = pick(pool, self._rng)
        if chosen is not None:
            chosen.in_flight += 1
        return chosen

    def release(self, tunnel: RouterTunnel, outcome: StreamOutcome = NEUTRAL) -> None:
        """Free the slot; ``outcome`` is what the stream says about the tunnel's health."""
        tunnel.in_flight -= 1
        tunnel.served += 1
        tunnel.report(outcome, trio.current_time())
        self._wake()

    def _wake(self) -> None:
        self._slot_freed.set()
        self._slot_freed = trio.Event()

    def statistics(self) -> dict[str, object]:
        return {
            "tunnels": len(self._tunnels),
            "services": {name: len(pool) for name, pool in self._services.items()},
            "in_flight": sum(t.in_flight for t in self._tunnels.values()),
        }

"""Admission on the tunnel port (ARCHITECTURE.md, "Admission on the tunnel port"); no I/O.

These rules keep whoever can reach the tunnel port from locking backends out of it:

- connections still in their handshake (unauthenticated) are counted router-wide and per client
  address; over the per-address cap a new connection is refused at once with 503 and
  Retry-After, so one address cannot fill the router-wide budget that everyone else needs;
- when the router-wide budget is full anyway (attackers on many addresses), a newcomer takes
  the slot of the oldest pending connection of the busiest address group, provided that group
  holds at least two more than the newcomer's (max-min fairness: evictions only even the shares
  out); the evicted one is answered 503. A backend with a handshake or two in flight keeps them
  while any attacking address holds more, so the budget is only lost to an attacker with about
  ``max_pending`` address groups;
- failed authentications are throttled per client address with a token bucket
  (:class:`router.ratelimit.RateLimiter`): each failure spends a token, and an address with none
  left gets 429 with Retry-After *before* its token is looked at, so guessing runs at the
  bucket's rate at most.

Client addresses are grouped before counting: an IPv4 address counts alone, an IPv6 address
by its /64 (one site usually gets a whole /64, so one attacker holds 2**64 addresses in it), and
an IPv4-mapped IPv6 address as the IPv4 address. Memory is bounded: pending counts exist only
for addresses with a connection in its handshake (at most the router-wide cap), and the failure
buckets are capped by the rate limiter itself (address spraying past it shares one bucket).
Time comes in as an argument; eviction needs none (it goes by share, not by age).
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

from ptth.errors import ConfigError, HandshakeRefused

from .ratelimit import RateLimiter

__all__ = ["Admitted", "TunnelAdmission", "client_key"]

GLOBAL_FULL = "too many pending tunnel handshakes on this router"
ADDRESS_FULL = "too many pending handshakes from your address"
THROTTLED = "too many failed authentications from your address"
EVICTED = "too many pending tunnel handshakes on this router, most of them from your address"


@dataclass(frozen=True)
class Admitted:
    """A connection counted as pending; ``evicted`` is the ticket whose connection must go
    (answered 503 with :data:`EVICTED`) to make room for it."""

    ticket: int
    evicted: int | None = None


def client_key(address: str) -> str:
    """The group an address is counted in: IPv4 as is, IPv6 by /64, anything else as given."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # a zone index names no host
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class TunnelAdmission:
    """Pending-handshake counts and the failed-authentication throttle of one tunnel port.

    Callers pair every :meth:`enter` that admitted a connection with one :meth:`leave` of its
    ticket; an evicted ticket is already released (its :meth:`leave` does nothing).
    """

    def __init__(
        self,
        *,
        max_pending: int,
        max_pending_per_address: int,
        auth_failure_rate: float,
        auth_failure_burst: float,
        retry_after: float = 5.0,
        max_tracked: int = 100_000,
    ) -> None:
        if max_pending < 1 or max_pending_per_address < 1:
            raise ConfigError("pending-handshake caps must be at least 1")
        if not (math.isfinite(retry_after) and retry_after > 0):
            raise ConfigError("retry_after must be a positive number of seconds")
        self.max_pending = max_pending
        self.max_pending_per_address = max_pending_per_address
        # Every pending slot is free again within the handshake deadline: that is the hint.
        self.retry_after = retry_after
        self._tickets: dict[int, str] = {}  # ticket -> its address group
        self._groups: dict[str, dict[int, None]] = {}  # group -> its tickets, oldest first
        self._sizes: dict[int, dict[str, None]] = {}  # pending count -> the groups with it
        self._next_ticket = 0
        self._failures = RateLimiter(auth_failure_rate, auth_failure_burst, max_clients=max_tracked)

    @property
    def pending(self) -> int:
        """Connections in their handshake, router-wide."""
        return len(self._tickets)

    @property
    def tracked(self) -> int:
        """Address groups with a connection in its handshake (memory held by the counts)."""
        return len(self._groups)

    @property
    def tracked_failures(self) -> int:
        """Address groups whose failed authentications are remembered (bounded by max_tracked)."""
        return len(self._failures)

    def pending_from(self, address: str) -> int:
        return len(self._groups.get(client_key(address), ()))

    def enter(self, address: str) -> Admitted | HandshakeRefused:
        """A connection was accepted: count it (perhaps evicting another), or return the 503
        it must get instead."""
        key = client_key(address)
        count = len(self._groups.get(key, ()))
        if count >= self.max_pending_per_address:
            return HandshakeRefused(503, ADDRESS_FULL, self.retry_after)
        evicted = None
        if len(self._tickets) >= self.max_pending:
            evicted = self._victim(count)
            if evicted is None:
                return HandshakeRefused(503, GLOBAL_FULL, self.retry_after)
            self.leave(evicted)
        ticket = self._next_ticket
        self._next_ticket += 1
        self._tickets[ticket] = key
        self._groups.setdefault(key, {})[ticket] = None
        self._resized(key, count, count + 1)
        return Admitted(ticket, evicted)

    def leave(self, ticket: int) -> None:
        """The connection of ``ticket`` finished its handshake (or died in it, or was evicted)."""
        key = self._tickets.pop(ticket, None)
        if key is None:  # evicted, or not ours: never count twice
            return
        group = self._groups[key]
        del group[ticket]
        self._resized(key, len(group) + 1, len(group))
        if not group:
            del self._groups[key]

    def _victim(self, count: int) -> int | None:
        """The oldest pending connection of a busiest address group, if that group holds at
        least two more than the newcomer's: eviction only ever evens the shares out."""
        for size in range(self.max_pending_per_address, count + 1, -1):
            groups = self._sizes.get(size)
            if groups:
                return next(iter(self._groups[next(iter(groups))]))
        return None

    def _resized(self, key: str, old: int, new: int) -> None:
        if old:
            groups = self._sizes[old]
            del groups[key]
            if not groups:
                del self._sizes[old]
        if new:
            self._sizes.setdefault(new, {})[key] = None

    def throttled(self, address: str, now: float) -> HandshakeRefused | None:
        """The 429 for an address out of authentication attempts, checked before its token."""
        wait = self._failures.wait(client_key(address), now)
        if wait <= 0:
            return None
        return HandshakeRefused(429, THROTTLED, wait)

    def failed(self, address: str, now: float) -> float | None:
        """Record a failed authentication; the seconds of throttling if this one started it."""
        key = client_key(address)
        if self._failures.acquire(key, now) > 0:
            return None  # already throttled (handshakes that were checked at the same time)
        wait = self._failures.wait(key, now)
        return wait if wait > 0 else None

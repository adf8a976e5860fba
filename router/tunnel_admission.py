"""Admission on the tunnel port (ARCHITECTURE.md, "Admission on the tunnel port"); no I/O.

Two limits keep whoever can reach the tunnel port from locking backends out of it:

- connections still in their handshake (unauthenticated) are counted router-wide and per client
  address; over either cap a new connection is refused at once with 503 and Retry-After, so one
  address cannot fill the router-wide budget that everyone else needs;
- failed authentications are throttled per client address with a token bucket
  (:class:`router.ratelimit.RateLimiter`): each failure spends a token, and an address with none
  left gets 429 with Retry-After *before* its token is looked at, so guessing runs at the
  bucket's rate at most.

Client addresses are grouped before counting: an IPv4 address counts alone, an IPv6 address
by its /64 (one site usually gets a whole /64, so one attacker holds 2**64 addresses in it), and
an IPv4-mapped IPv6 address as the IPv4 address. Memory is bounded: pending counts exist only
for addresses with a connection in its handshake (at most the router-wide cap), and the failure
buckets are capped by the rate limiter itself (address spraying past it shares one bucket).
Time comes in as an argument.
"""

from __future__ import annotations

import ipaddress
import math

from ptth.errors import ConfigError, HandshakeRefused

from .ratelimit import RateLimiter

__all__ = ["TunnelAdmission", "client_key"]

GLOBAL_FULL = "too many pending tunnel handshakes on this router"
ADDRESS_FULL = "too many pending handshakes from your address"
THROTTLED = "too many failed authentications from your address"


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

    Callers pair every :meth:`enter` that returned None with one :meth:`leave`.
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
        self._pending: dict[str, int] = {}
        self._total = 0
        self._failures = RateLimiter(auth_failure_rate, auth_failure_burst, max_clients=max_tracked)

    @property
    def pending(self) -> int:
        """Connections in their handshake, router-wide."""
        return self._total

    @property
    def tracked(self) -> int:
        """Address groups with a connection in its handshake (memory held by the counts)."""
        return len(self._pending)

    @property
    def tracked_failures(self) -> int:
        """Address groups whose failed authentications are remembered (bounded by max_tracked)."""
        return len(self._failures)

    def pending_from(self, address: str) -> int:
        return self._pending.get(client_key(address), 0)

    def enter(self, address: str) -> HandshakeRefused | None:
        """A connection was accepted: count it, or return the 503 it must get instead."""
        key = client_key(address)
        if self._total >= self.max_pending:
            return HandshakeRefused(503, GLOBAL_FULL, self.retry_after)
        count = self._pending.get(key, 0)
        if count >= self.max_pending_per_address:
            return HandshakeRefused(503, ADDRESS_FULL, self.retry_after)
        self._pending[key] = count + 1
        self._total += 1
        return None

    def leave(self, address: str) -> None:
        """The connection admitted by :meth:`enter` finished its handshake (or died in it)."""
        key = client_key(address)
        count = self._pending.get(key, 0)
        if count <= 0:  # not ours to release: never go negative
            return
        if count == 1:
            del self._pending[key]
        else:
            self._pending[key] = count - 1
        self._total -= 1

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

"""Per-client token buckets (rate limit → 429, ARCHITECTURE.md); no I/O.

The front end spends a token per request; the tunnel port one per failed authentication.

Each client address gets ``burst`` tokens refilled at ``rate`` per second; a request spends one.
Buckets that are full again are forgotten, so memory follows the number of *active* clients,
and a hard cap on tracked clients keeps an address-spraying attacker from growing it without
bound (past the cap, unknown clients share one bucket).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ptth.errors import ConfigError

__all__ = ["RateLimiter"]

_SHARED = "\x00shared"


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, rate: float, burst: float, *, max_clients: int = 100_000) -> None:
        if not (math.isfinite(rate) and rate > 0 and math.isfinite(burst) and burst >= 1):
            raise ConfigError("rate limit needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: dict[str, _Bucket] = {}
        self._last_sweep = 0.0

    def acquire(self, client: str, now: float) -> float:
        """Spend a token: 0.0 if allowed, else the seconds until one is available."""
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= self.max_clients:
                self._sweep(now)
            if len(self._buckets) >= self.max_clients:
                client = _SHARED
                bucket = self._buckets.get(client)
            if bucket is None:
                bucket = self._buckets[client] = _Bucket(self.burst, now)
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        if now - self._last_sweep > 60:
            self._sweep(now)
        return (1 - bucket.tokens) / self.rate

    def wait(self, client: str, now: float) -> float:
        """Seconds until ``client`` could spend a token (0.0: now); spends nothing.

        Looking never starts tracking a client, so it costs no memory (the tunnel port checks
        every handshake but records only failures).
        """
        bucket = self._buckets.get(client)
        if bucket is None and len(self._buckets) >= self.max_clients:
            bucket = self._buckets.get(_SHARED)
        if bucket is None:
            return 0.0
        tokens = min(self.burst, bucket.tokens + max(0.0, now - bucket.updated) * self.rate)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def _sweep(self, now: float) -> None:
        """Forget buckets that have refilled completely: they hold no information."""
        self._last_sweep = now
        full_after = self.burst / self.rate
        stale = [key for key, b in self._buckets.items() if now - b.updated >= full_after]
        for key in stale:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)

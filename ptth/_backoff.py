"""Reconnect delays: capped exponential backoff with full jitter.

Full jitter (a uniform draw from zero to the exponential ceiling) spreads a fleet of backends
that lost the same router at the same instant, so they do not return in lockstep (see "Exponential
Backoff And Jitter", AWS Architecture Blog, 2015). Pure code: time and randomness come in.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from ptth.errors import ConfigError

__all__ = ["Backoff"]


@dataclass
class Backoff:
    """Delays for one reconnecting connection; the attempt counter survives short-lived links.

    Resetting only after ``reset_after`` seconds of health matters: a router that accepts the
    tunnel and drops it at once would otherwise be hammered at ``base`` intervals forever.
    """

    base: float = 0.1
    factor: float = 2.0
    cap: float = 30.0
    reset_after: float = 30.0
    _attempt: int = field(default=0, init=False, repr=False)
    _connected_at: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("base", "cap", "reset_after"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"backoff {name} must be a finite number >= 0, not {value!r}")
        if not (math.isfinite(self.factor) and self.factor >= 1):
            raise ConfigError(f"backoff factor must be a finite number >= 1, not {self.factor!r}")

    @property
    def attempt(self) -> int:
        """Delays handed out since the last reset."""
        return self._attempt

    def next_delay(self, rng: random.Random) -> float:
        """Seconds to wait before the next attempt, in ``[0, min(cap, base * factor**attempt)]``."""
        try:
            ceiling = min(self.cap, self.base * self.factor**self._attempt)
        except OverflowError:  # float ** int raises rather than returning inf
            ceiling = self.cap if self.base > 0 else 0.0
        self._attempt += 1
        return rng.uniform(0.0, ceiling)

    def connected(self, now: float) -> None:
        """The connection is up (handshake done); start timing its health."""
        self._connected_at = now

    def disconnected(self, now: float) -> None:
        """The connection is gone; forget past failures if it stayed up long enough."""
        if self._connected_at is not None and now - self._connected_at >= self.reset_after:
            self._attempt = 0
        self._connected_at = None

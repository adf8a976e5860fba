"""When a tunnel pings its peer and when it gives the peer up (pure: no I/O, time passed in).

Any frame from the peer proves it alive. After ``interval`` seconds without one the tunnel sends
a PING, which the peer must answer (RFC 9113 §6.7); after ``dead_after`` seconds it is dead. The
driver asks :meth:`Liveness.verdict` every :attr:`Liveness.check_every` seconds. Writes have a
deadline of their own, ``write_timeout``: a peer that stops reading is as dead as a silent one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Liveness", "Verdict"]


class Verdict(enum.Enum):
    ALIVE = "alive"  # heard from recently enough: nothing to do
    PING = "ping"  # quiet for a while: ask
    DEAD = "dead"  # silent too long: close the tunnel


@dataclass(frozen=True)
class Liveness:
    """Keepalive: PING after ``interval`` of silence; no frame at all for ``dead_after``: dead."""

    interval: float = 10.0
    dead_after: float = 20.0
    write_timeout: float = 30.0

    @property
    def check_every(self) -> float:
        """How often the driver asks for a verdict: twice per the shorter period."""
        return min(self.interval, self.dead_after) / 2

    def verdict(self, silent: float) -> Verdict:
        """What to do after ``silent`` seconds without a frame from the peer."""
        if silent >= self.dead_after:
            return Verdict.DEAD
        if silent >= self.interval:
            return Verdict.PING
        return Verdict.ALIVE

"""When the helper opens an extra tunnel to a router, and when it lets one go; pure, no I/O.

Long-lived streams (WebSockets, SSE) hold a concurrency slot for as long as they live, so a
tunnel can fill up while the backend itself is idle. Before that happens the helper opens another
tunnel to the same router (the router balances across them), up to ``maximum``; an extra tunnel
that carried no stream for ``idle_after`` seconds is drained and not replaced (ARCHITECTURE.md,
"Stream limits").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ScalePolicy"]


@dataclass(frozen=True)
class ScalePolicy:
    base: int  # tunnels always kept to one router
    maximum: int  # tunnels at most, extras included
    threshold: float = 0.8  # a tunnel this full (open / capacity) counts as full
    idle_after: float = 30.0

    def wants_more(self, loads: Sequence[tuple[int, int]], dialling: int) -> bool:
        """Open another tunnel? ``loads`` holds (open streams, capacity) per live tunnel."""
        if not loads or len(loads) + dialling >= self.maximum:
            return False
        return all(capacity > 0 and used >= self.threshold * capacity for used, capacity in loads)

    def idle_expired(self, open_streams: int, idle_since: float | None, now: float) -> bool:
        """Let an extra tunnel go? ``idle_since`` is when it last became empty (None: busy)."""
        return open_streams == 0 and idle_since is not None and now - idle_since >= self.idle_after

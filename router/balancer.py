"""Pick a tunnel for one request: weighted power-of-two-choices on least in-flight streams.

Pure code: the caller passes the candidates and a ``random.Random``, and does the I/O itself.
Sampling two candidates instead of scanning for the global minimum avoids herding (every router
sending the next burst to the same briefly idle tunnel) while still steering away from busy ones
(Mitzenmacher, "The Power of Two Choices in Randomized Load Balancing", 2001).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Protocol, TypeVar

__all__ = ["Candidate", "pick"]


class Candidate(Protocol):
    """What the balancer needs to know about a tunnel."""

    @property
    def in_flight(self) -> int: ...

    @property
    def max_streams(self) -> int: ...  # the peer's SETTINGS_MAX_CONCURRENT_STREAMS

    @property
    def weight(self) -> float: ...


C = TypeVar("C", bound=Candidate)


def pick(candidates: Sequence[C], rng: random.Random) -> C | None:
    """Return the candidate to use, or ``None`` when every one is full or weightless.

    Two distinct candidates are drawn with probability proportional to weight, and the one with
    the lower ``(in_flight + 1) / weight`` wins: the ``+ 1`` counts the request being placed, so a
    heavier idle tunnel beats a lighter idle one. A full tunnel is never returned, because opening
    a stream past its limit would be refused (RFC 9113 §5.1.2); nor is one whose weight is not a
    positive finite number.
    """
    open_ = [c for c in candidates if c.in_flight < c.max_streams and 0 < c.weight < math.inf]
    if len(open_) <= 1:
        return open_[0] if open_ else None
    total = sum(c.weight for c in open_)
    first = _draw(open_, total, None, rng)
    second = _draw(open_, total - open_[first].weight, first, rng)
    a, b = open_[first], open_[second]
    return b if (b.in_flight + 1) / b.weight < (a.in_flight + 1) / a.weight else a


def _draw(items: Sequence[Candidate], total: float, skip: int | None, rng: random.Random) -> int:
    """Index of a weighted random item other than ``skip`` (``total`` excludes its weight)."""
    point = rng.random() * total
    last = -1
    for i, item in enumerate(items):
        if i == skip:
            continue
        last = i
        point -= item.weight
        if point < 0:
            return i
    return last  # rounding left a sliver past the end: it belongs to the last item

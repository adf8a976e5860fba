"""Token buckets: bursts allowed, steady rate enforced, memory bounded."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ptth.errors import ConfigError
from router.ratelimit import RateLimiter


def test_burst_then_steady_rate() -> None:
    limiter = RateLimiter(rate=10, burst=5)
    assert [limiter.acquire("a", 0.0) for _ in range(5)] == [0.0] * 5
    wait = limiter.acquire("a", 0.0)
    assert wait == pytest.approx(0.1)
    assert limiter.acquire("a", 0.1) == 0.0  # one token refilled
    assert limiter.acquire("b", 0.1) == 0.0  # clients are independent


def test_idle_clients_are_forgotten() -> None:
    limiter = RateLimiter(rate=1, burst=2, max_clients=3)
    for i in range(3):
        limiter.acquire(f"c{i}", 0.0)
    assert len(limiter) == 3
    limiter.acquire("late", 10.0)  # the others have refilled: swept to make room
    assert len(limiter) == 1


def test_address_spraying_shares_one_bucket_past_the_cap() -> None:
    limiter = RateLimiter(rate=1, burst=1, max_clients=2)
    limiter.acquire("a", 0.0)
    limiter.acquire("b", 0.0)
    assert limiter.acquire("c", 0.0) == 0.0
    assert limiter.acquire("d", 0.0) > 0  # "d" shares the overflow bucket with "c"
    assert len(limiter) <= 3


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (1, 0), (float("inf"), 1)])
def test_bad_settings(rate: float, burst: float) -> None:
    with pytest.raises(ConfigError):
        RateLimiter(rate=rate, burst=burst)


@given(st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=200))
def test_never_more_than_burst_plus_rate_times_time(gaps: list[float]) -> None:
    limiter = RateLimiter(rate=5, burst=3)
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        allowed += limiter.acquire("x", now) == 0.0
    assert allowed <= 3 + 5 * now + 1e-9

"""Backoff: capped exponential delays with full jitter, reset after a healthy connection."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ptth._backoff import Backoff
from ptth.errors import ConfigError


class Fixed(random.Random):
    """A Random whose ``random()`` is constant, so ``uniform(0, x)`` is ``x * value``."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def test_ceilings_double_up_to_the_cap() -> None:
    backoff = Backoff()
    delays = [backoff.next_delay(Fixed(1.0)) for _ in range(12)]
    expected = [0.1 * 2**n for n in range(9)] + [30.0] * 3
    assert delays == pytest.approx(expected)
    assert backoff.attempt == 12


def test_full_jitter_can_be_zero() -> None:
    assert Backoff().next_delay(Fixed(0.0)) == 0.0


@given(
    base=st.floats(0, 10),
    factor=st.floats(1, 10),
    cap=st.floats(0, 100),
    attempts=st.integers(1, 50),
    rng=st.randoms(use_true_random=False),
)
def test_delays_stay_within_bounds(
    base: float, factor: float, cap: float, attempts: int, rng: random.Random
) -> None:
    backoff = Backoff(base=base, factor=factor, cap=cap)
    for n in range(attempts):
        delay = backoff.next_delay(rng)
        assert 0 <= delay <= min(cap, base * factor**n)
    assert backoff.attempt == attempts


@pytest.mark.parametrize("factor", [2.0, 1e300])
def test_huge_attempt_counts_do_not_overflow(factor: float) -> None:
    backoff = Backoff(factor=factor)
    for _ in range(2000):
        delay = backoff.next_delay(Fixed(1.0))
    assert delay == 30.0
    assert backoff.attempt == 2000


def test_zero_base_never_waits() -> None:
    backoff = Backoff(base=0.0)
    assert all(backoff.next_delay(Fixed(1.0)) == 0.0 for _ in range(2000))


@pytest.mark.parametrize(
    ("up_at", "down_at", "attempt_after"),
    [
        (100.0, 130.0, 0),  # healthy for reset_after: start over
        (100.0, 500.0, 0),
        (100.0, 129.9, 3),  # dropped soon after the handshake: keep backing off
        (100.0, 100.0, 3),
    ],
)
def test_reset_after_a_healthy_connection(up_at: float, down_at: float, attempt_after: int) -> None:
    backoff = Backoff(reset_after=30.0)
    for _ in range(3):
        backoff.next_delay(Fixed(0.5))
    backoff.connected(up_at)
    backoff.disconnected(down_at)
    assert backoff.attempt == attempt_after


def test_disconnect_without_connect_keeps_the_count() -> None:
    backoff = Backoff()
    backoff.next_delay(Fixed(0.5))
    backoff.disconnected(1000.0)
    assert backoff.attempt == 1


def test_each_connection_is_timed_on_its_own() -> None:
    backoff = Backoff(reset_after=30.0)
    backoff.connected(0.0)
    backoff.disconnected(1.0)
    backoff.next_delay(Fixed(0.5))
    backoff.next_delay(Fixed(0.5))
    backoff.disconnected(100.0)  # no connection since the last drop: not a healthy one
    assert backoff.attempt == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base": -0.1},
        {"base": float("nan")},
        {"factor": 0.5},
        {"factor": float("inf")},
        {"cap": float("inf")},
        {"cap": -1.0},
        {"reset_after": -1.0},
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        Backoff(**kwargs)

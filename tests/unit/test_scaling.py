"""When the helper opens an extra tunnel, and when it lets one go (ptth/_scaling.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ptth._scaling import ScalePolicy

POLICY = ScalePolicy(base=1, maximum=4, threshold=0.8, idle_after=30.0)


def test_opens_another_only_when_every_tunnel_is_over_the_threshold() -> None:
    assert POLICY.wants_more([(80, 100)], dialling=0)
    assert not POLICY.wants_more([(79, 100)], dialling=0)
    assert not POLICY.wants_more([(90, 100), (10, 100)], dialling=0)
    assert POLICY.wants_more([(90, 100), (85, 100)], dialling=0)


def test_never_more_than_the_maximum_counting_those_still_dialling() -> None:
    assert not POLICY.wants_more([(100, 100)] * 4, dialling=0)
    assert not POLICY.wants_more([(100, 100)] * 3, dialling=1)
    assert POLICY.wants_more([(100, 100)] * 2, dialling=1)


def test_no_tunnel_or_no_capacity_opens_nothing() -> None:
    assert not POLICY.wants_more([], dialling=0)
    assert not POLICY.wants_more([(0, 0)], dialling=0)


def test_idle_expiry() -> None:
    assert POLICY.idle_expired(0, idle_since=0.0, now=30.0)
    assert not POLICY.idle_expired(0, idle_since=0.0, now=29.9)
    assert not POLICY.idle_expired(1, idle_since=0.0, now=100.0)
    assert not POLICY.idle_expired(0, idle_since=None, now=100.0)


@given(
    st.lists(st.tuples(st.integers(0, 2000), st.integers(1, 2000)), max_size=8),
    st.integers(0, 8),
    st.integers(1, 8),
)
def test_wants_more_respects_the_bound_and_the_threshold(
    loads: list[tuple[int, int]], dialling: int, maximum: int
) -> None:
    policy = ScalePolicy(base=1, maximum=maximum)
    if policy.wants_more(loads, dialling):
        assert len(loads) + dialling < maximum
        assert all(used >= 0.8 * capacity for used, capacity in loads)

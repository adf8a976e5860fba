"""Balancer: weighted power-of-two-choices on least in-flight streams."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.balancer import pick


@dataclass(eq=False)  # identity, so tests can tell equal-looking tunnels apart
class Tunnel:
    in_flight: int = 0
    max_streams: int = 100
    weight: float = 1.0


@pytest.mark.parametrize(
    "tunnels",
    [
        [],
        [Tunnel(in_flight=100)],
        [Tunnel(in_flight=5, max_streams=5), Tunnel(in_flight=7, max_streams=5)],
        [Tunnel(weight=0)],
        [Tunnel(weight=-1), Tunnel(max_streams=0)],
        [Tunnel(weight=float("nan")), Tunnel(weight=float("inf"))],
    ],
)
def test_nothing_available(tunnels: list[Tunnel]) -> None:
    assert pick(tunnels, random.Random(0)) is None


def test_single_open_candidate_is_chosen() -> None:
    open_one = Tunnel(in_flight=99)
    tunnels = [Tunnel(in_flight=100), open_one, Tunnel(weight=0)]
    assert pick(tunnels, random.Random(0)) is open_one


def test_two_candidates_always_go_to_the_lower_score() -> None:
    busy, idle = Tunnel(in_flight=3), Tunnel(in_flight=1)
    rng = random.Random(1)
    assert all(pick([busy, idle], rng) is idle for _ in range(100))
    # (3 + 1) / 2 = 2 beats (2 + 1) / 1 = 3: weight counts.
    heavy, light = Tunnel(in_flight=3, weight=2), Tunnel(in_flight=2, weight=1)
    assert all(pick([heavy, light], rng) is heavy for _ in range(100))


_tunnels = st.lists(
    st.builds(
        Tunnel,
        in_flight=st.integers(0, 10),
        max_streams=st.integers(0, 10),
        weight=st.sampled_from([0.0, -1.0, 0.5, 1.0, 3.0]),
    ),
    max_size=8,
)


@given(_tunnels, st.randoms(use_true_random=False))
def test_never_returns_a_full_or_weightless_candidate(
    tunnels: list[Tunnel], rng: random.Random
) -> None:
    chosen = pick(tunnels, rng)
    usable = [t for t in tunnels if t.in_flight < t.max_streams and t.weight > 0]
    if not usable:
        assert chosen is None
        return
    assert chosen is not None
    assert any(chosen is t for t in usable)
    # Power of two choices never picks the single most loaded tunnel when it has company.
    worst = max((t.in_flight + 1) / t.weight for t in usable)
    if len(usable) > 1 and sum((t.in_flight + 1) / t.weight == worst for t in usable) == 1:
        assert (chosen.in_flight + 1) / chosen.weight < worst


def test_equal_tunnels_share_evenly_without_load() -> None:
    tunnels = [Tunnel(), Tunnel(), Tunnel()]
    rng = random.Random(42)
    counts = Counter(id(pick(tunnels, rng)) for _ in range(3000))
    assert sorted(counts) == sorted(id(t) for t in tunnels)
    assert all(850 <= n <= 1150 for n in counts.values()), counts


def _simulate(tunnels: list[Tunnel], picks: int, seed: int, load: int = 30) -> list[int]:
    """Place ``picks`` requests; keep about ``load`` in flight, finishing a random one each time.

    Every request takes the same expected time, so a tunnel's throughput follows its in-flight
    count, which is what the balancer steers.
    """
    rng = random.Random(seed)
    sim = random.Random(seed + 1)
    counts = [0] * len(tunnels)
    for _ in range(picks):
        chosen = pick(tunnels, rng)
        assert chosen is not None
        chosen.in_flight += 1
        counts[tunnels.index(chosen)] += 1
        total = sum(t.in_flight for t in tunnels)
        if total > load:
            (done,) = sim.choices(tunnels, weights=[t.in_flight for t in tunnels])
            done.in_flight -= 1
    return counts


def test_equal_tunnels_share_evenly_under_load() -> None:
    counts = _simulate([Tunnel(), Tunnel(), Tunnel()], 3000, seed=7)
    assert all(900 <= n <= 1100 for n in counts), counts


@pytest.mark.parametrize(
    ("weights", "shares"),
    [
        ([2.0, 1.0], [2 / 3, 1 / 3]),
        ([2.0, 1.0, 1.0], [1 / 2, 1 / 4, 1 / 4]),
        ([3.0, 1.0], [3 / 4, 1 / 4]),
    ],
)
def test_weight_sets_the_share_of_traffic(weights: list[float], shares: list[float]) -> None:
    picks = 20000
    counts = _simulate([Tunnel(weight=w) for w in weights], picks, seed=3)
    for n, share in zip(counts, shares, strict=True):
        assert abs(n / picks - share) < 0.05, (counts, shares)


def test_full_tunnel_is_skipped_under_load() -> None:
    small, big = Tunnel(max_streams=2), Tunnel(max_streams=1000)
    rng = random.Random(5)
    for _ in range(50):
        chosen = pick([small, big], rng)
        assert chosen is not None
        chosen.in_flight += 1
    assert small.in_flight == 2
    assert big.in_flight == 48

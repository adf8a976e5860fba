"""Keepalive policy: ping after ``interval`` of silence, give up after ``dead_after``."""

from __future__ import annotations

import pytest

from ptth.engine import Liveness, Verdict


@pytest.mark.parametrize(
    ("silent", "verdict"),
    [
        (0.0, Verdict.ALIVE),
        (9.99, Verdict.ALIVE),
        (10.0, Verdict.PING),
        (19.99, Verdict.PING),
        (20.0, Verdict.DEAD),
        (600.0, Verdict.DEAD),
    ],
)
def test_verdict_by_silence(silent: float, verdict: Verdict) -> None:
    assert Liveness(interval=10.0, dead_after=20.0).verdict(silent) is verdict


def test_dead_before_ping_when_dead_after_is_shorter() -> None:
    liveness = Liveness(interval=30.0, dead_after=5.0)
    assert liveness.verdict(5.0) is Verdict.DEAD
    assert liveness.check_every == 2.5


def test_checks_twice_per_interval() -> None:
    assert Liveness(interval=10.0, dead_after=20.0).check_every == 5.0

"""Passive health arithmetic (router/outlier.py): when a tunnel is ejected, for how long, and
which stream endings count as failures."""

from __future__ import annotations

import pytest
from h2.errors import ErrorCodes
from hypothesis import given
from hypothesis import strategies as st

from ptth.errors import (
    BadGateway,
    BodyTooLarge,
    NoTunnel,
    RequestTimeout,
    ResponseTimeout,
    StreamReset,
    TunnelClosed,
    TunnelError,
)
from router.outlier import (
    NEUTRAL,
    SUCCESS,
    OutlierDetector,
    OutlierPolicy,
    StreamOutcome,
    Verdict,
    failed,
    outcome_of,
)
from tests.unit.test_purity import FORBIDDEN, ROOT, forbidden_imports

FAIL = failed("stream reset by backend (INTERNAL_ERROR)")


def test_outlier_module_is_pure() -> None:
    assert forbidden_imports(ROOT / "router/outlier.py", FORBIDDEN) == []


def test_five_failures_eject_for_the_base_interval_then_it_returns() -> None:
    detector = OutlierDetector(OutlierPolicy(failures=5, ejection=10, max_ejection=300))
    for i in range(4):
        assert detector.record(FAIL, float(i)) is None
        assert not detector.ejected(float(i))
    ejection = detector.record(FAIL, 4.0)
    assert ejection is not None
    assert (ejection.duration, ejection.times, ejection.failures) == (10, 1, 5)
    assert ejection.last_failure == FAIL.reason
    assert ejection.until == 14.0
    assert detector.ejected(13.9)
    assert detector.take_return(13.9) is None
    assert not detector.ejected(14.0)
    assert detector.take_return(14.0) is ejection
    assert detector.take_return(14.0) is None  # the return is reported once


def test_repeated_ejections_double_up_to_the_cap() -> None:
    detector = OutlierDetector(OutlierPolicy(failures=2, ejection=10, max_ejection=35))
    now = 0.0
    durations = []
    for _ in range(5):
        detector.record(FAIL, now)
        ejection = detector.record(FAIL, now)
        assert ejection is not None
        durations.append(ejection.duration)
        now = ejection.until
    assert durations == [10, 20, 35, 35, 35]


def test_a_success_resets_both_counts() -> None:
    detector = OutlierDetector(OutlierPolicy(failures=2, ejection=10, max_ejection=300))
    detector.record(FAIL, 0)
    first = detector.record(FAIL, 0)
    assert first is not None
    detector.record(FAIL, 10)
    detector.record(SUCCESS, 10)
    assert detector.record(FAIL, 11) is None  # the count started again
    again = detector.record(FAIL, 11)
    assert again is not None and again.duration == 10 and again.times == 1


def test_neutral_outcomes_neither_count_nor_reset() -> None:
    detector = OutlierDetector(OutlierPolicy(failures=2, ejection=10, max_ejection=300))
    detector.record(FAIL, 0)
    detector.record(NEUTRAL, 0)
    assert detector.record(FAIL, 0) is not None


def test_failures_while_ejected_are_ignored() -> None:
    """Streams opened before the ejection fail too: they must not extend it or count twice."""
    detector = OutlierDetector(OutlierPolicy(failures=2, ejection=10, max_ejection=300))
    detector.record(FAIL, 0)
    assert detector.record(FAIL, 0) is not None
    for _ in range(10):
        assert detector.record(FAIL, 5) is None
    assert detector.ejection is not None and detector.ejection.until == 10
    assert detector.consecutive == 0


def test_zero_failures_turns_detection_off() -> None:
    detector = OutlierDetector(OutlierPolicy(failures=0))
    for i in range(100):
        assert detector.record(FAIL, float(i)) is None
    assert not detector.ejected(100)


def test_no_overflow_after_very_many_ejections() -> None:
    policy = OutlierPolicy(failures=1, ejection=0.001, max_ejection=300)
    assert policy.duration(10_000) == 300


@pytest.mark.parametrize(
    ("error", "verdict"),
    [
        (None, Verdict.SUCCESS),
        (StreamReset(ErrorCodes.INTERNAL_ERROR), Verdict.FAILURE),
        (StreamReset(ErrorCodes.CANCEL), Verdict.FAILURE),
        (StreamReset(ErrorCodes.REFUSED_STREAM, refused=True), Verdict.NEUTRAL),
        (TunnelClosed("peer sent GOAWAY (1)", error_code=1), Verdict.FAILURE),
        (TunnelError("stream ended without headers"), Verdict.FAILURE),
        (ResponseTimeout("no response headers within 30 s"), Verdict.FAILURE),
        (BadGateway("backend sent an invalid response: no :status"), Verdict.FAILURE),
        (BadGateway("tunnel lost before the response: connection lost"), Verdict.FAILURE),
        (RequestTimeout("request body stalled for 30 s"), Verdict.NEUTRAL),
        (BodyTooLarge("request body over 10 bytes"), Verdict.NEUTRAL),
        (NoTunnel("no live tunnel"), Verdict.NEUTRAL),
        (KeyboardInterrupt(), Verdict.NEUTRAL),
        (ConnectionResetError(), Verdict.NEUTRAL),  # the user's socket, not the tunnel
    ],
)
def test_which_endings_are_failures(error: BaseException | None, verdict: Verdict) -> None:
    outcome = outcome_of(error)
    assert outcome.verdict is verdict
    if verdict is Verdict.FAILURE:
        assert outcome.reason


def test_a_reset_names_its_code() -> None:
    assert outcome_of(StreamReset(ErrorCodes.INTERNAL_ERROR)).reason == (
        "stream reset by backend (INTERNAL_ERROR)"
    )
    assert outcome_of(StreamReset(0xFFFF)).reason == "stream reset by backend (code 65535)"


# -- properties over random outcome sequences ----------------------------------------------------

outcomes = st.sampled_from([SUCCESS, NEUTRAL, FAIL])
steps = st.lists(st.tuples(st.floats(0, 50, allow_nan=False), outcomes), max_size=200)
policies = st.builds(
    OutlierPolicy,
    failures=st.integers(1, 6),
    ejection=st.floats(0.01, 20, allow_nan=False),
    max_ejection=st.floats(20, 200, allow_nan=False),
)


@given(policy=policies, sequence=steps)
def test_ejections_follow_the_rules(
    policy: OutlierPolicy, sequence: list[tuple[float, StreamOutcome]]
) -> None:
    """Replay random outcomes at random times against a plain model of the rules.

    Never ejected while fewer than N failures in a row were counted since the last success or
    ejection; each interval is base * 2**(k-1) capped by the max, k being the ejections since
    the last success; a success resets k.
    """
    detector = OutlierDetector(policy)
    now = 0.0
    run = 0  # counted failures in a row
    times = 0  # ejections since the last success
    until: float | None = None
    for dt, outcome in sequence:
        now += dt
        ejected_before = until is not None and now < until
        assert detector.ejected(now) == ejected_before
        ejection = detector.record(outcome, now)
        if outcome is SUCCESS:
            run = times = 0
        elif outcome is FAIL and not ejected_before:
            run += 1
        if ejection is None:
            assert run < policy.failures or outcome is not FAIL or ejected_before
            continue
        assert outcome is FAIL and not ejected_before
        assert run == policy.failures  # exactly the N-th counted failure in a row
        times += 1
        assert ejection.times == times
        assert ejection.duration <= policy.max_ejection
        assert ejection.duration == min(policy.max_ejection, policy.ejection * 2 ** (times - 1))
        assert ejection.until == now + ejection.duration
        until = ejection.until
        run = 0


@given(policy=policies, sequence=steps)
def test_a_success_always_makes_the_next_ejection_the_first(
    policy: OutlierPolicy, sequence: list[tuple[float, StreamOutcome]]
) -> None:
    detector = OutlierDetector(policy)
    now = 0.0
    for dt, outcome in sequence:
        now += dt
        detector.record(outcome, now)
    detector.record(SUCCESS, now)
    now += policy.max_ejection  # past any ejection still running
    ejection = None
    for _ in range(policy.failures):
        assert ejection is None
        ejection = detector.record(FAIL, now)
    assert ejection is not None
    assert ejection.times == 1
    assert ejection.duration == min(policy.ejection, policy.max_ejection)

"""Passive health of one tunnel: consecutive failed streams take it out of rotation for a while.

Envoy's consecutive-5xx outlier detection, counted on streams instead of statuses (ARCHITECTURE.md,
"Passive health"): after ``failures`` failed streams in a row the tunnel is ejected for
``ejection * 2**(k-1)`` seconds, where ``k`` counts its ejections since its last success, capped at
``max_ejection``. When the interval ends it is back in rotation with a clean failure count, so it
takes ``failures`` more failures to eject it again, for twice as long. One success resets both
counts. A failure reported while the tunnel is ejected (a stream opened before the ejection) is
ignored: it says nothing new.

What counts as a failure is decided by the proxies (a reset, a lost tunnel, a timeout, a malformed
response head); what they report is a :class:`StreamOutcome`. Pure code: time is passed in.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from h2.errors import ErrorCodes

from ptth.errors import BadGateway, ResponseTimeout, StreamReset, TunnelError

__all__ = [
    "NEUTRAL",
    "SUCCESS",
    "Ejection",
    "OutlierDetector",
    "OutlierPolicy",
    "StreamOutcome",
    "Verdict",
    "failed",
    "outcome_of",
]


class Verdict(enum.Enum):
    SUCCESS = "success"  # the backend answered (any status: a 500 is the app's answer)
    FAILURE = "failure"  # the tunnel or the backend failed the stream
    NEUTRAL = "neutral"  # says nothing about the backend (the user left, refused, never sent)


@dataclass(frozen=True)
class StreamOutcome:
    """What one stream says about its tunnel; ``reason`` names a failure for the log."""

    verdict: Verdict
    reason: str = ""


SUCCESS = StreamOutcome(Verdict.SUCCESS)
NEUTRAL = StreamOutcome(Verdict.NEUTRAL)


def failed(reason: str) -> StreamOutcome:
    return StreamOutcome(Verdict.FAILURE, reason)


def outcome_of(error: BaseException | None) -> StreamOutcome:
    """What a stream that ended with ``error`` (``None``: it completed) says about its tunnel.

    Failures: the backend reset the stream, the tunnel died under it or broke the protocol
    (``TunnelError``), no response head in time (504), a malformed response head or a stalled
    body (502). Anything else says nothing about the backend: the user leaving or cancelling,
    the request's own faults (408, 413), and a refused stream, which the backend never processed
    (RFC 9113 §8.7) and which is retried elsewhere; refusing is how a draining or full backend
    sheds load, and ejecting it for that would only push the load onto the others.
    """
    if error is None:
        return SUCCESS
    if isinstance(error, StreamReset):
        if error.refused:
            return NEUTRAL
        return failed(f"stream reset by backend ({_code_name(error.error_code)})")
    if isinstance(error, BadGateway | ResponseTimeout | TunnelError):
        return failed(str(error))
    return NEUTRAL


def _code_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"code {code}"


@dataclass(frozen=True)
class OutlierPolicy:
    """The settings (RouterConfig's ``outlier_*``); ``failures`` 0 turns detection off."""

    failures: int = 5
    ejection: float = 10.0
    max_ejection: float = 300.0

    def duration(self, times: int) -> float:
        """Seconds of the ``times``-th ejection in a row (1-based)."""
        # The exponent is bounded so a long run of ejections cannot overflow the float.
        return min(self.max_ejection, self.ejection * 2.0 ** min(times - 1, 64))


@dataclass(frozen=True)
class Ejection:
    """One ejection: how long, the how-manieth in a row, and what led to it."""

    duration: float
    times: int  # ejections since the last success, this one included
    failures: int  # failed streams in a row that caused it
    last_failure: str
    until: float


class OutlierDetector:
    """The failure and ejection counts of one tunnel."""

    def __init__(self, policy: OutlierPolicy | None = None) -> None:
        self.policy = policy or OutlierPolicy()
        self.consecutive = 0  # failed streams in a row since the last success or ejection
        self.times = 0  # ejections since the last success
        self.last_failure = ""
        self.ejection: Ejection | None = None  # the current one, until it has been taken back

    def ejected(self, now: float) -> bool:
        return self.ejection is not None and now < self.ejection.until

    def record(self, outcome: StreamOutcome, now: float) -> Ejection | None:
        """Count one stream's outcome; the new ejection when this failure caused one."""
        if self.policy.failures <= 0:
            return None
        if outcome.verdict is Verdict.SUCCESS:
            self.consecutive = 0
            self.times = 0
            return None
        if outcome.verdict is not Verdict.FAILURE or self.ejected(now):
            return None
        self.consecutive += 1
        self.last_failure = outcome.reason
        if self.consecutive < self.policy.failures:
            return None
        self.times += 1
        duration = self.policy.duration(self.times)
        self.ejection = Ejection(
            duration=duration,
            times=self.times,
            failures=self.consecutive,
            last_failure=self.last_failure,
            until=now + duration,
        )
        self.consecutive = 0
        return self.ejection

    def take_return(self, now: float) -> Ejection | None:
        """The ejection that has just ended (once), so the caller can log the return."""
        ejection = self.ejection
        if ejection is None or now < ejection.until:
            return None
        self.ejection = None
        return ejection

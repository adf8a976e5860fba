"""Admission on the tunnel port: pending caps (global, per address) and the auth throttle."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptth.errors import ConfigError
from router.ratelimit import RateLimiter
from router.tunnel_admission import ADDRESS_FULL, GLOBAL_FULL, TunnelAdmission, client_key


def admission(**overrides: float) -> TunnelAdmission:
    values: dict[str, float] = {
        "max_pending": 8,
        "max_pending_per_address": 3,
        "auth_failure_rate": 0.2,
        "auth_failure_burst": 10,
    }
    values.update(overrides)
    return TunnelAdmission(
        max_pending=int(values["max_pending"]),
        max_pending_per_address=int(values["max_pending_per_address"]),
        auth_failure_rate=values["auth_failure_rate"],
        auth_failure_burst=values["auth_failure_burst"],
    )


# -- address groups ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("fe80::1%eth0", "fe80::/64"),
        ("/run/ptth.sock", "/run/ptth.sock"),
        ("?", "?"),
    ],
)
def test_client_key_groups_ipv6_by_64(address: str, key: str) -> None:
    assert client_key(address) == key


def test_one_ipv6_64_shares_one_per_address_cap() -> None:
    gate = admission(max_pending_per_address=2)
    assert gate.enter("2001:db8::1") is None
    assert gate.enter("2001:db8::2") is None
    refusal = gate.enter("2001:db8::ffff:3")
    assert refusal is not None and refusal.status == 503
    assert gate.enter("2001:db8:0:1::1") is None  # the next /64 is someone else


# -- pending caps --------------------------------------------------------------------------


def test_per_address_cap_refuses_with_503_and_retry_after() -> None:
    gate = admission(max_pending_per_address=3)
    assert [gate.enter("192.0.2.1") for _ in range(3)] == [None] * 3
    refusal = gate.enter("192.0.2.1")
    assert refusal is not None
    assert (refusal.status, refusal.reason) == (503, ADDRESS_FULL)
    assert refusal.retry_after == 5.0 and refusal.retryable
    assert gate.enter("192.0.2.2") is None  # other addresses are unaffected
    gate.leave("192.0.2.1")
    assert gate.enter("192.0.2.1") is None  # a freed slot is usable again
    assert gate.pending == 4 and gate.pending_from("192.0.2.1") == 3


def test_global_cap_refuses_everyone_once_full() -> None:
    gate = admission(max_pending=4, max_pending_per_address=4)
    for i in range(4):
        assert gate.enter(f"192.0.2.{i}") is None
    refusal = gate.enter("198.51.100.1")
    assert refusal is not None and (refusal.status, refusal.reason) == (503, GLOBAL_FULL)
    gate.leave("192.0.2.0")
    assert gate.enter("198.51.100.1") is None


def test_refused_enter_is_not_counted_and_stray_leave_is_harmless() -> None:
    gate = admission(max_pending_per_address=1)
    assert gate.enter("192.0.2.1") is None
    assert gate.enter("192.0.2.1") is not None
    gate.leave("192.0.2.1")
    gate.leave("192.0.2.1")  # one too many
    gate.leave("203.0.113.9")  # never entered
    assert gate.pending == 0 and gate.tracked == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"max_pending": 0}, {"max_pending_per_address": 0}, {"auth_failure_rate": 0}],
)
def test_bad_limits_are_config_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        admission(**kwargs)


addresses = st.sampled_from(["192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2", "::1"])
operations = st.lists(st.tuples(st.booleans(), addresses), max_size=200)


@settings(max_examples=300, deadline=None)
@given(operations, st.integers(1, 6), st.integers(1, 4))
def test_counts_never_go_negative_or_leak(
    ops: list[tuple[bool, str]], max_pending: int, per_address: int
) -> None:
    """Against a model: enter admits iff both caps allow; a leave frees one slot of its group."""
    gate = admission(max_pending=max_pending, max_pending_per_address=per_address)
    model: dict[str, int] = {}
    admitted: list[str] = []
    for is_enter, address in ops:
        key = client_key(address)
        if is_enter:
            allowed = sum(model.values()) < max_pending and model.get(key, 0) < per_address
            refusal = gate.enter(address)
            assert (refusal is None) == allowed
            if allowed:
                model[key] = model.get(key, 0) + 1
                admitted.append(address)
            else:
                assert refusal is not None and refusal.status == 503
        else:
            # Counts are per group: a leave frees a slot of its group, if it holds one; a
            # stray leave (nothing pending in its group) changes nothing.
            same_group = [a for a in admitted if client_key(a) == key]
            if same_group:
                admitted.remove(same_group[0])
                model[key] -= 1
            gate.leave(address)
        assert gate.pending == sum(model.values()) >= 0
        assert gate.pending <= max_pending
        assert gate.tracked == sum(1 for count in model.values() if count > 0)
        for each in {client_key(a) for a in admitted}:
            assert 0 < gate.pending_from(each) <= per_address
    for address in list(admitted):
        gate.leave(address)
    assert gate.pending == 0 and gate.tracked == 0


# -- auth throttle -------------------------------------------------------------------------


def test_burst_of_failures_then_429_before_the_token_is_checked() -> None:
    gate = admission(auth_failure_rate=0.2, auth_failure_burst=10)
    now = 100.0
    trips = []
    for _ in range(10):
        assert gate.throttled("192.0.2.1", now) is None
        trips.append(gate.failed("192.0.2.1", now))
    assert trips[:9] == [None] * 9
    assert trips[9] == pytest.approx(5.0)  # the tenth failure used the last token
    refusal = gate.throttled("192.0.2.1", now)
    assert refusal is not None and refusal.status == 429 and refusal.retryable
    assert refusal.retry_after == pytest.approx(5.0)
    assert gate.throttled("192.0.2.1", now + 2.5) is not None  # half a token back: still 429
    assert gate.throttled("192.0.2.2", now) is None  # another address may still try
    assert gate.throttled("192.0.2.1", now + 5.0) is None  # one attempt per 1/rate seconds
    assert gate.failed("192.0.2.1", now + 5.0) == pytest.approx(5.0)


def test_ipv6_failures_count_per_64() -> None:
    gate = admission(auth_failure_burst=2)
    gate.failed("2001:db8::1", 0.0)
    gate.failed("2001:db8::2", 0.0)
    assert gate.throttled("2001:db8::3", 0.0) is not None
    assert gate.throttled("2001:db8:0:1::3", 0.0) is None


def test_a_failure_while_already_throttled_is_not_a_new_trip() -> None:
    gate = admission(auth_failure_burst=1)
    assert gate.failed("192.0.2.1", 0.0) is not None
    assert gate.failed("192.0.2.1", 0.0) is None  # concurrent handshakes that passed the check


def test_checking_costs_no_memory() -> None:
    limiter = RateLimiter(rate=1, burst=2, max_clients=10)
    for i in range(100):
        assert limiter.wait(f"c{i}", 0.0) == 0.0
    assert len(limiter) == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=300))
def test_failure_memory_is_bounded_against_spraying(sprayed: list[int]) -> None:
    gate = TunnelAdmission(
        max_pending=8,
        max_pending_per_address=2,
        auth_failure_rate=0.2,
        auth_failure_burst=3,
        max_tracked=50,
    )
    for n in sprayed:
        gate.failed(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", 0.0)
        assert gate.tracked_failures <= 51  # the cap plus the shared overflow bucket
    assert gate.pending == 0 and gate.tracked == 0

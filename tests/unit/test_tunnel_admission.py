"""Admission on the tunnel port: pending caps (global, per address) and the auth throttle."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptth.errors import ConfigError, HandshakeRefused
from router.ratelimit import RateLimiter
from router.tunnel_admission import (
    ADDRESS_FULL,
    GLOBAL_FULL,
    Admitted,
    TunnelAdmission,
    client_key,
)


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


def admit(gate: TunnelAdmission, address: str) -> Admitted:
    result = gate.enter(address)
    assert isinstance(result, Admitted), result
    return result


def refused(gate: TunnelAdmission, address: str) -> HandshakeRefused:
    result = gate.enter(address)
    assert isinstance(result, HandshakeRefused), result
    return result


def test_one_ipv6_64_shares_one_per_address_cap() -> None:
    gate = admission(max_pending_per_address=2)
    admit(gate, "2001:db8::1")
    admit(gate, "2001:db8::2")
    assert refused(gate, "2001:db8::ffff:3").status == 503
    admit(gate, "2001:db8:0:1::1")  # the next /64 is someone else


# -- pending caps --------------------------------------------------------------------------


def test_per_address_cap_refuses_with_503_and_retry_after() -> None:
    gate = admission(max_pending_per_address=3)
    tickets = [admit(gate, "192.0.2.1").ticket for _ in range(3)]
    assert len(set(tickets)) == 3
    refusal = refused(gate, "192.0.2.1")
    assert (refusal.status, refusal.reason) == (503, ADDRESS_FULL)
    assert refusal.retry_after == 5.0 and refusal.retryable
    admit(gate, "192.0.2.2")  # other addresses are unaffected
    gate.leave(tickets[0])
    admit(gate, "192.0.2.1")  # a freed slot is usable again
    assert gate.pending == 4 and gate.pending_from("192.0.2.1") == 3


def test_global_cap_refuses_when_the_shares_are_even() -> None:
    gate = admission(max_pending=4, max_pending_per_address=4)
    first = [admit(gate, f"192.0.2.{i}") for i in range(4)]  # one each: nobody holds more
    refusal = refused(gate, "198.51.100.1")
    assert (refusal.status, refusal.reason) == (503, GLOBAL_FULL)
    gate.leave(first[2].ticket)
    assert admit(gate, "198.51.100.1").evicted is None


def test_global_cap_evicts_the_oldest_of_the_busiest_address() -> None:
    gate = admission(max_pending=5, max_pending_per_address=4)
    attacker = [admit(gate, "192.0.2.66") for _ in range(3)]
    others = [admit(gate, "192.0.2.1"), admit(gate, "192.0.2.2")]
    newcomer = admit(gate, "198.51.100.7")  # holds 0; the attacker holds 3
    assert newcomer.evicted == attacker[0].ticket
    assert gate.pending == 5 and gate.pending_from("192.0.2.66") == 2
    gate.leave(attacker[0].ticket)  # the evicted connection's own leave changes nothing
    assert gate.pending == 5
    assert admit(gate, "198.51.100.8").evicted == attacker[1].ticket  # 2 > 0 + 1
    # Now every address holds one: the shares are even, nobody is evicted.
    assert refused(gate, "198.51.100.9").reason == GLOBAL_FULL
    assert {e.evicted for e in others} == {None}


def test_a_busy_address_cannot_evict_to_gain_on_an_equal_one() -> None:
    gate = admission(max_pending=4, max_pending_per_address=4)
    admit(gate, "192.0.2.1")
    admit(gate, "192.0.2.1")
    admit(gate, "192.0.2.2")
    admit(gate, "192.0.2.2")
    assert refused(gate, "192.0.2.1").reason == GLOBAL_FULL  # 2 vs 2: no gain in evicting
    assert admit(gate, "192.0.2.3").evicted is not None  # 0 vs 2: evens out


def test_stray_leave_is_harmless() -> None:
    gate = admission(max_pending_per_address=1)
    ticket = admit(gate, "192.0.2.1").ticket
    assert refused(gate, "192.0.2.1").status == 503
    gate.leave(ticket)
    gate.leave(ticket)  # one too many
    gate.leave(12345)  # never issued
    assert gate.pending == 0 and gate.tracked == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"max_pending": 0}, {"max_pending_per_address": 0}, {"auth_failure_rate": 0}],
)
def test_bad_limits_are_config_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        admission(**kwargs)


addresses = st.sampled_from(["192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2", "::1"])
# (enter?, address, which pending connection leaves)
operations = st.lists(st.tuples(st.booleans(), addresses, st.integers(0, 10)), max_size=200)


@settings(max_examples=300, deadline=None)
@given(operations, st.integers(1, 6), st.integers(1, 4))
def test_counts_never_go_negative_or_leak(
    ops: list[tuple[bool, str, int]], max_pending: int, per_address: int
) -> None:
    """Against a model: the per-address cap refuses; a full router evicts the oldest pending
    connection of a busiest group holding two more than the newcomer's, else refuses; every
    leave frees exactly its own slot."""
    gate = admission(max_pending=max_pending, max_pending_per_address=per_address)
    model: dict[int, str] = {}  # ticket -> group, oldest first
    for is_enter, address, pick in ops:
        key = client_key(address)
        if is_enter:
            sizes = Counter(model.values())
            result = gate.enter(address)
            if sizes[key] >= per_address:
                assert isinstance(result, HandshakeRefused) and result.reason == ADDRESS_FULL
            elif len(model) >= max_pending and max(sizes.values()) < sizes[key] + 2:
                assert isinstance(result, HandshakeRefused) and result.reason == GLOBAL_FULL
            else:
                assert isinstance(result, Admitted), result
                if len(model) >= max_pending:
                    assert result.evicted is not None
                    victim = model[result.evicted]
                    assert sizes[victim] == max(sizes.values())  # from a busiest group
                    assert result.evicted == min(t for t, k in model.items() if k == victim)
                    del model[result.evicted]
                else:
                    assert result.evicted is None
                assert result.ticket not in model
                model[result.ticket] = key
        elif model:
            ticket = list(model)[pick % len(model)]
            del model[ticket]
            gate.leave(ticket)
        assert gate.pending == len(model) <= max_pending
        groups = Counter(model.values())
        assert gate.tracked == len(groups)
        for group, count in groups.items():
            assert gate.pending_from(group) == count <= per_address
    for ticket in list(model):
        gate.leave(ticket)
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

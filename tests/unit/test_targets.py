"""Targets of the helper (ptth/_targets.py): which router names are dialled once per address,
and ``watch``, the lookup loop, driven by a scripted resolver on trio's autojump clock."""

from __future__ import annotations

import itertools
import socket

import anyio
import pytest
import trio

from ptth._targets import Target, expands, watch
from ptth.proto.address import parse_router_address
from ptth.proto.connect import ProxyURL


@pytest.mark.parametrize(
    ("address", "proxied", "each"),
    [
        ("routers.example.com:8887", False, True),
        ("tls://routers.example.com:8443", False, True),
        ("10.0.0.1:8887", False, False),
        ("[2001:db8::1]:8887", False, False),
        ("routers.example.com:8887", True, False),
        ("localhost:8887", False, False),
        ("LocalHost.:8887", False, False),
        ("app.localhost:8887", False, False),
    ],
)
def test_expands(address: str, proxied: bool, each: bool) -> None:
    proxy = ProxyURL("proxy", 3128) if proxied else None
    assert expands(parse_router_address(address), proxy) is each


def test_target_names() -> None:
    address = parse_router_address("tls://routers.example.com:8443")
    assert str(Target(address)) == "routers.example.com:8443"
    assert str(Target(address, "2001:db8::7")) == "routers.example.com:8443 (2001:db8::7)"
    assert Target(address, "10.0.0.2").key == ("10.0.0.2", 8443)
    assert Target(address).key == ("routers.example.com", 8443)


async def test_watch_reports_changes_keeps_addresses_on_failure_and_wakes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    address = parse_router_address("routers.example.com:8887")
    answers: list[list[str] | OSError] = [
        ["10.0.0.1", "10.0.0.2"],
        ["10.0.0.1", "10.0.0.2"],
        ["10.0.0.2", "10.0.0.3"],
        socket.gaierror(socket.EAI_AGAIN, "Temporary failure"),
        [],
        ["10.0.0.3"],
    ]
    lookups: list[float] = []
    changes: list[tuple[set[str], set[str]]] = []
    wake_event = anyio.Event()

    async def resolver(host: str, port: int) -> list[str]:
        assert (host, port) == ("routers.example.com", 8887)
        lookups.append(trio.current_time())
        answer = answers.pop(0) if answers else ["10.0.0.3"]
        if isinstance(answer, OSError):
            raise answer
        return answer

    async def changed(added: set[str], removed: set[str]) -> None:
        changes.append((added, removed))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, address, 30.0, changed, lambda: wake_event, resolver)
        await trio.sleep(0.5)
        assert changes == [({"10.0.0.1", "10.0.0.2"}, set())]
        await trio.sleep(30)  # the periodic lookup: same answer, nothing to report
        assert len(changes) == 1
        wake_event.set()  # a failed dial asks for a lookup now (after the 1 s minimum)
        await trio.sleep(1.5)
        assert changes[-1] == ({"10.0.0.3"}, {"10.0.0.1"})
        await trio.sleep(100)  # a failure, then an empty answer: both keep what is known
        assert changes[-1] == (set(), {"10.0.0.2"})
        nursery.cancel_scope.cancel()
    assert lookups[0] == 0
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(lookups))

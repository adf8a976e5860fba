"""The helper's router addresses: ``HOST:PORT``, ``tcp://`` and ``tls://`` (pure)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ptth.errors import ConfigError
from ptth.proto.address import ROUTER_SCHEMES, RouterAddress, parse_router_address


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8887", RouterAddress("tcp", "127.0.0.1", 8887)),
        ("tcp://127.0.0.1:8887", RouterAddress("tcp", "127.0.0.1", 8887)),
        ("tls://router.example.com:443", RouterAddress("tls", "router.example.com", 443)),
        ("TLS://Router.Example.COM:443", RouterAddress("tls", "router.example.com", 443)),
        ("[::1]:8887", RouterAddress("tcp", "::1", 8887)),
        ("tls://[2001:db8::1]:1", RouterAddress("tls", "2001:db8::1", 1)),
        ("  tls://localhost:65535  ", RouterAddress("tls", "localhost", 65535)),
    ],
)
def test_valid_addresses(text: str, expected: RouterAddress) -> None:
    assert parse_router_address(text) == expected


@pytest.mark.timeout(5)
def test_properties_and_round_trip() -> None:
    address = parse_router_address("tls://[::1]:8443")
    assert address.tls
    assert address.authority == "[::1]:8443"
    assert str(address) == "tls://[::1]:8443"
    assert parse_router_address(str(address)) == address
    plain = parse_router_address("localhost:1")
    assert not plain.tls
    assert str(plain) == "tcp://localhost:1"


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no valid host"),
        ("localhost", "needs a port"),
        ("tls://localhost", "needs a port"),
        ("tls://localhost:0", "needs a port"),
        ("localhost:65536", "HOST:PORT"),
        ("localhost:port", "HOST:PORT"),
        ("::1:8887", "IPv6 in brackets"),
        ("tls://[not-v6]:1", "HOST:PORT"),
        ("udp://localhost:1", "one of tcp://, tls://"),
        ("ftp://localhost:1", "one of tcp://, tls://"),
        ("tls://:1", "no valid host"),
        ("tls://user:pw@localhost:1", "credentials"),
        ("tls://localhost:1/a//b", "invalid path"),
        ("tls://localhost:1?x", "host and port only"),
        ("tls://localhost:1#x", "host and port only"),
        ("tls://local host:1", "spaces"),
        ("tls://localhost\n:1", "spaces"),
    ],
)
def test_invalid_addresses_are_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("?", r"\?")):
        parse_router_address(text)


hosts = st.one_of(
    st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}\Z"),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
addresses = st.builds(RouterAddress, st.sampled_from(ROUTER_SCHEMES), hosts, st.integers(1, 65535))


@pytest.mark.timeout(30)
@given(addresses)
def test_every_address_round_trips(address: RouterAddress) -> None:
    assert parse_router_address(str(address)) == address
    if address.scheme == "tcp":
        assert parse_router_address(address.authority) == address


def parses_or_refuses(text: str) -> None:
    """Any text is a valid address that round-trips, or a ConfigError: nothing else."""
    try:
        address = parse_router_address(text)
    except ConfigError:
        return
    assert address.scheme in ROUTER_SCHEMES
    assert 1 <= address.port <= 65535
    assert address.host and address.host == address.host.lower()
    if ":" in address.host:
        ipaddress.IPv6Address(address.host)
    assert parse_router_address(str(address)) == address


@pytest.mark.timeout(30)
@given(st.text(max_size=60))
def test_anything_parses_or_is_a_config_error(text: str) -> None:
    parses_or_refuses(text)


@pytest.mark.timeout(30)
@given(
    st.sampled_from(["", "tcp://", "tls://", "TLS://", "ws://"]),
    st.text(alphabet="[]:/@?#.% abc019", max_size=20),
)
def test_url_shaped_garbage_parses_or_is_a_config_error(prefix: str, rest: str) -> None:
    parses_or_refuses(prefix + rest)


def test_a_tcp_or_tls_path_is_the_handshake_target() -> None:
    """``--tunnel-path`` on the router has its helper side: the path of a tcp:// or tls://
    address; inside ws:// and http:// the handshake keeps the default target."""
    moved = parse_router_address("tls://localhost:1/custom/ptth")
    assert moved.path == "/custom/ptth" and moved.handshake_target == "/custom/ptth"
    assert str(moved) == "tls://localhost:1/custom/ptth"
    assert parse_router_address("localhost:1").handshake_target == "/.well-known/ptth"
    ws = parse_router_address("ws://localhost:1/tunnels")
    assert ws.target == "/tunnels" and ws.handshake_target == "/.well-known/ptth"
    assert parse_router_address("http://localhost:1").handshake_target == "/.well-known/ptth"

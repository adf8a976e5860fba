"""ws:// and wss:// router addresses (issue 9, item 1): the path, its default, the transport
row the dialler is picked by, and the plain-text token warning."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ptth._dial import DIALLERS, plaintext_token_warning
from ptth.errors import ConfigError
from ptth.proto.address import WS_PATH, RouterAddress, parse_router_address


@pytest.mark.timeout(5)
def test_ws_addresses_take_a_path_with_a_default() -> None:
    plain = parse_router_address("ws://Router.Example:8888")
    assert (plain.scheme, plain.host, plain.port, plain.path) == ("ws", "router.example", 8888, "")
    assert plain.target == WS_PATH and not plain.tls and plain.transport == "ws"
    assert str(plain) == "ws://router.example:8888"
    custom = parse_router_address("wss://[::1]:443/tunnels/ws")
    assert custom.tls and custom.target == "/tunnels/ws" and custom.host == "::1"
    assert str(custom) == "wss://[::1]:443/tunnels/ws"
    # tcp:// and tls:// take a path too: the handshake's target (a moved --tunnel-path).
    assert parse_router_address("tcp://h:1").target == "/.well-known/ptth"
    assert {a.transport for a in map(parse_router_address, ["h:1", "tls://h:1"])} == {"tcp"}
    assert {"tcp", "ws"} <= set(DIALLERS)


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ws://h:1/a?b", "host and port only"),
        ("ws://h:1/a#b", "host and port only"),
        ("ws://h:1//a", "invalid path"),
        ("wss://h/a", "needs a port"),
        ("tcp://h:1/.well-known/ptth?ws", "host and port only"),
    ],
)
def test_bad_ws_addresses_are_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_router_address(text)


@pytest.mark.timeout(30)
@given(
    st.sampled_from(["ws", "wss"]),
    st.from_regex(r"\A[a-z0-9]{1,10}(\.[a-z0-9]{1,5}){0,2}\Z"),
    st.integers(1, 65535),
    st.from_regex(r"\A(/[A-Za-z0-9._~%-]{1,8}){0,3}\Z"),
)
def test_ws_addresses_round_trip(scheme: str, host: str, port: int, path: str) -> None:
    address = RouterAddress(scheme, host, port, path)
    assert parse_router_address(str(address)) == address


@pytest.mark.timeout(5)
def test_a_token_over_plain_ws_is_warned_about_with_wss() -> None:
    line = plaintext_token_warning(parse_router_address("ws://router.example:80/x"), "secret")
    assert line is not None and "wss://router.example:80/x" in line and "--tls-cert" in line
    assert plaintext_token_warning(parse_router_address("wss://router.example:1"), "s") is None
    assert plaintext_token_warning(parse_router_address("ws://127.0.0.1:1"), "s") is None

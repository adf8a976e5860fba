"""The ReverseHTTP upgrade, both sides, with no I/O (DESIGN.md: the tunnel handshake)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptth.errors import HandshakeError, HandshakeRefused
from ptth.proto.handshake import (
    MAX_HEAD_SIZE,
    ClientHandshake,
    Registration,
    ServerHandshake,
)


def _exchange(registration: Registration) -> tuple[Registration, ServerHandshake, ClientHandshake]:
    client = ClientHandshake(registration, "router.example:8887")
    server = ServerHandshake()
    received = server.receive(client.request_bytes())
    assert received is not None
    return received, server, client


def test_round_trip_carries_every_field() -> None:
    sent = Registration(
        service="api",
        hosts=("api.example.com", "*.api.example.com"),
        path_prefix="/api",
        weight=2.5,
        instance="host-1-abc",
        token="s3cret",
    )
    received, server, client = _exchange(sent)
    assert received == sent
    accepted = client.receive(server.accept("t1", received.hosts) + b"PRI * HTTP/2.0\r\n")
    assert accepted is not None
    assert accepted.tunnel_id == "t1"
    assert accepted.hosts == sent.hosts
    assert accepted.trailing == b"PRI * HTTP/2.0\r\n"  # h2 bytes after the 101 are kept


def test_request_is_the_documented_upgrade() -> None:
    data = ClientHandshake(Registration(service="api"), "r:1").request_bytes()
    head = data.decode()
    assert head.startswith("POST /.well-known/ptth HTTP/1.1\r\n")
    for line in ("Connection: Upgrade", "Upgrade: reverse", "ALPN: h2", "Ptth-Service: api"):
        assert line in head


def test_accept_is_101_with_selected_alpn() -> None:
    _, server, _ = _exchange(Registration())
    response = server.accept("abc", ()).decode()
    assert response.startswith("HTTP/1.1 101 ")
    assert "Upgrade: reverse" in response and "Selected-ALPN: h2" in response
    assert "Ptth-Tunnel-Id: abc" in response


@pytest.mark.parametrize("status", [400, 401, 403, 409, 426, 503])
def test_refusals_raise_with_status_reason_and_retryability(status: int) -> None:
    _, server, client = _exchange(Registration())
    with pytest.raises(HandshakeRefused) as info:
        client.receive(server.refuse(status, "because reasons"))
    assert info.value.status == status
    assert info.value.reason == "because reasons"
    # Issue 10: 409 is retried (another identity's claim may expire); 400/401/403 never.
    assert info.value.retryable == (status not in (400, 401, 403))


def test_refusal_arriving_in_one_piece_with_eof() -> None:
    _, server, client = _exchange(Registration())
    data = server.refuse(401, "missing token")
    assert "WWW-Authenticate: Bearer" in data.decode()
    with pytest.raises(HandshakeRefused):
        client.receive(data)
        client.receive(b"")


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 426),
        (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", 400),
        (
            b"GET /.well-known/ptth HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
            b"Upgrade: reverse\r\nALPN: h2\r\n\r\n",
            400,
        ),
        (
            b"POST /.well-known/ptth HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
            b"Upgrade: reverse\r\nALPN: http/1.1\r\nContent-Length: 0\r\n\r\n",
            400,
        ),
        (
            b"POST /.well-known/ptth HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
            b"Upgrade: reverse\r\nALPN: h2\r\nPtth-Service: bad name!\r\n"
            b"Content-Length: 0\r\n\r\n",
            400,
        ),
        (
            b"POST /.well-known/ptth HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
            b"Upgrade: reverse\r\nALPN: h2\r\nPtth-Weight: lots\r\n"
            b"Content-Length: 0\r\n\r\n",
            400,
        ),
        (
            b"POST /.well-known/ptth HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
            b"Upgrade: reverse\r\nALPN: h2\r\nAuthorization: Basic Zm9v\r\n"
            b"Content-Length: 0\r\n\r\n",
            400,
        ),
        (b"POST / HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD_SIZE + 10), 431),
    ],
)
def test_malformed_requests_map_to_statuses(raw: bytes, status: int) -> None:
    server = ServerHandshake()
    with pytest.raises(HandshakeError) as info:
        server.receive(raw)
    assert info.value.status == status
    answer = server.refuse(info.value.status, str(info.value))
    assert answer.startswith(f"HTTP/1.1 {status} ".encode())


def test_peer_closing_early_is_a_handshake_error() -> None:
    server = ServerHandshake()
    assert server.receive(b"POST /.well-known/ptth HTTP/1.1\r\n") is None
    with pytest.raises(HandshakeError):
        server.receive(b"")


def test_client_rejects_a_101_without_h2() -> None:
    _, _, client = _exchange(Registration())
    bogus = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: reverse\r\n\r\n"
    with pytest.raises(HandshakeError):
        client.receive(bogus)


def test_invalid_registration_is_refused_before_sending() -> None:
    with pytest.raises(HandshakeError):
        ClientHandshake(Registration(hosts=("bad host",)), "r:1")
    with pytest.raises(HandshakeError):
        ClientHandshake(Registration(weight=0), "r:1")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_server_never_raises_anything_but_handshake_error(data: bytes) -> None:
    server = ServerHandshake()
    try:
        server.receive(data)
        server.receive(b"")
    except HandshakeError as exc:
        assert exc.status in (400, 426, 431)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_client_never_raises_anything_but_handshake_error(data: bytes) -> None:
    _, _, client = _exchange(Registration())
    try:
        client.receive(data)
        client.receive(b"")
    except HandshakeError:
        pass


# -- Ptth-Strip-Prefix --------------------------------------------------------------------------

_UPGRADE = (
    b"POST /.well-known/ptth HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
    b"Upgrade: reverse\r\nALPN: h2\r\nContent-Length: 0\r\n"
)


def test_strip_prefix_round_trips_as_its_field() -> None:
    sent = Registration(service="chat", path_prefix="/chat", strip_prefix=True)
    data = ClientHandshake(sent, "r:1").request_bytes()
    assert b"\r\nPtth-Strip-Prefix: 1\r\n" in data
    received, _, _ = _exchange(sent)
    assert received == sent
    assert b"Ptth-Strip-Prefix" not in ClientHandshake(Registration(), "r:1").request_bytes()


@pytest.mark.parametrize(("value", "expected"), [(b"1", True), (b"0", False), (b" 1 ", True)])
def test_strip_prefix_field_values(value: bytes, expected: bool) -> None:
    raw = _UPGRADE + b"Ptth-Path-Prefix: /chat\r\nPtth-Strip-Prefix: " + value + b"\r\n\r\n"
    registration = ServerHandshake().receive(raw)
    assert registration is not None
    assert registration.strip_prefix is expected


@pytest.mark.parametrize(
    "fields",
    [
        b"Ptth-Strip-Prefix: 1\r\n",  # no prefix to strip
        b"Ptth-Path-Prefix: /\r\nPtth-Strip-Prefix: 1\r\n",  # "/" is every path: nothing to cut
        b"Ptth-Path-Prefix: /chat\r\nPtth-Strip-Prefix: yes\r\n",
        b"Ptth-Path-Prefix: /chat\r\nPtth-Strip-Prefix: \r\n",
        b"Ptth-Path-Prefix: /chat\r\nPtth-Strip-Prefix: 1\r\nPtth-Strip-Prefix: 1\r\n",
    ],
)
def test_bad_strip_prefix_is_a_400(fields: bytes) -> None:
    with pytest.raises(HandshakeError) as info:
        ServerHandshake().receive(_UPGRADE + fields + b"\r\n")
    assert info.value.status == 400
    assert "strip-prefix" in str(info.value).lower()


@pytest.mark.parametrize("prefix", [None, "/"])
def test_strip_prefix_without_a_prefix_is_refused_before_sending(prefix: str | None) -> None:
    with pytest.raises(HandshakeError, match="Ptth-Strip-Prefix needs a Ptth-Path-Prefix"):
        ClientHandshake(Registration(path_prefix=prefix, strip_prefix=True), "r:1")


# -- refusals the helper can act on (issue 10: a tunnel port nobody can lock) ------------


@pytest.mark.parametrize(
    ("retry_after", "header", "parsed"),
    [(5, "5", 5.0), (0.2, "1", 1.0), (4.0, "4", 4.0), (None, None, None)],
)
def test_refusal_carries_retry_after_both_ways(
    retry_after: float | None, header: str | None, parsed: float | None
) -> None:
    _, server, client = _exchange(Registration())
    data = server.refuse(503, "too many pending handshakes", retry_after=retry_after)
    assert (f"Retry-After: {header}\r\n" in data.decode()) == (header is not None)
    with pytest.raises(HandshakeRefused) as info:
        client.receive(data)
    assert info.value.retry_after == parsed
    assert info.value.reason == "too many pending handshakes"


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (b"120", 120.0),
        (b" 7 ", 7.0),
        (b"86400", 300.0),  # capped: one header must not park a backend for a day
        (b"9" * 40, 300.0),
        (b"Wed, 21 Oct 2015 07:28:00 GMT", None),  # HTTP-date: the clocks need not agree
        (b"-5", None),
        (b"1.5", None),
        (b"soon", None),
        (b"", None),
        ("\u0661".encode(), None),  # a non-ASCII digit is not delta-seconds
    ],
)
def test_retry_after_from_the_router_is_delta_seconds_only(
    value: bytes, parsed: float | None
) -> None:
    client = ClientHandshake(Registration(), "r:1")
    client.request_bytes()
    body = b"busy\n"
    response = (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\nRetry-After: "
        + value
        + b"\r\n\r\n"
        + body
    )
    with pytest.raises(HandshakeRefused) as info:
        client.receive(response)
    assert info.value.retry_after == parsed
    assert info.value.retryable


@pytest.mark.parametrize("before", [b"", b"HTTP/1.1 50"], ids=["nothing", "half-a-head"])
def test_router_closing_during_the_handshake_is_one_plain_error(before: bytes) -> None:
    client = ClientHandshake(Registration(), "r:1")
    client.request_bytes()
    if before:
        assert client.receive(before) is None
    with pytest.raises(HandshakeError) as info:
        client.receive(b"")
    assert not isinstance(info.value, HandshakeRefused)
    assert str(info.value) == "router closed the connection during the handshake"


def test_refusal_cut_short_keeps_its_status() -> None:
    client = ClientHandshake(Registration(), "r:1")
    client.request_bytes()
    head = b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 100\r\nRetry-After: 3\r\n\r\nslow"
    assert client.receive(head) is None
    with pytest.raises(HandshakeRefused) as info:
        client.receive(b"")
    assert (info.value.status, info.value.retry_after) == (429, 3.0)
    assert info.value.reason == "slow"


def test_timeout_refusal_is_408_with_a_reason() -> None:
    server = ServerHandshake()
    assert server.receive(b"POST /.well-known/ptth HTTP/1.1\r\nHost:") is None
    data = server.refuse(408, "no complete handshake within 5 s").decode()
    assert data.startswith("HTTP/1.1 408 Request Timeout\r\n")
    assert data.endswith("\r\n\r\nno complete handshake within 5 s\n")


def test_refusal_reason_is_one_printable_line() -> None:
    client = ClientHandshake(Registration(), "r:1")
    client.request_bytes()
    body = b"busy\r\n2024-01-01 CRITICAL forged line\x1b[31m\n"
    head = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: %d\r\n\r\n" % len(body)
    with pytest.raises(HandshakeRefused) as info:
        client.receive(head + body)
    assert info.value.reason == "busy 2024-01-01 CRITICAL forged line [31m"

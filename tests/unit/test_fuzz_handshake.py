"""Fuzzing the ReverseHTTP handshake parsers (issue 10, item 5; ARCHITECTURE.md, "The handshake").

Both sides face strangers: the router parses whatever reaches the tunnel port, the helper parses
whatever answers it. The properties: any input, in any chunking, ends in a value or in
``HandshakeError`` (with the status the router will answer), never in another exception; what
the helper sends the router reads back unchanged; a refusal reads back as its status and reason.
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptth.errors import HandshakeError, HandshakeRefused
from ptth.proto.handshake import (
    MAX_HEAD_SIZE,
    MAX_RETRY_AFTER,
    Accepted,
    ClientHandshake,
    Registration,
    ServerHandshake,
)

SERVER_STATUSES = {400, 408, 426, 431}
AUTHORITY = "router.example:8887"

fuzz = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies -------------------------------------------------------------------------------

_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_LOWER = "abcdefghijklmnopqrstuvwxyz0123456789"
_VISIBLE = "".join(chr(c) for c in range(0x21, 0x7F))

services = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(_ALNUM),
    st.text(alphabet=_ALNUM + "._-", max_size=63),
)
_labels = st.builds(
    lambda first, middle, last: first + middle + last if middle or last else first,
    st.sampled_from(_LOWER),
    st.text(alphabet=_LOWER + "-", max_size=20),
    st.sampled_from(_LOWER),
)
# Canonical already (lowercase, RFC 4343; no "xn--" label, which must be a valid A-label): the
# router normalises claims (ptth.proto.hostnames), so only these come back unchanged.
hosts = st.builds(
    lambda wild, labels: ("*." if wild else "") + ".".join(labels),
    st.booleans(),
    st.lists(_labels.filter(lambda label: not label.startswith("xn--")), min_size=1, max_size=4),
)
_segments = st.text(alphabet=_ALNUM + "._~!$&'()*+,;=:@%-", min_size=1, max_size=12)
prefixes = st.builds(
    lambda segments, slash: "/" + "/".join(segments) + ("/" if slash and segments else ""),
    st.lists(_segments, max_size=4),
    st.booleans(),
)
# The helper writes the weight with format "g" (six significant digits): only such weights can
# come back equal; test_weight_survives_to_six_digits covers the others.
weights = st.floats(min_value=1e-6, max_value=1000, allow_nan=False).map(
    lambda w: float(format(w, "g"))
)
tokens = st.text(alphabet=_VISIBLE, min_size=1, max_size=200)
instances = st.text(alphabet=_VISIBLE, min_size=1, max_size=128)


@st.composite
def registrations(draw: st.DrawFn) -> Registration:
    prefix = draw(st.none() | prefixes)
    strip = draw(st.booleans()) and bool((prefix or "").strip("/"))
    return Registration(
        service=draw(services),
        hosts=tuple(draw(st.lists(hosts, max_size=5, unique=True))),
        path_prefix=prefix,
        weight=draw(weights),
        instance=draw(st.just("") | instances),
        token=draw(st.none() | tokens),
        strip_prefix=strip,
    )


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at random places into non-empty pieces (b"" would mean EOF)."""
    if not data:
        return []
    cuts = sorted(
        draw(st.sets(st.integers(1, len(data) - 1), max_size=12)) if len(data) > 1 else []
    )
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def _split(data: bytes) -> st.SearchStrategy[list[bytes]]:
    return chunked(data)


def feed_server(pieces: list[bytes], *, eof: bool = True) -> Registration | None:
    """Feed the router's parser; stop at the first value. Anything but HandshakeError escapes."""
    server = ServerHandshake()
    for piece in pieces:
        result = server.receive(piece)
        if result is not None:
            return result
    if eof:
        return server.receive(b"")
    return None


def check_server(pieces: list[bytes]) -> None:
    server = ServerHandshake()
    try:
        for piece in pieces:
            if server.receive(piece) is not None:
                return
        server.receive(b"")
    except HandshakeError as exc:
        assert exc.status in SERVER_STATUSES, exc
        # Whatever went wrong, the refusal the router sends must still be a response the
        # helper reads as this status (ARCHITECTURE.md: never a bare close).
        answer = server.refuse(exc.status, str(exc))
        client = ClientHandshake(Registration(), AUTHORITY)
        client.request_bytes()
        with pytest.raises(HandshakeRefused) as info:
            client.receive(answer)
            client.receive(b"")
        assert info.value.status == exc.status


# -- the router's parser on anything ----------------------------------------------------------


@fuzz
@given(st.data(), st.binary(max_size=4096))
def test_any_bytes_any_chunking_only_handshake_error(data: st.DataObject, raw: bytes) -> None:
    check_server(data.draw(_split(raw)))


_HEAD_LINES = st.sampled_from(
    [
        b"POST /.well-known/ptth HTTP/1.1",
        b"GET /.well-known/ptth HTTP/1.1",
        b"HEAD /.well-known/ptth HTTP/1.1",
        b"POST /.well-known/ptth HTTP/1.0",
        b"OPTIONS * HTTP/1.1",
        b"CONNECT a:1 HTTP/1.1",
        b"POST http://x/.well-known/ptth HTTP/1.1",
        b"PRI * HTTP/2.0",
    ]
)
_NAMES = st.sampled_from(
    [
        b"Host",
        b"Connection",
        b"Upgrade",
        b"ALPN",
        b"Content-Length",
        b"Transfer-Encoding",
        b"Ptth-Service",
        b"Ptth-Hosts",
        b"Ptth-Path-Prefix",
        b"Ptth-Strip-Prefix",
        b"Ptth-Weight",
        b"Ptth-Instance",
        b"Authorization",
        b"Expect",
        b"X-Other",
    ]
)
_VALUES = st.sampled_from(
    [
        b"",
        b"Upgrade",
        b"reverse",
        b"h2",
        b"0",
        b"5",
        b"-1",
        b"chunked",
        b"1",
        b"nan",
        b"inf",
        b"1e309",
        b"Bearer x",
        b"Bearer",
        b"Basic a",
        b"/api",
        b"//",
        b"*.a.b",
        b"a, b,,c",
        b"100-continue",
        b"\xff\xfe",
        b"upgrade, keep-alive",
        b"reverse, h2c",
    ]
) | st.binary(max_size=40)


@st.composite
def header_soup(draw: st.DrawFn) -> bytes:
    """Request heads from the right vocabulary in the wrong combinations."""
    lines = [draw(_HEAD_LINES)]
    for _ in range(draw(st.integers(0, 14))):
        lines.append(
            draw(_NAMES) + b":" + draw(st.sampled_from([b" ", b"", b"  "])) + draw(_VALUES)
        )
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    return head + draw(st.binary(max_size=20))


@fuzz
@given(st.data(), header_soup())
def test_header_soup_only_handshake_error(data: st.DataObject, raw: bytes) -> None:
    check_server(data.draw(_split(raw)))


# -- round trip -------------------------------------------------------------------------------


@fuzz
@given(st.data(), registrations())
def test_registration_round_trips_in_any_chunking(
    data: st.DataObject, registration: Registration
) -> None:
    raw = ClientHandshake(registration, AUTHORITY).request_bytes()
    pieces = data.draw(_split(raw))
    # The head is complete with its last byte: no EOF needed, and none must be asked for.
    assert feed_server(pieces, eof=False) == registration


@fuzz
@given(registrations(), st.binary(min_size=1, max_size=200))
def test_bytes_after_the_head_are_kept(registration: Registration, extra: bytes) -> None:
    server = ServerHandshake()
    raw = ClientHandshake(registration, AUTHORITY).request_bytes()
    assert server.receive(raw + extra) == registration
    assert server.trailing == extra


@fuzz
@given(registrations(), st.lists(hosts, min_size=1, max_size=3, unique=True))
def test_claims_come_back_lowercased(registration: Registration, claims: list[str]) -> None:
    sent = Registration(**{**registration.__dict__, "hosts": tuple(h.upper() for h in claims)})
    received = feed_server([ClientHandshake(sent, AUTHORITY).request_bytes()], eof=False)
    assert received is not None
    assert received.hosts == tuple(claims)


@fuzz
@given(st.floats(min_value=0, max_value=1000, exclude_min=True, allow_nan=False))
def test_weight_survives_to_six_digits(weight: float) -> None:
    raw = ClientHandshake(Registration(weight=weight), AUTHORITY).request_bytes()
    received = feed_server([raw], eof=False)
    assert received is not None
    assert 0 < received.weight <= 1000
    assert math.isclose(received.weight, weight, rel_tol=1e-5)


# -- mutations of a valid request -------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    raw = bytearray(ClientHandshake(draw(registrations()), AUTHORITY).request_bytes())
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "duplicate", "huge", "crlf"]))
        at = draw(st.integers(0, len(raw)))
        if kind == "flip" and raw:
            i = min(at, len(raw) - 1)
            raw[i] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            raw[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            raw[at : at + draw(st.integers(1, 16))] = b""
        elif kind == "duplicate":
            lines = bytes(raw).split(b"\r\n")
            if len(lines) > 2:
                i = draw(st.integers(1, len(lines) - 1))
                lines.insert(i, lines[i])
                raw = bytearray(b"\r\n".join(lines))
        elif kind == "huge":
            size = draw(st.sampled_from([MAX_HEAD_SIZE - 200, MAX_HEAD_SIZE, MAX_HEAD_SIZE * 2]))
            line = b"X-Huge: " + b"a" * size + b"\r\n"
            first = raw.find(b"\r\n") + 2
            raw[first:first] = line
        elif kind == "crlf":
            raw[at:at] = draw(st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"\x00"]))
    return bytes(raw)


@fuzz
@given(st.data(), mutated())
def test_mutated_requests_never_crash(data: st.DataObject, raw: bytes) -> None:
    check_server(data.draw(_split(raw)))


@pytest.mark.parametrize("count", [2, 50])
def test_duplicated_single_valued_fields_are_400(count: int) -> None:
    base = ClientHandshake(Registration(service="api", path_prefix="/a"), AUTHORITY)
    raw = base.request_bytes()
    for name in (b"Ptth-Service", b"Ptth-Weight", b"Ptth-Path-Prefix"):
        line = raw[raw.index(name) :].split(b"\r\n", 1)[0] + b"\r\n"
        with pytest.raises(HandshakeError) as info:
            ServerHandshake().receive(raw.replace(line, line * count))
        assert info.value.status == 400


def test_huge_head_in_one_read_is_431() -> None:
    raw = ClientHandshake(Registration(), AUTHORITY).request_bytes()
    first = raw.index(b"\r\n") + 2
    for size in (MAX_HEAD_SIZE, 10 * MAX_HEAD_SIZE):
        big = raw[:first] + b"X-Huge: " + b"a" * size + b"\r\n" + raw[first:]
        with pytest.raises(HandshakeError) as info:
            ServerHandshake().receive(big)
        assert info.value.status == 431


def test_refusal_to_a_head_request_is_still_a_response() -> None:
    """A HEAD request is refused (400) with a body-carrying response like any other.

    h11 forbids a body in the answer to HEAD: refuse() used the request's own connection and
    raised h11.LocalProtocolError out of the router's handshake code (found by fuzzing).
    """
    raw = (
        b"HEAD /.well-known/ptth HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
        b"Upgrade: reverse\r\nALPN: h2\r\n\r\n"
    )
    check_server([raw])


# -- the helper's parser on anything the router (or an impostor) answers ----------------------


def _client() -> ClientHandshake:
    client = ClientHandshake(Registration(), AUTHORITY)
    client.request_bytes()
    return client


def check_client(pieces: list[bytes]) -> None:
    client = _client()
    try:
        for piece in pieces:
            result = client.receive(piece)
            if result is not None:
                assert isinstance(result, Accepted)
                return
        client.receive(b"")
    except HandshakeRefused as exc:
        assert 100 <= exc.status <= 999
        assert exc.reason and exc.reason.isprintable()
        assert exc.retry_after is None or 0 <= exc.retry_after <= MAX_RETRY_AFTER
    except HandshakeError:
        pass


_STATUS_LINES = st.sampled_from(
    [
        b"HTTP/1.1 101 Switching Protocols",
        b"HTTP/1.1 101",
        b"HTTP/1.0 101 x",
        b"HTTP/1.1 100 Continue",
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 409 Conflict",
        b"HTTP/1.1 503 Service Unavailable",
        b"HTTP/1.1 999 ?",
        b"HTTP/2 101",
    ]
)
_ANSWER_NAMES = st.sampled_from(
    [
        b"Connection",
        b"Upgrade",
        b"Selected-ALPN",
        b"Ptth-Tunnel-Id",
        b"Ptth-Hosts",
        b"Ptth-Max-Streams",
        b"Retry-After",
        b"Content-Length",
        b"Transfer-Encoding",
    ]
)
_ANSWER_VALUES = st.sampled_from(
    [
        b"Upgrade",
        b"reverse",
        b"h2",
        b"0",
        b"10",
        b"-3",
        b"99999999999999999999",
        b"chunked",
        b"\xb2",
        b"\xb9\xb2",
        b"1\xbd",
        b"\xd9\xa1",
        b"a, b",
        b"",
        b"5",
        b"nan",
    ]
) | st.binary(max_size=30)


@st.composite
def router_answers(draw: st.DrawFn) -> bytes:
    lines = [draw(_STATUS_LINES)]
    for _ in range(draw(st.integers(0, 10))):
        lines.append(draw(_ANSWER_NAMES) + b": " + draw(_ANSWER_VALUES))
    return b"\r\n".join(lines) + b"\r\n\r\n" + draw(st.binary(max_size=60))


@fuzz
@given(st.data(), st.binary(max_size=4096))
def test_client_on_any_bytes_any_chunking(data: st.DataObject, raw: bytes) -> None:
    check_client(data.draw(_split(raw)))


@fuzz
@given(st.data(), router_answers())
def test_client_on_answer_soup(data: st.DataObject, raw: bytes) -> None:
    check_client(data.draw(_split(raw)))


@pytest.mark.parametrize("value", [b"\xb2", b"\xb9", b"1\xb2", b"\xd9\xa1"])
def test_non_ascii_max_streams_is_ignored(value: bytes) -> None:
    """A Ptth-Max-Streams of non-ASCII 'digits' is ignored like any other garbage (it raised
    ValueError: str.isdigit() accepts '²', int() does not; found by fuzzing)."""
    answer = (
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: reverse\r\n"
        b"Selected-ALPN: h2\r\nPtth-Max-Streams: " + value + b"\r\n\r\n"
    )
    accepted = _client().receive(answer)
    assert accepted is not None
    assert accepted.max_streams is None


# -- refusals read back as sent ---------------------------------------------------------------

_statuses = st.integers(400, 599)
_retry_afters = st.none() | st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10, 10**6)
# One line of printable words separated by single spaces: what the helper's log line shows.
_words = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp", "Cf", "Co", "Cn")),
    min_size=1,
    max_size=12,
)
_plain_reasons = st.lists(_words, min_size=1, max_size=30).map(" ".join)


def _expected_retry_after(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return min(float(max(0, math.ceil(value))), MAX_RETRY_AFTER)


def _refusal_from(
    server: ServerHandshake,
    pieces_of: st.DataObject,
    status: int,
    reason: str,
    retry_after: float | None,
) -> HandshakeRefused:
    answer = server.refuse(status, reason, retry_after=retry_after)
    client = _client()
    with pytest.raises(HandshakeRefused) as info:
        for piece in pieces_of.draw(_split(answer)):
            client.receive(piece)
        client.receive(b"")
    return info.value


@fuzz
@given(st.data(), _statuses, _plain_reasons, _retry_afters)
def test_refusal_round_trips(
    data: st.DataObject, status: int, reason: str, retry_after: float | None
) -> None:
    refused = _refusal_from(ServerHandshake(), data, status, reason, retry_after)
    assert (refused.status, refused.reason) == (status, reason)
    assert refused.retry_after == _expected_retry_after(retry_after)


@fuzz
@given(st.data(), _statuses, st.text(max_size=300), _retry_afters)
def test_any_refusal_reason_reads_back_as_one_printable_line(
    data: st.DataObject, status: int, reason: str, retry_after: float | None
) -> None:
    refused = _refusal_from(ServerHandshake(), data, status, reason, retry_after)
    assert refused.status == status
    assert refused.reason.isprintable() and refused.reason == " ".join(refused.reason.split())
    assert refused.reason


@fuzz
@given(st.data(), st.sampled_from(sorted(SERVER_STATUSES)), _plain_reasons, mutated())
def test_refusal_after_any_request_round_trips(
    data: st.DataObject, status: int, reason: str, raw: bytes
) -> None:
    """refuse() answers after whatever the parser saw: a valid head, half a head, garbage."""
    server = ServerHandshake()
    try:
        server.receive(raw)
    except HandshakeError:
        pass
    refused = _refusal_from(server, data, status, reason, None)
    assert (refused.status, refused.reason) == (status, reason)

"""Header rules (RELIABILITY row 21): table-driven cases plus Hypothesis properties."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptth._asgi_http import build_scope
from ptth.errors import HeaderError
from ptth.proto.fields import HOP_BY_HOP, Headers, strip_hop_by_hop, validate_name, validate_value
from ptth.proto.headers import (
    RequestHead,
    clean_trailers,
    from_tunnel_response,
    parse_request_block,
    strip_path_prefix,
    to_tunnel_request,
)

PSEUDO_GET: Headers = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"api.example.com"),
    (b":path", b"/a/b?x=1&y=2"),
]


def tunnel(
    headers: Headers,
    *,
    method: bytes = b"GET",
    path: bytes = b"/",
    scheme: bytes = b"http",
    client_addr: str | None = "10.0.0.9",
    trusted_proxy: bool = False,
    protocol: bytes | None = None,
) -> Headers:
    return to_tunnel_request(
        method=method,
        path=path,
        scheme=scheme,
        headers=headers,
        client_addr=client_addr,
        trusted_proxy=trusted_proxy,
        protocol=protocol,
    )


def regular(block: Headers) -> Headers:
    return [(n, v) for n, v in block if not n.startswith(b":")]


def values(block: Headers, name: bytes) -> list[bytes]:
    return [v for n, v in block if n == name]


# --- names and values ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [b"host", b"Content-Type", b"x-a_b", b"!#$%&'*+-.^_`|~09azAZ"])
def test_valid_names(name: bytes) -> None:
    validate_name(name)


@pytest.mark.parametrize(
    "name",
    [
        b"",
        b"a b",
        b"a:b",
        b":path",
        b"a\r",
        b"a\n",
        b"a\x00",
        b"caf\xc3\xa9",
        b"a\tb",
        b"(x)",
        b"a/b",
    ],
)
def test_invalid_names(name: bytes) -> None:
    with pytest.raises(HeaderError, match="header field name"):
        validate_name(name)


@pytest.mark.parametrize("value", [b"", b"plain", b" padded\t", b"caf\xc3\xa9", b"a\x01b"])
def test_valid_values(value: bytes) -> None:
    validate_value(b"x", value)


@pytest.mark.parametrize(
    ("value", "label"),
    [(b"a\rb", "CR"), (b"a\nb", "LF"), (b"a\x00b", "NUL"), (b"\r\nX-Evil: 1", "CR")],
)
def test_value_injection_rejected_naming_the_field(value: bytes, label: str) -> None:
    with pytest.raises(HeaderError, match=f"{label}.*x-target"):
        validate_value(b"x-target", value)


# --- hop-by-hop ---------------------------------------------------------------------------------

STRIP_CASES: list[tuple[str, Headers, Headers]] = [
    (
        "plain fields lowercased",
        [(b"Accept", b"*/*"), (b"X-A", b"1")],
        [(b"accept", b"*/*"), (b"x-a", b"1")],
    ),
    (
        "every fixed hop-by-hop field",
        [(n, b"x") for n in sorted(HOP_BY_HOP)] + [(b"a", b"1")],
        [(b"a", b"1")],
    ),
    ("mixed case hop-by-hop", [(b"Keep-Alive", b"5"), (b"UPGRADE", b"h2c")], []),
    (
        "connection-named fields",
        [(b"Connection", b"close, X-Secret"), (b"x-secret", b"s"), (b"x-keep", b"k")],
        [(b"x-keep", b"k")],
    ),
    (
        "several connection headers, odd spacing and case",
        [
            (b"connection", b" X-One ,,\tx-TWO "),
            (b"x-one", b"1"),
            (b"Connection", b"x-three"),
            (b"X-Two", b"2"),
            (b"x-three", b"3"),
            (b"x-four", b"4"),
        ],
        [(b"x-four", b"4")],
    ),
    ("connection naming a field after it", [(b"x-late", b"1"), (b"connection", b"x-late")], []),
    ("TE with a malformed trailers member", [(b"TE", b"gzip, Trailers;")], []),
    ("TE with trailers", [(b"te", b"gzip, trailers")], [(b"te", b"trailers")]),
    ("TE trailers exact", [(b"te", b"trailers")], [(b"te", b"trailers")]),
    ("TE without trailers", [(b"te", b"gzip, deflate")], []),
    ("TE twice emitted once", [(b"te", b"trailers"), (b"te", b"trailers")], [(b"te", b"trailers")]),
    (
        "TE nominated by Connection (RFC 9110 §10.1.4) still kept",
        [(b"connection", b"TE"), (b"te", b"trailers")],
        [(b"te", b"trailers")],
    ),
    (
        "repeats kept in order",
        [(b"cookie", b"a=1"), (b"x", b"1"), (b"cookie", b"b=2"), (b"X", b"2")],
        [(b"cookie", b"a=1"), (b"x", b"1"), (b"cookie", b"b=2"), (b"x", b"2")],
    ),
    ("values trimmed", [(b"x", b" \tv v\t ")], [(b"x", b"v v")]),
    ("empty value kept", [(b"x", b"")], [(b"x", b"")]),
    (
        "proxy-authorization is end-to-end here",
        [(b"proxy-authorization", b"b")],
        [(b"proxy-authorization", b"b")],
    ),
]


@pytest.mark.parametrize(
    ("case", "given_", "expected"), STRIP_CASES, ids=[c[0] for c in STRIP_CASES]
)
def test_strip_hop_by_hop(case: str, given_: Headers, expected: Headers) -> None:
    assert strip_hop_by_hop(given_) == expected


def test_te_gzip_trailers_becomes_trailers() -> None:
    assert strip_hop_by_hop([(b"TE", b"gzip, trailers")]) == [(b"te", b"trailers")]


@pytest.mark.parametrize(
    "fields",
    [[(b"bad name", b"v")], [(b"x", b"a\r\nb")], [(b"", b"v")], [(b"connection", b"a\x00")]],
)
def test_strip_hop_by_hop_validates(fields: Headers) -> None:
    with pytest.raises(HeaderError):
        strip_hop_by_hop(fields)


# --- to_tunnel_request --------------------------------------------------------------------------


def test_request_block_shape() -> None:
    block = tunnel(
        [(b"Host", b"api.example.com"), (b"Accept", b"*/*"), (b"Connection", b"keep-alive")],
        method=b"POST",
        path=b"/x?y=1",
        scheme=b"https",
    )
    assert block == [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":authority", b"api.example.com"),
        (b":path", b"/x?y=1"),
        (b"accept", b"*/*"),
        (b"x-forwarded-for", b"10.0.0.9"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"api.example.com"),
    ]


def test_extended_connect_has_protocol_last() -> None:
    block = tunnel([(b"host", b"h")], method=b"CONNECT", path=b"/ws", protocol=b"websocket")
    assert [n for n, _ in block[:5]] == [
        b":method",
        b":scheme",
        b":authority",
        b":path",
        b":protocol",
    ]
    assert block[4] == (b":protocol", b"websocket")


REJECTED_REQUESTS: list[tuple[str, dict[str, object], str]] = [
    ("missing Host", {"headers": [(b"accept", b"*")]}, "missing host"),
    ("different Hosts", {"headers": [(b"host", b"a"), (b"Host", b"b")]}, "different"),
    ("empty Host", {"headers": [(b"host", b"")]}, "invalid host"),
    ("Host with userinfo", {"headers": [(b"host", b"evil@a")]}, "invalid host"),
    ("Host with comma", {"headers": [(b"host", b"a, b")]}, "invalid host"),
    ("Host with slash", {"headers": [(b"host", b"a/b")]}, "invalid host"),
    (
        "CL + TE",
        {
            "headers": [
                (b"host", b"h"),
                (b"Content-Length", b"5"),
                (b"Transfer-Encoding", b"chunked"),
            ]
        },
        "smuggling",
    ),
    (
        "CL + TE hidden behind Connection",
        {
            "headers": [
                (b"host", b"h"),
                (b"connection", b"content-length"),
                (b"content-length", b"5"),
                (b"transfer-encoding", b"chunked"),
            ]
        },
        "smuggling",
    ),
    (
        "differing CL",
        {"headers": [(b"host", b"h"), (b"content-length", b"5"), (b"content-length", b"6")]},
        "different",
    ),
    (
        "differing CL list",
        {"headers": [(b"host", b"h"), (b"content-length", b"5, 6")]},
        "different",
    ),
    ("non-digit CL", {"headers": [(b"host", b"h"), (b"content-length", b"5a")]}, "content-length"),
    ("negative CL", {"headers": [(b"host", b"h"), (b"content-length", b"-1")]}, "content-length"),
    ("empty CL", {"headers": [(b"host", b"h"), (b"content-length", b"")]}, "content-length"),
    ("huge CL", {"headers": [(b"host", b"h"), (b"content-length", b"9" * 5000)]}, "content-length"),
    ("CR in value", {"headers": [(b"host", b"h"), (b"x", b"a\rb")]}, "CR"),
    ("LF in value", {"headers": [(b"host", b"h"), (b"x", b"a\nb")]}, "LF"),
    ("NUL in value", {"headers": [(b"host", b"h"), (b"x", b"a\x00b")]}, "NUL"),
    ("invalid name", {"headers": [(b"host", b"h"), (b"x y", b"1")]}, "name"),
    ("pseudo-header smuggled in", {"headers": [(b"host", b"h"), (b":path", b"/admin")]}, "name"),
    ("plain CONNECT", {"headers": [(b"host", b"h")], "method": b"CONNECT"}, "CONNECT"),
    ("protocol on GET", {"headers": [(b"host", b"h")], "protocol": b"websocket"}, "protocol"),
    ("bad method", {"headers": [(b"host", b"h")], "method": b"GE T"}, "method"),
    ("empty method", {"headers": [(b"host", b"h")], "method": b""}, "method"),
    ("bad scheme", {"headers": [(b"host", b"h")], "scheme": b"ht tp"}, "scheme"),
    ("empty path", {"headers": [(b"host", b"h")], "path": b""}, "path"),
    ("relative path", {"headers": [(b"host", b"h")], "path": b"x"}, "path"),
    ("path with space", {"headers": [(b"host", b"h")], "path": b"/a b"}, "path"),
    ("path with CRLF", {"headers": [(b"host", b"h")], "path": b"/a\r\nx: y"}, "path"),
    ("star path for GET", {"headers": [(b"host", b"h")], "path": b"*"}, "path"),
    ("non-ascii client", {"headers": [(b"host", b"h")], "client_addr": "caf\u00e9"}, "client"),
    ("CRLF client", {"headers": [(b"host", b"h")], "client_addr": "1\r\n"}, "CR"),
]


@pytest.mark.parametrize(
    ("case", "kwargs", "match"), REJECTED_REQUESTS, ids=[c[0] for c in REJECTED_REQUESTS]
)
def test_request_rejected(case: str, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(HeaderError, match=match) as info:
        tunnel(**kwargs)  # type: ignore[arg-type]
    assert info.value.status == 400


def test_identical_hosts_and_lengths_collapse() -> None:
    block = tunnel(
        [
            (b"host", b"h:8080"),
            (b"content-length", b"5"),
            (b"x", b"1"),
            (b"Host", b"h:8080"),
            (b"Content-Length", b"05, 5"),
        ],
        method=b"POST",
    )
    assert block[2] == (b":authority", b"h:8080")
    assert regular(block)[:2] == [(b"content-length", b"5"), (b"x", b"1")]
    assert values(block, b"host") == []
    assert values(block, b"content-length") == [b"5"]


def test_chunked_request_without_length_passes_with_te_stripped() -> None:
    block = tunnel([(b"host", b"h"), (b"transfer-encoding", b"chunked")], method=b"POST")
    assert values(block, b"transfer-encoding") == []


def test_options_star() -> None:
    assert tunnel([(b"host", b"h")], method=b"OPTIONS", path=b"*")[3] == (b":path", b"*")


def test_ipv6_host_and_scheme_lowercased() -> None:
    block = tunnel([(b"host", b"[::1]:8888")], scheme=b"HTTPS")
    assert block[1:3] == [(b":scheme", b"https"), (b":authority", b"[::1]:8888")]


def test_xff_spoofing_replaced_when_untrusted() -> None:
    block = tunnel(
        [
            (b"host", b"real.example"),
            (b"X-Forwarded-For", b"1.2.3.4"),
            (b"x-forwarded-for", b"5.6.7.8"),
            (b"X-Forwarded-Proto", b"https"),
            (b"X-Forwarded-Host", b"evil.example"),
            (b"Forwarded", b"for=1.2.3.4"),
        ],
        scheme=b"http",
    )
    assert regular(block) == [
        (b"x-forwarded-for", b"10.0.0.9"),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-host", b"real.example"),
    ]


def test_xff_untrusted_without_client_addr_has_no_xff() -> None:
    block = tunnel([(b"host", b"h"), (b"x-forwarded-for", b"1.2.3.4")], client_addr=None)
    assert values(block, b"x-forwarded-for") == []


def test_xff_appended_when_trusted() -> None:
    block = tunnel(
        [
            (b"host", b"h"),
            (b"X-Forwarded-For", b"1.1.1.1, 2.2.2.2"),
            (b"x-forwarded-for", b"3.3.3.3"),
            (b"x-forwarded-proto", b"https"),
            (b"x-forwarded-host", b"public.example"),
            (b"forwarded", b"for=1.1.1.1"),
        ],
        trusted_proxy=True,
    )
    assert values(block, b"x-forwarded-for") == [b"1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9"]
    assert values(block, b"x-forwarded-proto") == [b"https"]
    assert values(block, b"x-forwarded-host") == [b"public.example"]
    assert values(block, b"forwarded") == [b"for=1.1.1.1"]


def test_trusted_without_incoming_sets_all() -> None:
    block = tunnel([(b"host", b"h")], trusted_proxy=True, scheme=b"https")
    assert regular(block) == [
        (b"x-forwarded-for", b"10.0.0.9"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"h"),
    ]


def test_cookies_stay_separate() -> None:
    block = tunnel([(b"host", b"h"), (b"cookie", b"a=1"), (b"Cookie", b"b=2")])
    assert values(block, b"cookie") == [b"a=1", b"b=2"]


def test_te_trailers_forwarded_for_grpc() -> None:
    block = tunnel(
        [(b"host", b"h"), (b"connection", b"TE"), (b"te", b"trailers"), (b"content-type", b"g")],
        method=b"POST",
    )
    assert regular(block)[:2] == [(b"te", b"trailers"), (b"content-type", b"g")]


# --- from_tunnel_response -----------------------------------------------------------------------


def test_response_ok() -> None:
    status, fields = from_tunnel_response(
        [
            (b":status", b"200"),
            (b"content-type", b"text/plain"),
            (b"connection", b"x-hop"),
            (b"x-hop", b"1"),
            (b"transfer-encoding", b"chunked"),
            (b"te", b"trailers"),
            (b"set-cookie", b"a=1"),
            (b"set-cookie", b"b=2"),
            (b"content-length", b"3, 3"),
        ]
    )
    assert status == 200
    assert fields == [
        (b"content-type", b"text/plain"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"content-length", b"3"),
    ]


def test_response_drops_other_pseudo_headers() -> None:
    assert from_tunnel_response([(b":status", b"204"), (b":path", b"/x")]) == (204, [])


@pytest.mark.parametrize(
    ("block", "match"),
    [
        ([], "missing :status"),
        ([(b"content-type", b"x")], "missing :status"),
        ([(b":status", b"200"), (b":status", b"200")], "several"),
        ([(b":status", b"20")], "invalid :status"),
        ([(b":status", b"2000")], "invalid :status"),
        ([(b":status", b"099")], "invalid :status"),
        ([(b":status", b"600")], "invalid :status"),
        ([(b":status", b"2x0")], "invalid :status"),
        ([(b":status", b" 200")], "invalid :status"),
        ([(b":status", b"101")], "101"),
        ([(b":status", b"200"), (b"x", b"a\nb")], "LF"),
        ([(b":status", b"200"), (b"content-length", b"1"), (b"content-length", b"2")], "different"),
    ],
)
def test_response_rejected(block: Headers, match: str) -> None:
    with pytest.raises(HeaderError, match=match):
        from_tunnel_response(block)


# --- trailers -----------------------------------------------------------------------------------


def test_trailers_cleaned() -> None:
    assert clean_trailers(
        [
            (b"Grpc-Status", b"0"),
            (b"content-length", b"1"),
            (b"transfer-encoding", b"chunked"),
            (b"host", b"h"),
            (b"trailer", b"x"),
            (b"te", b"trailers"),
            (b"connection", b"x-hop"),
            (b"x-hop", b"1"),
            (b"grpc-message", b"ok"),
        ]
    ) == [(b"grpc-status", b"0"), (b"grpc-message", b"ok")]


@pytest.mark.parametrize(
    "block", [[(b":status", b"200")], [(b"x", b"1"), (b":path", b"/")], [(b"x", b"a\rb")]]
)
def test_trailers_rejected(block: Headers) -> None:
    with pytest.raises(HeaderError):
        clean_trailers(block)


# --- parse_request_block ------------------------------------------------------------------------


def test_parse_request_block() -> None:
    head = parse_request_block(
        [*PSEUDO_GET, (b"accept", b"*/*"), (b"cookie", b"a=1"), (b"x", b"1"), (b"cookie", b"b=2")]
    )
    assert head == RequestHead(
        method="GET",
        scheme="https",
        authority="api.example.com",
        path=b"/a/b",
        query_string=b"x=1&y=2",
        raw_path=b"/a/b?x=1&y=2",
        protocol=None,
        headers=[
            (b"host", b"api.example.com"),
            (b"accept", b"*/*"),
            (b"cookie", b"a=1; b=2"),
            (b"x", b"1"),
        ],
    )


def test_parse_extended_connect() -> None:
    head = parse_request_block(
        [
            (b":method", b"CONNECT"),
            (b":protocol", b"websocket"),
            (b":scheme", b"http"),
            (b":path", b"/chat"),
            (b":authority", b"h"),
            (b"sec-websocket-version", b"13"),
        ]
    )
    assert (head.method, head.protocol, head.path, head.query_string) == (
        "CONNECT",
        "websocket",
        b"/chat",
        b"",
    )
    assert head.headers == [(b"host", b"h"), (b"sec-websocket-version", b"13")]


def test_parse_host_fallback_and_matching_host_deduplicated() -> None:
    no_authority = [(n, v) for n, v in PSEUDO_GET if n != b":authority"]
    head = parse_request_block([*no_authority, (b"host", b"b.example")])
    assert head.authority == "b.example"
    assert head.headers == [(b"host", b"b.example")]
    head = parse_request_block([*PSEUDO_GET, (b"host", b"api.example.com")])
    assert head.headers == [(b"host", b"api.example.com")]


def drop(name: bytes) -> Headers:
    return [(n, v) for n, v in PSEUDO_GET if n != name]


@pytest.mark.parametrize(
    ("block", "match"),
    [
        (drop(b":method"), "missing :method"),
        (drop(b":path"), "missing :path"),
        (drop(b":scheme"), "missing :scheme"),
        (drop(b":authority"), "missing host"),
        ([*PSEUDO_GET, (b"host", b"other")], "differs"),
        ([(b"x", b"1"), *PSEUDO_GET], "after a regular"),
        ([*PSEUDO_GET, (b":method", b"GET")], "several"),
        ([*PSEUDO_GET, (b":status", b"200")], "unknown"),
        ([(b":method", b"CONNECT"), (b":authority", b"h")], "missing :scheme"),
        (
            [
                (b":method", b"CONNECT"),
                (b":scheme", b"http"),
                (b":path", b"/"),
                (b":authority", b"h"),
            ],
            "CONNECT",
        ),
        (
            [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":authority", b"h")],
            "missing :scheme",
        ),
        ([*PSEUDO_GET, (b":protocol", b"websocket")], "protocol"),
        ([*drop(b":path"), (b":path", b"")], "path"),
        ([*drop(b":authority"), (b":authority", b"a@b")], "authority"),
        ([*PSEUDO_GET, (b"x", b"a\x00")], "NUL"),
        ([*drop(b":path"), (b":path", b"/\r\n")], "CR"),
        ([*PSEUDO_GET, (b"content-length", b"1, 2")], "different"),
    ],
)
def test_parse_request_block_rejected(block: Headers, match: str) -> None:
    with pytest.raises(HeaderError, match=match):
        parse_request_block(block)


# --- properties ---------------------------------------------------------------------------------

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
token = st.text(alphabet=TCHAR, min_size=1, max_size=12).map(str.encode)
special_names = st.sampled_from(
    [*sorted(HOP_BY_HOP), b"host", b"content-length", b"x-forwarded-for", b"cookie", b"Connection"]
).map(lambda n: n.upper() if len(n) % 2 else n)
names = st.one_of(token, special_names)
value_chars = st.sampled_from([*range(0x20, 0x7F), 0x09, 0x80, 0xFF])
field_values = st.lists(value_chars, max_size=20).map(bytes)
connection_values = st.lists(st.one_of(token, special_names), max_size=4).map(b", ".join)
fields = st.lists(
    st.one_of(
        st.tuples(names, field_values),
        st.tuples(st.just(b"Connection"), connection_values),
        st.tuples(st.just(b"te"), st.sampled_from([b"trailers", b"gzip, trailers", b"gzip"])),
    ),
    max_size=15,
)
raw_bytes = st.binary(max_size=12)
raw_fields = st.lists(st.tuples(raw_bytes, raw_bytes), max_size=8)


@given(fields)
def test_strip_never_leaks_hop_by_hop_and_keeps_the_rest(block: Headers) -> None:
    out = strip_hop_by_hop(block)
    nominated = {
        item.strip(b" \t").lower()
        for name, value in block
        if name.lower() == b"connection"
        for item in value.split(b",")
    } - {b"te"}
    for name, value in out:
        assert name == name.lower()
        assert name not in nominated
        assert name not in HOP_BY_HOP or (name, value) == (b"te", b"trailers")
    assert len([n for n, _ in out if n == b"te"]) <= 1
    kept = [
        (n.lower(), v.strip(b" \t"))
        for n, v in block
        if n.lower() not in HOP_BY_HOP and n.lower() not in nominated
    ]
    assert [f for f in out if f[0] != b"te"] == kept


@given(raw_fields)
def test_strip_raises_only_header_error(block: Headers) -> None:
    try:
        out = strip_hop_by_hop(block)
    except HeaderError:
        return
    for name, value in out:
        validate_name(name)
        validate_value(name, value)


@settings(max_examples=300)
@given(
    raw_fields,
    st.one_of(raw_bytes, st.sampled_from([b"GET", b"CONNECT", b"OPTIONS"])),
    st.one_of(raw_bytes, st.just(b"/")),
    raw_bytes,
    st.one_of(st.none(), st.text(max_size=8)),
    st.booleans(),
    st.one_of(st.none(), raw_bytes),
)
def test_to_tunnel_request_raises_only_header_error(
    block: Headers,
    method: bytes,
    path: bytes,
    scheme: bytes,
    client: str | None,
    trusted: bool,
    protocol: bytes | None,
) -> None:
    with contextlib.suppress(HeaderError):
        tunnel(
            [(b"host", b"h"), *block],
            method=method,
            path=path,
            scheme=scheme,
            client_addr=client,
            trusted_proxy=trusted,
            protocol=protocol,
        )


@pytest.mark.parametrize("function", [from_tunnel_response, clean_trailers, parse_request_block])
@given(
    block=raw_fields,
    pseudo=st.lists(
        st.tuples(
            st.sampled_from(
                [b":status", b":method", b":path", b":scheme", b":authority", b":protocol", b":x"]
            ),
            raw_bytes,
        ),
        max_size=5,
    ),
)
def test_tunnel_parsers_raise_only_header_error(
    function: Callable[[Headers], object], block: Headers, pseudo: Headers
) -> None:
    with contextlib.suppress(HeaderError):
        function(pseudo + block)


@given(fields, st.sampled_from(["10.1.2.3", "::1"]), st.booleans())
def test_untrusted_forwarding_is_exactly_ours(block: Headers, client: str, trusted: bool) -> None:
    block = [(n, v) for n, v in block if n.lower() not in {b"host", b"content-length"}]
    out = tunnel([(b"host", b"h.example"), *block], client_addr=client, trusted_proxy=trusted)
    assert [n for n, _ in out[:4]] == [b":method", b":scheme", b":authority", b":path"]
    assert not any(n.startswith(b":") for n, _ in out[4:])
    assert values(out, b"host") == []
    xff = values(out, b"x-forwarded-for")
    assert len(xff) == 1
    assert xff[0].endswith(client.encode())
    if not trusted:
        assert xff == [client.encode()]
        assert values(out, b"x-forwarded-proto") == [b"http"]
        assert values(out, b"x-forwarded-host") == [b"h.example"]
        assert values(out, b"forwarded") == []


@given(fields, st.sampled_from([b"/", b"/a?b=c", b"/%20?"]))
def test_round_trip_through_the_tunnel(block: Headers, path: bytes) -> None:
    block = [(n, v) for n, v in block if n.lower() not in {b"host", b"content-length"}]
    out = tunnel([(b"Host", b"h.example:81"), *block], method=b"PUT", path=path)
    head = parse_request_block(out)
    assert (head.method, head.scheme, head.authority, head.raw_path) == (
        "PUT",
        "http",
        "h.example:81",
        path,
    )
    assert head.path + (b"?" + head.query_string if b"?" in path else b"") == path
    assert head.headers[0] == (b"host", b"h.example:81")
    non_cookie = [f for f in regular(out) if f[0] != b"cookie"]
    assert [f for f in head.headers[1:] if f[0] != b"cookie"] == non_cookie


# --- X-Forwarded-Prefix and strip_path_prefix -----------------------------------------------


def test_user_sent_forwarded_prefix_is_dropped_unless_trusted() -> None:
    fields: Headers = [(b"host", b"h"), (b"X-Forwarded-Prefix", b"/evil")]
    assert values(tunnel(fields), b"x-forwarded-prefix") == []
    assert values(tunnel(fields, trusted_proxy=True), b"x-forwarded-prefix") == [b"/evil"]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (b"/chat/count?q=1", b"/count?q=1"),
        (b"/chat", b"/"),
        (b"/chat/", b"/"),
        (b"/chat?q=1", b"/?q=1"),
        (b"/chat/a%2Fb/c", b"/a%2Fb/c"),
        (b"/chat//x", b"//x"),
    ],
)
def test_strip_path_prefix_cuts_the_path_and_names_the_prefix(path: bytes, expected: bytes) -> None:
    block = strip_path_prefix(tunnel([(b"host", b"h")], path=path), b"/chat")
    assert values(block, b":path") == [expected]
    assert values(block, b"x-forwarded-prefix") == [b"/chat"]
    assert [n for n, _ in block[:4]] == [b":method", b":scheme", b":authority", b":path"]
    head = parse_request_block(block)  # still a valid request block for the backend
    assert head.raw_path == expected


@pytest.mark.parametrize("path", [b"/chatroom", b"/other/chat", b"/", b"*"])
def test_strip_path_prefix_leaves_other_paths_alone(path: bytes) -> None:
    method = b"OPTIONS" if path == b"*" else b"GET"
    block = tunnel([(b"host", b"h")], path=path, method=method)
    assert strip_path_prefix(block, b"/chat") == block


def test_strip_path_prefix_appends_to_a_trusted_proxys_prefix() -> None:
    fields: Headers = [(b"host", b"h"), (b"x-forwarded-prefix", b"/outer/")]
    block = strip_path_prefix(tunnel(fields, path=b"/chat/x", trusted_proxy=True), b"/chat")
    assert values(block, b"x-forwarded-prefix") == [b"/outer/chat"]
    # An untrusted user's value never gets this far; the router's own value replaces it.
    block = strip_path_prefix(tunnel(fields, path=b"/chat/x"), b"/chat")
    assert values(block, b"x-forwarded-prefix") == [b"/chat"]


@pytest.mark.parametrize(
    ("root_path", "prefix", "path", "expected"),
    [
        ("", None, b"/a%20b", ("", "/a b", b"/a%20b")),
        ("/outer", None, b"/x", ("/outer", "/outer/x", b"/outer/x")),
        ("/outer/", None, b"/x", ("/outer", "/outer/x", b"/outer/x")),
        ("", b"/chat", b"/count", ("/chat", "/chat/count", b"/chat/count")),
        ("/outer", b"/chat", b"/", ("/outer/chat", "/outer/chat/", b"/outer/chat/")),
        ("", b"/caf%C3%A9", b"/x", ("/café", "/café/x", b"/caf%C3%A9/x")),
        ("/a b", None, b"/x", ("/a b", "/a b/x", b"/a%20b/x")),
        ("", b"chat", b"/x", ("", "/x", b"/x")),  # not an absolute path: ignored
    ],
)
def test_scope_mounts_the_app_at_root_path_then_forwarded_prefix(
    root_path: str, prefix: bytes | None, path: bytes, expected: tuple[str, str, bytes]
) -> None:
    fields: Headers = [(b"host", b"h")]
    if prefix is not None:
        fields.append((b"x-forwarded-prefix", prefix))
    head = parse_request_block(tunnel(fields, path=path, trusted_proxy=True))
    scope = build_scope(head, scope_type="http", server=None, root_path=root_path)
    assert (scope["root_path"], scope["path"], scope["raw_path"]) == expected

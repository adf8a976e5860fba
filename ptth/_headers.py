"""Header rules for requests and responses crossing the tunnel (pure: no I/O, no trio).

The router translates user requests (HTTP/1.1 or h2, already parsed by hypercorn into ASGI-style
``(name, value)`` byte pairs) into HTTP/2 header blocks for the tunnel, and back. Everything that
can smuggle a request or inject a header is decided here, once (RELIABILITY row 21):

* names are RFC 9110 §5.6.2 tokens; values never hold CR, LF or NUL (RFC 9113 §8.2.1);
* connection-specific fields, and every field a Connection header nominates, are removed
  (RFC 9113 §8.2.2, RFC 9110 §7.6.1); TE survives only as ``te: trailers``;
* Content-Length together with Transfer-Encoding, or differing Content-Length values, are refused
  (RFC 9112 §6.3, RFC 9110 §8.6);
* ``:authority`` is rebuilt from Host (RFC 9113 §8.3.1) and X-Forwarded-* are set by the router,
  trusting incoming ones only from a configured proxy.

Every violation raises :class:`ptth.errors.HeaderError` (status 400) naming the field.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ptth.errors import HeaderError

__all__ = [
    "HOP_BY_HOP",
    "Headers",
    "RequestHead",
    "clean_trailers",
    "from_tunnel_response",
    "parse_request_block",
    "strip_hop_by_hop",
    "to_tunnel_request",
    "validate_name",
    "validate_value",
]

Headers = list[tuple[bytes, bytes]]

# RFC 9113 §8.2.2: connection-specific fields never cross into HTTP/2 (and never cross a proxy,
# RFC 9110 §7.6.1). http2-settings belongs to the h2c upgrade (RFC 7540 §3.2), also per hop.
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
        b"http2-settings",
    }
)

_ALPHA = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_DIGIT = b"0123456789"
# RFC 9110 §5.6.2 tchar.
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~" + _DIGIT + _ALPHA)
# RFC 3986 §3.1 scheme characters (the first one must be a letter).
_SCHEME_CHAR = frozenset(_ALPHA + _DIGIT + b"+-.")
# Host (RFC 9110 §7.2): reg-name, IPv4 or [IPv6] plus an optional port. Userinfo ("@") is
# forbidden (RFC 9110 §4.2.4), and sub-delims such as "," are refused too: no DNS name uses them
# and some proxies read a comma as a list separator.
_AUTHORITY_CHAR = frozenset(_ALPHA + _DIGIT + b"-._~%:[]")
# A request target is visible ASCII (RFC 9112 §3.2, RFC 3986).
_PATH_CHAR = frozenset(range(0x21, 0x7F))

_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path", b":protocol"})
_FORWARDING = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"}
)
# RFC 9110 §6.5.1: framing and routing fields cannot be trailers; TE is a request-header only.
_TRAILER_FORBIDDEN = frozenset(
    {b"content-length", b"transfer-encoding", b"host", b"trailer", b"te"}
)
# 18 digits is over 900 PB and stays clear of int()'s digit limit on hostile input.
_MAX_LENGTH_DIGITS = 18
_OWS = b" \t"


@dataclass(frozen=True)
class RequestHead:
    """A request received from the tunnel, ready for an ASGI scope.

    ``raw_path`` is the ``:path`` exactly as received (query included); ``path`` is its part before
    the first ``?`` (still percent-encoded) and ``query_string`` the part after. ``headers`` starts
    with a ``host`` field carrying ``authority``, then the regular fields in order.
    """

    method: str
    scheme: str
    authority: str
    path: bytes
    query_string: bytes
    raw_path: bytes
    protocol: str | None
    headers: Headers


def _show(data: bytes) -> str:
    """A bounded repr for error messages: hostile input must not make them huge."""
    return repr(data[:64] + b"..." if len(data) > 64 else data)


def validate_name(name: bytes) -> None:
    """Require a non-empty RFC 9110 §5.6.2 token; upper case is allowed (HTTP/1 input)."""
    if not name:
        raise HeaderError("empty header field name")
    if not _TCHAR.issuperset(name):
        raise HeaderError(f"invalid character in header field name {_show(name)}")


def validate_value(name: bytes, value: bytes) -> None:
    """Refuse CR, LF and NUL anywhere in a value (RFC 9113 §8.2.1, RFC 9110 §5.5)."""
    for char, label in ((b"\r", "CR"), (b"\n", "LF"), (b"\x00", "NUL")):
        if char in value:
            raise HeaderError(f"{label} in the value of header field {_show(name)}")


def _split_list(value: bytes) -> list[bytes]:
    """Lower-cased, trimmed, non-empty members of a comma-separated list (RFC 9110 §5.6.1)."""
    return [item for part in value.split(b",") if (item := part.strip(_OWS).lower())]


def strip_hop_by_hop(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """Validate every field and drop the ones that belong to a single connection.

    Names are lower-cased and values trimmed of surrounding whitespace (RFC 9110 §5.5; h2 refuses
    such values on receipt, RFC 9113 §8.2.1). Removed: :data:`HOP_BY_HOP` and every field named by
    any Connection header (RFC 9113 §8.2.2, RFC 9110 §7.6.1). TE is kept only when it lists
    ``trailers``, and then exactly once as ``te: trailers``; a Connection header naming TE does
    not remove it, since RFC 9110 §10.1.4 requires senders of TE to nominate it. Other fields keep
    their order and repeats.
    """
    fields: Headers = []
    nominated: set[bytes] = set()
    for name, value in headers:
        validate_name(name)
        validate_value(name, value)
        lname = name.lower()
        value = value.strip(_OWS)
        if lname == b"connection":
            nominated.update(_split_list(value))
        fields.append((lname, value))
    nominated.discard(b"te")

    out: Headers = []
    te_kept = False
    for lname, value in fields:
        if lname == b"te":
            if not te_kept and b"trailers" in _split_list(value):
                out.append((b"te", b"trailers"))
                te_kept = True
        elif lname not in HOP_BY_HOP and lname not in nominated:
            out.append((lname, value))
    return out


def _content_length(values: list[bytes]) -> bytes | None:
    """The single Content-Length the fields agree on, or None when there is none.

    RFC 9110 §8.6: a list of identical values ("42, 42") may be collapsed to one; anything else
    (different values, non-digits) is a smuggling risk (RFC 9112 §6.3) and refused.
    """
    lengths: set[int] = set()
    for value in values:
        for part in value.split(b","):
            item = part.strip(_OWS)
            if not item.isdigit() or len(item) > _MAX_LENGTH_DIGITS:
                raise HeaderError(f"invalid content-length value {_show(value)}")
            lengths.add(int(item))
    if len(lengths) > 1:
        raise HeaderError("several content-length fields with different values")
    return str(lengths.pop()).encode() if lengths else None


def _collapse_content_length(fields: Headers) -> Headers:
    """Replace every content-length field by one normalised field at the first one's place."""
    length = _content_length([v for n, v in fields if n == b"content-length"])
    out: Headers = []
    for name, value in fields:
        if name != b"content-length":
            out.append((name, value))
        elif length is not None:
            out.append((b"content-length", length))
            length = None
    return out


def _validate_method(method: bytes) -> None:
    """A method is a token (RFC 9110 §9.1)."""
    if not method or not _TCHAR.issuperset(method):
        raise HeaderError(f"invalid :method {_show(method)}")


def _validate_scheme(scheme: bytes) -> None:
    """RFC 3986 §3.1: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )."""
    if not scheme or scheme[0] not in _ALPHA or not _SCHEME_CHAR.issuperset(scheme):
        raise HeaderError(f"invalid :scheme {_show(scheme)}")


def _validate_path(path: bytes, method: bytes) -> None:
    """Origin form ("/...") or "*" for OPTIONS (RFC 9113 §8.3.1), visible ASCII only."""
    if not _PATH_CHAR.issuperset(path) or not (
        path.startswith(b"/") or (path == b"*" and method == b"OPTIONS")
    ):
        raise HeaderError(f"invalid :path {_show(path)}")


def _validate_authority(authority: bytes, field: str) -> None:
    if not authority or not _AUTHORITY_CHAR.issuperset(authority):
        raise HeaderError(f"invalid {field} {_show(authority)}")


def _validate_protocol(method: bytes, protocol: bytes | None) -> None:
    """Only extended CONNECT (RFC 8441 §4) crosses the tunnel; a plain CONNECT never does."""
    if protocol is None:
        if method == b"CONNECT":
            raise HeaderError("CONNECT without :protocol is not proxied (RFC 9113 §8.5)")
    elif method != b"CONNECT":
        raise HeaderError(f":protocol is only allowed with CONNECT, not {_show(method)}")
    elif not protocol or not _TCHAR.issuperset(protocol):
        raise HeaderError(f"invalid :protocol {_show(protocol)}")


def _single_host(values: list[bytes]) -> bytes:
    """The one Host value; identical duplicates (an h2 client's Host plus :authority) collapse."""
    if not values:
        raise HeaderError("missing host header field")
    if len(set(values)) > 1:
        raise HeaderError("several host header fields with different values")
    _validate_authority(values[0], "host")
    return values[0]


def to_tunnel_request(
    *,
    method: bytes,
    path: bytes,
    scheme: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    client_addr: str | None,
    trusted_proxy: bool = False,
    protocol: bytes | None = None,
) -> Headers:
    """Build the HTTP/2 request block the router sends into the tunnel.

    Pseudo-headers come first (RFC 9113 §8.3): ``:method :scheme :authority :path [:protocol]``;
    ``:authority`` is the request's single Host value and Host itself is not repeated. Hop-by-hop
    fields are stripped. Content-Length with Transfer-Encoding, or conflicting Content-Lengths,
    are refused (RFC 9112 §6.3). X-Forwarded-For/-Proto/-Host (and Forwarded) from the user are
    dropped and replaced unless ``trusted_proxy``, in which case ``client_addr`` is appended to
    the incoming X-Forwarded-For and incoming X-Forwarded-Proto/-Host are kept.
    """
    _validate_method(method)
    scheme = scheme.lower()
    _validate_scheme(scheme)
    _validate_path(path, method)
    _validate_protocol(method, protocol)

    raw = list(headers)
    fields = strip_hop_by_hop(raw)  # validates every name and value first
    # Framing is judged on the fields as received: a Connection header must not hide them.
    lowered = [(name.lower(), value.strip(_OWS)) for name, value in raw]
    has_te = any(name == b"transfer-encoding" for name, _ in lowered)
    lengths = [value for name, value in lowered if name == b"content-length"]
    if has_te and lengths:
        raise HeaderError("both content-length and transfer-encoding (request smuggling)")
    _content_length(lengths)
    authority = _single_host([value for name, value in lowered if name == b"host"])

    addr: bytes | None = None
    if client_addr is not None:
        try:
            addr = client_addr.encode("ascii")
        except UnicodeEncodeError:
            raise HeaderError(f"invalid client address {client_addr[:64]!r}") from None
        validate_value(b"x-forwarded-for", addr)

    dropped = {b"host", b"x-forwarded-for"} if trusted_proxy else {b"host"} | _FORWARDING
    regular = [(n, v) for n, v in _collapse_content_length(fields) if n not in dropped]
    present = {name for name, _ in regular}
    forwarded: Headers = []
    chain = [v for n, v in fields if n == b"x-forwarded-for" and v] if trusted_proxy else []
    if addr is not None:
        chain.append(addr)
    if chain:
        forwarded.append((b"x-forwarded-for", b", ".join(chain)))
    if b"x-forwarded-proto" not in present:
        forwarded.append((b"x-forwarded-proto", scheme))
    if b"x-forwarded-host" not in present:
        forwarded.append((b"x-forwarded-host", authority))

    pseudo: Headers = [
        (b":method", method),
        (b":scheme", scheme),
        (b":authority", authority),
        (b":path", path),
    ]
    if protocol is not None:
        pseudo.append((b":protocol", protocol))
    return pseudo + regular + forwarded


def _parse_status(value: bytes) -> int:
    """RFC 9113 §8.3.2: three digits; RFC 9110 §15 range; 101 has no meaning in h2 (§8.6)."""
    if len(value) != 3 or not value.isdigit() or not 100 <= int(value) <= 599:
        raise HeaderError(f"invalid :status {_show(value)}")
    if value == b"101":
        raise HeaderError(":status 101 is not allowed in HTTP/2 (RFC 9113 §8.6)")
    return int(value)


def from_tunnel_response(headers: Iterable[tuple[bytes, bytes]]) -> tuple[int, Headers]:
    """Split a response block from the tunnel into its status and the fields to relay.

    Exactly one ``:status`` is required; other pseudo-headers are dropped; hop-by-hop fields
    (including TE, a request-only field) are stripped; Content-Length must be consistent.
    """
    status: int | None = None
    regular: Headers = []
    for name, value in headers:
        if name.startswith(b":"):
            if name == b":status":
                if status is not None:
                    raise HeaderError("several :status pseudo-header fields")
                status = _parse_status(value)
        else:
            regular.append((name, value))
    if status is None:
        raise HeaderError("missing :status pseudo-header field")
    fields = [(n, v) for n, v in strip_hop_by_hop(regular) if n != b"te"]
    return status, _collapse_content_length(fields)


def clean_trailers(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """Trailers in either direction: no pseudo-headers (RFC 9113 §8.1), no hop-by-hop fields,
    and no framing or routing fields (RFC 9110 §6.5.1): content-length, transfer-encoding, host,
    trailer, te."""
    fields = list(headers)
    for name, _ in fields:
        if name.startswith(b":"):
            raise HeaderError(f"pseudo-header field {_show(name)} in trailers")
    return [(n, v) for n, v in strip_hop_by_hop(fields) if n not in _TRAILER_FORBIDDEN]


def parse_request_block(headers: Iterable[tuple[bytes, bytes]]) -> RequestHead:
    """Backend side: turn a request block received in the tunnel into a :class:`RequestHead`.

    RFC 9113 §8.3.1: ``:method``, ``:scheme`` and ``:path`` are required, pseudo-headers come
    first and only once; extended CONNECT (RFC 8441 §4) needs them too plus ``:protocol``, and a
    plain CONNECT is refused. The authority is ``:authority``, else Host; a Host that differs from
    ``:authority`` is refused. Cookie fields are joined with "; " (RFC 9113 §8.2.3) because ASGI
    apps read a single Cookie header.
    """
    pseudo: dict[bytes, bytes] = {}
    regular: Headers = []
    for name, value in headers:
        if name.startswith(b":"):
            if regular:
                raise HeaderError(f"pseudo-header field {_show(name)} after a regular field")
            if name not in _REQUEST_PSEUDO:
                raise HeaderError(f"unknown request pseudo-header field {_show(name)}")
            if name in pseudo:
                raise HeaderError(f"several {_show(name)} pseudo-header fields")
            validate_value(name, value)
            pseudo[name] = value
        else:
            regular.append((name, value))

    for required in (b":method", b":scheme", b":path"):
        if required not in pseudo:
            raise HeaderError(f"missing {required.decode()} pseudo-header field")
    method = pseudo[b":method"]
    scheme = pseudo[b":scheme"].lower()
    raw_path = pseudo[b":path"]
    protocol = pseudo.get(b":protocol")
    _validate_method(method)
    _validate_scheme(scheme)
    _validate_path(raw_path, method)
    _validate_protocol(method, protocol)

    fields = _collapse_content_length(strip_hop_by_hop(regular))
    hosts = [value for name, value in fields if name == b"host"]
    authority = pseudo.get(b":authority")
    if authority is None:
        authority = _single_host(hosts)
    else:
        _validate_authority(authority, ":authority")
        if any(host != authority for host in hosts):
            raise HeaderError("host header field differs from :authority (RFC 9113 §8.3.1)")

    out: Headers = [(b"host", authority)]
    cookies = [value for name, value in fields if name == b"cookie"]
    for name, value in fields:
        if name == b"cookie":
            if cookies:
                out.append((b"cookie", b"; ".join(cookies)))
                cookies = []
        elif name != b"host":
            out.append((name, value))

    path, _, query_string = raw_path.partition(b"?")
    return RequestHead(
        method=method.decode("ascii"),
        scheme=scheme.decode("ascii"),
        authority=authority.decode("ascii"),
        path=path,
        query_string=query_string,
        raw_path=raw_path,
        protocol=None if protocol is None else protocol.decode("ascii"),
        headers=out,
    )

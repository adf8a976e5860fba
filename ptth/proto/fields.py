"""Rules for single header fields (pure: no I/O, no trio).

What a field name, a field value or a pseudo-header value may hold, which fields belong to one
connection, and when Content-Length values agree; :mod:`ptth.proto.headers` applies these rules
to whole header blocks. Every violation raises :class:`ptth.errors.HeaderError` (status 400)
naming the field.
"""

from __future__ import annotations

from collections.abc import Iterable

from ptth.errors import HeaderError

__all__ = [
    "HOP_BY_HOP",
    "OWS",
    "Headers",
    "collapse_content_length",
    "content_length",
    "declared_length",
    "shown",
    "single_host",
    "strip_hop_by_hop",
    "validate_authority",
    "validate_method",
    "validate_name",
    "validate_path",
    "validate_protocol",
    "validate_scheme",
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

# 18 digits is over 900 PB and stays clear of int()'s digit limit on hostile input.
_MAX_LENGTH_DIGITS = 18
# RFC 9110 §5.6.3 optional whitespace.
OWS = b" \t"


def shown(data: bytes) -> str:
    """A bounded repr for error messages: hostile input must not make them huge."""
    return repr(data[:64] + b"..." if len(data) > 64 else data)


def validate_name(name: bytes) -> None:
    """Require a non-empty RFC 9110 §5.6.2 token; upper case is allowed (HTTP/1 input)."""
    if not name:
        raise HeaderError("empty header field name")
    if not _TCHAR.issuperset(name):
        raise HeaderError(f"invalid character in header field name {shown(name)}")


def validate_value(name: bytes, value: bytes) -> None:
    """Refuse CR, LF and NUL anywhere in a value (RFC 9113 §8.2.1, RFC 9110 §5.5)."""
    for char, label in ((b"\r", "CR"), (b"\n", "LF"), (b"\x00", "NUL")):
        if char in value:
            raise HeaderError(f"{label} in the value of header field {shown(name)}")


def _split_list(value: bytes) -> list[bytes]:
    """Lower-cased, trimmed, non-empty members of a comma-separated list (RFC 9110 §5.6.1)."""
    return [item for part in value.split(b",") if (item := part.strip(OWS).lower())]


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
        value = value.strip(OWS)
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


def content_length(values: list[bytes]) -> bytes | None:
    """The single Content-Length the fields agree on, or None when there is none.

    RFC 9110 §8.6: a list of identical values ("42, 42") may be collapsed to one; anything else
    (different values, non-digits) is a smuggling risk (RFC 9112 §6.3) and refused.
    """
    lengths: set[int] = set()
    for value in values:
        for part in value.split(b","):
            item = part.strip(OWS)
            if not item.isdigit() or len(item) > _MAX_LENGTH_DIGITS:
                raise HeaderError(f"invalid content-length value {shown(value)}")
            lengths.add(int(item))
    if len(lengths) > 1:
        raise HeaderError("several content-length fields with different values")
    return str(lengths.pop()).encode() if lengths else None


def collapse_content_length(fields: Headers) -> Headers:
    """Replace every content-length field by one normalised field at the first one's place."""
    length = content_length([v for n, v in fields if n == b"content-length"])
    out: Headers = []
    for name, value in fields:
        if name != b"content-length":
            out.append((name, value))
        elif length is not None:
            out.append((b"content-length", length))
            length = None
    return out


def validate_method(method: bytes) -> None:
    """A method is a token (RFC 9110 §9.1)."""
    if not method or not _TCHAR.issuperset(method):
        raise HeaderError(f"invalid :method {shown(method)}")


def validate_scheme(scheme: bytes) -> None:
    """RFC 3986 §3.1: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )."""
    if not scheme or scheme[0] not in _ALPHA or not _SCHEME_CHAR.issuperset(scheme):
        raise HeaderError(f"invalid :scheme {shown(scheme)}")


def validate_path(path: bytes, method: bytes) -> None:
    """Origin form ("/...") or "*" for OPTIONS (RFC 9113 §8.3.1), visible ASCII only."""
    if not _PATH_CHAR.issuperset(path) or not (
        path.startswith(b"/") or (path == b"*" and method == b"OPTIONS")
    ):
        raise HeaderError(f"invalid :path {shown(path)}")


def validate_authority(authority: bytes, field: str) -> None:
    if not authority or not _AUTHORITY_CHAR.issuperset(authority):
        raise HeaderError(f"invalid {field} {shown(authority)}")


def validate_protocol(method: bytes, protocol: bytes | None) -> None:
    """Only extended CONNECT (RFC 8441 §4) crosses the tunnel; a plain CONNECT never does."""
    if protocol is None:
        if method == b"CONNECT":
            raise HeaderError("CONNECT without :protocol is not proxied (RFC 9113 §8.5)")
    elif method != b"CONNECT":
        raise HeaderError(f":protocol is only allowed with CONNECT, not {shown(method)}")
    elif not protocol or not _TCHAR.issuperset(protocol):
        raise HeaderError(f"invalid :protocol {shown(protocol)}")


def single_host(values: list[bytes]) -> bytes:
    """The one Host value; identical duplicates (an h2 client's Host plus :authority) collapse."""
    if not values:
        raise HeaderError("missing host header field")
    if len(set(values)) > 1:
        raise HeaderError("several host header fields with different values")
    validate_authority(values[0], "host")
    return values[0]


def declared_length(fields: Headers) -> int | None:
    """The value of the first Content-Length field, or None when there is none."""
    for name, value in fields:
        if name == b"content-length":
            return int(value)
    return None

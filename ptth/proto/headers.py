"""Header blocks crossing the tunnel (pure: no I/O, no trio).

The router translates user requests (HTTP/1.1 or h2, already parsed by hypercorn into ASGI-style
``(name, value)`` byte pairs) into HTTP/2 header blocks for the tunnel, and back. Everything that
can smuggle a request or inject a header is decided here and in :mod:`ptth.proto.fields`, once
(ARCHITECTURE.md, attack 21):

* names are RFC 9110 §5.6.2 tokens; values never hold CR, LF or NUL (RFC 9113 §8.2.1);
* connection-specific fields, and every field a Connection header nominates, are removed
  (RFC 9113 §8.2.2, RFC 9110 §7.6.1); TE survives only as ``te: trailers``;
* Content-Length together with Transfer-Encoding, or differing Content-Length values, are refused
  (RFC 9112 §6.3, RFC 9110 §8.6);
* ``:authority`` is rebuilt from Host (RFC 9113 §8.3.1) and X-Forwarded-* are set by the router,
  trusting incoming ones only from a configured proxy;
* for a backend that asked for it, the matched path prefix is cut from ``:path`` and named in
  X-Forwarded-Prefix (:func:`strip_path_prefix`).

The rules for single fields (the first three) live in :mod:`ptth.proto.fields`; this module applies
them to request, response and trailer blocks. Every violation raises
:class:`ptth.errors.HeaderError` (status 400) naming the field.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ptth.errors import HeaderError

from .fields import (
    OWS,
    Headers,
    collapse_content_length,
    content_length,
    shown,
    single_host,
    strip_hop_by_hop,
    validate_authority,
    validate_method,
    validate_path,
    validate_protocol,
    validate_scheme,
    validate_value,
)

__all__ = [
    "RequestHead",
    "clean_trailers",
    "from_tunnel_response",
    "parse_request_block",
    "strip_path_prefix",
    "to_tunnel_request",
]

_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path", b":protocol"})
_FORWARDING = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-prefix",
        b"forwarded",
        b"x-real-ip",
    }
)
# Credentials meant for a proxy in front of the router, never for the backend (RFC 9110 §11.7.2).
_NEVER_FORWARDED = frozenset({b"proxy-authorization", b"proxy-authenticate"})
# RFC 9110 §6.5.1: framing and routing fields cannot be trailers; TE is a request-header only.
_TRAILER_FORBIDDEN = frozenset(
    {b"content-length", b"transfer-encoding", b"host", b"trailer", b"te"}
)


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


def to_tunnel_request(
    *,
    method: bytes,
    path: bytes,
    scheme: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    client_addr: str | None,
    trusted_proxy: bool = False,
    protocol: bytes | None = None,
    authority: bytes | None = None,
    forwarded_element: bytes | None = None,
) -> Headers:
    """Build the HTTP/2 request block the router sends into the tunnel.

    Pseudo-headers come first (RFC 9113 §8.3): ``:method :scheme :authority :path [:protocol]``;
    ``:authority`` is the request's single Host value and Host itself is not repeated. Hop-by-hop
    fields are stripped. Content-Length with Transfer-Encoding, or conflicting Content-Lengths,
    are refused (RFC 9112 §6.3). X-Forwarded-For/-Proto/-Host/-Prefix (and Forwarded) from the
    user are dropped and replaced unless ``trusted_proxy``, in which case ``client_addr`` is
    appended to the incoming X-Forwarded-For and incoming X-Forwarded-Proto/-Host/-Prefix are
    kept. (X-Forwarded-Prefix is the router's only for a tunnel that strips its prefix: see
    :func:`strip_path_prefix`.)

    ``authority`` (an absolute-form target's, RFC 9112 §3.2.2) wins over Host. Fields whose
    names hold an underscore are dropped (nginx's default): ``x_forwarded_for`` must not pass
    beside the router's own ``x-forwarded-for`` to a framework that folds ``_`` into ``-``.
    ``forwarded_element`` is the router's RFC 7239 element for this hop; it replaces the user's
    Forwarded (and is appended to a trusted proxy's).
    """
    validate_method(method)
    scheme = scheme.lower()
    validate_scheme(scheme)
    validate_path(path, method)
    validate_protocol(method, protocol)

    raw = list(headers)
    fields = strip_hop_by_hop(raw)  # validates every name and value first
    # Framing is judged on the fields as received: a Connection header must not hide them.
    lowered = [(name.lower(), value.strip(OWS)) for name, value in raw]
    has_te = any(name == b"transfer-encoding" for name, _ in lowered)
    lengths = [value for name, value in lowered if name == b"content-length"]
    if has_te and lengths:
        raise HeaderError("both content-length and transfer-encoding (request smuggling)")
    content_length(lengths)
    if authority is not None:
        validate_authority(authority, ":authority")
    else:
        authority = single_host([value for name, value in lowered if name == b"host"])

    addr: bytes | None = None
    if client_addr is not None:
        try:
            addr = client_addr.encode("ascii")
        except UnicodeEncodeError:
            raise HeaderError(f"invalid client address {client_addr[:64]!r}") from None
        validate_value(b"x-forwarded-for", addr)

    dropped = (
        {b"host", b"x-forwarded-for"} | ({b"forwarded"} if forwarded_element else set())
        if trusted_proxy
        else {b"host"} | _FORWARDING
    ) | _NEVER_FORWARDED
    regular = [
        (n, v) for n, v in collapse_content_length(fields) if n not in dropped and b"_" not in n
    ]
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
    if forwarded_element is not None:
        outer = [v for n, v in fields if n == b"forwarded" and v] if trusted_proxy else []
        forwarded.append((b"forwarded", b", ".join([*outer, forwarded_element])))

    pseudo: Headers = [
        (b":method", method),
        (b":scheme", scheme),
        (b":authority", authority),
        (b":path", path),
    ]
    if protocol is not None:
        pseudo.append((b":protocol", protocol))
    return pseudo + regular + forwarded


def strip_path_prefix(block: Headers, prefix: bytes) -> Headers:
    """The request block for a tunnel registered with ``Ptth-Strip-Prefix``.

    ``prefix`` is the path prefix of the claim the request matched (no trailing slash; it
    matched at a segment boundary). ``:path`` loses it, keeping an absolute path:
    ``/chat/count?q=1`` becomes ``/count?q=1``, ``/chat`` and ``/chat/`` become ``/``,
    ``/chat?q=1`` becomes ``/?q=1``. X-Forwarded-Prefix names what was cut, after any prefix a
    trusted proxy in front already cut (its X-Forwarded-Prefix, which :func:`to_tunnel_request`
    keeps only from a trusted proxy): the backend's app is mounted at that path. A ``:path`` the
    prefix does not start at a segment boundary is left alone, with no X-Forwarded-Prefix.
    """
    out: Headers = []
    outer: bytes | None = None
    for name, value in block:
        if name == b":path":
            rest = value[len(prefix) :]
            if not value.startswith(prefix) or rest[:1] not in (b"", b"/", b"?", b"#"):
                return block
            value = rest if rest.startswith(b"/") else b"/" + rest
        elif name == b"x-forwarded-prefix":
            if outer is None and value.startswith(b"/"):
                outer = value.rstrip(b"/")
            continue
        out.append((name, value))
    out.append((b"x-forwarded-prefix", (outer or b"") + prefix))
    return out


def _parse_status(value: bytes) -> int:
    """RFC 9113 §8.3.2: three digits; RFC 9110 §15 range; 101 has no meaning in h2 (§8.6)."""
    if len(value) != 3 or not value.isdigit() or not 100 <= int(value) <= 599:
        raise HeaderError(f"invalid :status {shown(value)}")
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
    return status, collapse_content_length(fields)


def clean_trailers(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """Trailers in either direction: no pseudo-headers (RFC 9113 §8.1), no hop-by-hop fields,
    and no framing or routing fields (RFC 9110 §6.5.1): content-length, transfer-encoding, host,
    trailer, te."""
    fields = list(headers)
    for name, _ in fields:
        if name.startswith(b":"):
            raise HeaderError(f"pseudo-header field {shown(name)} in trailers")
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
                raise HeaderError(f"pseudo-header field {shown(name)} after a regular field")
            if name not in _REQUEST_PSEUDO:
                raise HeaderError(f"unknown request pseudo-header field {shown(name)}")
            if name in pseudo:
                raise HeaderError(f"several {shown(name)} pseudo-header fields")
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
    validate_method(method)
    validate_scheme(scheme)
    validate_path(raw_path, method)
    validate_protocol(method, protocol)

    fields = collapse_content_length(strip_hop_by_hop(regular))
    hosts = [value for name, value in fields if name == b"host"]
    authority = pseudo.get(b":authority")
    if authority is None:
        authority = single_host(hosts)
    else:
        validate_authority(authority, ":authority")
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

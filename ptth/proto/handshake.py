"""The ReverseHTTP upgrade (ARCHITECTURE.md, "The handshake"), parsed with h11; no I/O.

The backend sends ``POST /.well-known/ptth`` with ``Upgrade: reverse`` and ``ALPN: h2`` (RFC 7639);
the router answers ``101`` with ``Selected-ALPN: h2`` or refuses with a real HTTP response whose
body is a plain-text reason. After the 101 the roles flip: the router is the HTTP/2 client.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import h11

from ..errors import HandshakeError, HandshakeRefused, HeaderError
from .hostnames import normalize_claim

__all__ = [
    "MAX_HEAD_SIZE",
    "MAX_RETRY_AFTER",
    "WELL_KNOWN_PATH",
    "Accepted",
    "ClientHandshake",
    "Registration",
    "ServerHandshake",
    "WorkerInfo",
]

WELL_KNOWN_PATH = b"/.well-known/ptth"
MAX_HEAD_SIZE = 16 * 1024
MAX_REASON_SIZE = 4 * 1024
# The longest Retry-After the helper honours: a router (or something pretending to be one)
# must not be able to park a backend for hours with one header.
MAX_RETRY_AFTER = 300.0

_SERVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Host names are case-insensitive (RFC 4343): the router lowercases claims before checking them.
_HOST_RE = re.compile(
    r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$",
    re.IGNORECASE,
)
_PREFIX_RE = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]{0,1023}$")
_INSTANCE_RE = re.compile(r"^[\x21-\x7e]{1,128}$")
# A bearer token must fit in "Authorization: Bearer <token>" (RFC 6750 b64token is narrower).
_TOKEN_RE = re.compile(r"^[\x21-\x7e]{1,4096}$")
# A router worker's id (ARCHITECTURE.md, "Several cores"): "<router run id>/<index>".
_WORKER_RE = re.compile(r"^[A-Za-z0-9._-]{1,32}/[0-9]{1,4}$")
MAX_WORKERS = 4096

REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    408: "Request Timeout",
    409: "Conflict",
    421: "Misdirected Request",
    426: "Upgrade Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Registration:
    """What a backend asks for; validated by :meth:`ServerHandshake.receive`."""

    service: str = "default"
    hosts: tuple[str, ...] = ()
    path_prefix: str | None = None
    weight: float = 1.0
    instance: str = ""
    token: str | None = None
    # Ptth-Strip-Prefix: the router removes the matched path prefix from the request path and
    # names it in X-Forwarded-Prefix. Meaningless (so refused) without a path prefix.
    strip_prefix: bool = False

    def validate(self) -> None:
        """Raise :class:`HandshakeError` (status 400) for values the router would refuse."""
        if not _SERVICE_RE.match(self.service):
            raise _bad(f"invalid Ptth-Service {self.service!r}")
        for host in self.hosts:
            if len(host) > 253 or not _HOST_RE.match(host):
                raise _bad(f"invalid host claim {host!r}")
        if self.path_prefix is not None and (
            not _PREFIX_RE.match(self.path_prefix) or "//" in self.path_prefix
        ):
            raise _bad(f"invalid Ptth-Path-Prefix {self.path_prefix!r}")
        if self.strip_prefix and not (self.path_prefix or "").strip("/"):
            raise _bad("Ptth-Strip-Prefix needs a Ptth-Path-Prefix other than /")
        if not (0 < self.weight <= 1000):
            raise _bad(f"Ptth-Weight must be in (0, 1000], got {self.weight!r}")
        if self.instance and not _INSTANCE_RE.match(self.instance):
            raise _bad("invalid Ptth-Instance")
        if self.token is not None and not _TOKEN_RE.match(self.token):
            raise _bad("invalid bearer token (empty, too long, or not visible ASCII)")


@dataclass(frozen=True)
class WorkerInfo:
    """The router worker answering a handshake (ARCHITECTURE.md, "Several cores"): its id
    (``Ptth-Worker``) and how many workers share the router's ports (``Ptth-Workers``)."""

    id: str
    count: int

    def __post_init__(self) -> None:
        if not _WORKER_RE.match(self.id) or not (0 < self.count <= MAX_WORKERS):
            raise ValueError(f"invalid worker {self.id!r} of {self.count!r}")


@dataclass(frozen=True)
class Accepted:
    """The router's 101: the tunnel id, the hosts it granted, and bytes already past the head."""

    tunnel_id: str
    hosts: tuple[str, ...]
    trailing: bytes
    # The router's own cap on concurrent streams per tunnel (Ptth-Max-Streams), if it said.
    max_streams: int | None = None
    # The router worker that holds this tunnel, if the router runs several (Ptth-Worker[s]).
    worker: WorkerInfo | None = None


def _bad(reason: str) -> HandshakeError:
    err = HandshakeError(reason)
    err.status = 400
    return err


def _claims(hosts: list[str]) -> tuple[str, ...]:
    """Claimed hosts in canonical form (case, trailing dot, port, IDNA; ptth.proto.hostnames)."""
    try:
        return tuple(dict.fromkeys(normalize_claim(h) for h in hosts))
    except HeaderError as exc:
        raise _bad(f"invalid host claim: {exc}") from None


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_retry_after(value: str) -> float | None:
    """Retry-After as delta-seconds (RFC 9110, section 10.2.3), capped at MAX_RETRY_AFTER.

    The HTTP-date form and anything else are ignored (None): a helper's clock need not agree
    with the router's, and garbage must not stop it from retrying.
    """
    text = value.strip()
    if not text.isascii() or not text.isdigit():
        return None
    return min(float(int(text[:16])), MAX_RETRY_AFTER)


class ClientHandshake:
    """Backend side: build the upgrade request, then parse the router's answer."""

    def __init__(
        self,
        registration: Registration,
        authority: str,
        *,
        covered: tuple[str, ...] = (),
        target: bytes = WELL_KNOWN_PATH,
    ) -> None:
        """``covered``: router workers the helper already holds enough tunnels to; a worker
        named there answers 421 instead of registering another (``Ptth-Covered-Workers``).
        ``target``: the request's path, for a router whose ``--tunnel-path`` moved it."""
        registration.validate()
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_SIZE)
        self._registration = registration
        self._authority = authority
        self._covered = covered
        self._target = target
        self._refusal: h11.Response | None = None
        self._reason = bytearray()

    def request_bytes(self) -> bytes:
        reg = self._registration
        headers: list[tuple[str, str]] = [
            ("Host", self._authority),
            ("Connection", "Upgrade"),
            ("Upgrade", "reverse"),
            ("ALPN", "h2"),
            ("Content-Length", "0"),
            ("Ptth-Service", reg.service),
            ("Ptth-Weight", format(reg.weight, "g")),
        ]
        if reg.token is not None:
            headers.append(("Authorization", f"Bearer {reg.token}"))
        if reg.hosts:
            headers.append(("Ptth-Hosts", ", ".join(reg.hosts)))
        if reg.path_prefix is not None:
            headers.append(("Ptth-Path-Prefix", reg.path_prefix))
        if reg.strip_prefix:
            headers.append(("Ptth-Strip-Prefix", "1"))
        if reg.instance:
            headers.append(("Ptth-Instance", reg.instance))
        if self._covered:
            headers.append(("Ptth-Covered-Workers", ", ".join(self._covered)))
        data = self._conn.send(h11.Request(method="POST", target=self._target, headers=headers))
        data += self._conn.send(h11.EndOfMessage()) or b""
        return data or b""

    def receive(self, data: bytes) -> Accepted | None:
        """Feed bytes from the router (b"" at EOF); returns the acceptance once complete.

        Raises :class:`HandshakeRefused` for a refusal, :class:`HandshakeError` for nonsense.
        """
        if not data and self._refusal is None:
            # h11 would call a close before any response a protocol error ("can't handle event
            # type ConnectionClosed ..."); to the helper it is a plain, retryable close.
            raise HandshakeError("router closed the connection during the handshake")
        try:
            self._conn.receive_data(data)
            while True:
                event = self._conn.next_event()
                if event is h11.NEED_DATA:
                    if not data:
                        return self._eof()
                    return None
                if isinstance(event, h11.InformationalResponse):
                    if event.status_code == 101:
                        return self._accepted(event)
                    continue  # 100 Continue and friends
                if isinstance(event, h11.Response):
                    self._refusal = event
                elif isinstance(event, h11.Data):
                    if len(self._reason) < MAX_REASON_SIZE:
                        self._reason += event.data[: MAX_REASON_SIZE - len(self._reason)]
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    return self._eof()
                elif event is h11.PAUSED:
                    raise HandshakeError("router paused the handshake unexpectedly")
        except h11.RemoteProtocolError as exc:
            if self._refusal is not None:  # a refusal cut short: its status still stands
                return self._eof()
            raise HandshakeError(f"malformed handshake response from router: {exc}") from exc

    def _eof(self) -> Accepted | None:
        if self._refusal is not None:
            # One line of printable text: the helper logs it, and a router's body must not be
            # able to forge log lines or terminal escapes.
            text = self._reason.decode("utf-8", "replace")
            text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
            reason = text or REASONS.get(self._refusal.status_code, "refused")
            retry_after = None
            for name, value in self._refusal.headers:
                if name.lower() == b"retry-after":
                    retry_after = parse_retry_after(value.decode("latin-1"))
                    break
            raise HandshakeRefused(self._refusal.status_code, reason, retry_after)
        raise HandshakeError("router closed the connection during the handshake")

    def _accepted(self, event: h11.InformationalResponse) -> Accepted:
        fields = {name.lower(): value.decode("latin-1") for name, value in event.headers}
        if fields.get(b"upgrade", "").lower() != "reverse":
            raise HandshakeError("101 without Upgrade: reverse")
        if fields.get(b"selected-alpn", "").strip() != "h2":
            raise HandshakeError("router did not select h2 (Selected-ALPN)")
        tunnel_id = fields.get(b"ptth-tunnel-id", "")
        hosts = tuple(_split_list(fields.get(b"ptth-hosts", "")))
        trailing, _closed = self._conn.trailing_data
        cap = fields.get(b"ptth-max-streams", "").strip()
        # isascii first: str.isdigit() is true for "²", which int() refuses.
        valid = cap.isascii() and cap.isdigit() and 0 < int(cap) < 2**31
        max_streams = int(cap) if valid else None
        return Accepted(
            tunnel_id=tunnel_id,
            hosts=hosts,
            trailing=bytes(trailing),
            max_streams=max_streams,
            worker=_worker_info(fields),
        )


def _worker_info(fields: dict[bytes, str]) -> WorkerInfo | None:
    """Ptth-Worker and Ptth-Workers of a 101; None when absent or invalid (a router of one
    process, or an older one: the tunnel counts as it always did)."""
    worker = fields.get(b"ptth-worker", "").strip()
    count = fields.get(b"ptth-workers", "").strip()
    if not (count.isascii() and count.isdigit() and len(count) <= 5):
        return None
    try:
        return WorkerInfo(worker, int(count))
    except ValueError:
        return None


class ServerHandshake:
    """Router side: parse the upgrade request, then produce the 101 or a refusal.

    ``path`` is the request target the upgrade must name (the front end's is configurable).
    ``worker`` names this process when the router runs several (ARCHITECTURE.md, "Several
    cores"): the 101 and refusals carry it, and a helper that lists it as covered gets 421.
    """

    def __init__(self, *, path: bytes = WELL_KNOWN_PATH, worker: WorkerInfo | None = None) -> None:
        self._path = path
        self._worker = worker
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_SIZE)
        self._request: h11.Request | None = None
        self._received = 0

    def receive(self, data: bytes) -> Registration | None:
        """Feed bytes (b"" at EOF). Returns the registration once the head is complete.

        Raises :class:`HandshakeError` whose ``status`` is the refusal to send (400, 426, 431).
        """
        try:
            self._received += len(data)
            self._conn.receive_data(data)
            while True:
                event = self._conn.next_event()
                if event is h11.NEED_DATA:
                    if not data:
                        raise HandshakeError("peer closed the connection during the handshake")
                    return None
                if isinstance(event, h11.Request):
                    # h11 bounds only an *incomplete* head: a complete one that arrived in a
                    # single read, or whose end came in the last read, may be far larger.
                    head_size = self._received - len(self._conn.trailing_data[0])
                    if head_size > MAX_HEAD_SIZE:
                        err = HandshakeError(
                            f"handshake head of {head_size} bytes is over {MAX_HEAD_SIZE}"
                        )
                        err.status = 431
                        raise err
                    self._request = event
                    continue
                if isinstance(event, h11.EndOfMessage) and self._request is not None:
                    return self._registration(self._request)
                if isinstance(event, h11.Data):
                    raise _bad("the upgrade request must have no body")
                if isinstance(event, h11.ConnectionClosed):
                    raise HandshakeError("peer closed the connection during the handshake")
                raise _bad("unexpected handshake event")
        except h11.RemoteProtocolError as exc:
            err = HandshakeError(f"malformed handshake: {exc}")
            err.status = 431 if exc.error_status_hint == 431 else 400
            raise err from exc

    @property
    def trailing(self) -> bytes:
        """Bytes received after the head (the backend must wait for the 101, so usually none)."""
        return bytes(self._conn.trailing_data[0])

    def _registration(self, request: h11.Request) -> Registration:
        fields: dict[bytes, list[str]] = {}
        for name, value in request.headers:
            fields.setdefault(name.lower(), []).append(value.decode("latin-1"))

        def one(name: bytes) -> str | None:
            values = fields.get(name)
            if values is None:
                return None
            if len(values) > 1:
                raise _bad(f"{name.decode()} given more than once")
            return values[0].strip()

        upgrade = [t.lower() for v in fields.get(b"upgrade", []) for t in _split_list(v)]
        connection = [t.lower() for v in fields.get(b"connection", []) for t in _split_list(v)]
        if "reverse" not in upgrade or "upgrade" not in connection:
            err = HandshakeError("this port only speaks the ReverseHTTP upgrade (Upgrade: reverse)")
            err.status = 426
            raise err
        if request.method != b"POST" or request.target != self._path:
            raise _bad(f"expected POST {self._path.decode('latin-1')}")
        alpn = [t.lower() for v in fields.get(b"alpn", []) for t in _split_list(v)]
        if "h2" not in alpn:
            raise _bad("ALPN must offer h2")
        token: str | None = None
        authorization = one(b"authorization")
        if authorization is not None:
            scheme, _, credentials = authorization.partition(" ")
            if scheme.lower() != "bearer" or not credentials.strip():
                raise _bad("Authorization must be a Bearer token")
            token = credentials.strip()
        weight_text = one(b"ptth-weight") or "1"
        try:
            weight = float(weight_text)
        except ValueError:
            raise _bad(f"invalid Ptth-Weight {weight_text!r}") from None
        hosts_text = ",".join(fields.get(b"ptth-hosts", []))
        strip_text = one(b"ptth-strip-prefix")
        if strip_text not in (None, "0", "1"):
            raise _bad(f"Ptth-Strip-Prefix must be 0 or 1, got {strip_text!r}")
        registration = Registration(
            service=one(b"ptth-service") or "default",
            hosts=_claims(_split_list(hosts_text)),
            path_prefix=one(b"ptth-path-prefix") or None,
            weight=weight,
            instance=one(b"ptth-instance") or "",
            token=token,
            strip_prefix=strip_text == "1",
        )
        registration.validate()
        worker = self._worker
        if worker is not None:
            covered = ",".join(fields.get(b"ptth-covered-workers", []))
            if worker.id in _split_list(covered):
                # Before authentication on purpose: it registers nothing and reveals only the
                # worker's id, which any 101 carries. The helper dials again (another worker).
                raise HandshakeRefused(421, f"worker {worker.id} is already covered")
        return registration

    def _worker_headers(self) -> list[tuple[str, str]]:
        worker = self._worker
        if worker is None:
            return []
        return [("Ptth-Worker", worker.id), ("Ptth-Workers", str(worker.count))]

    def accept(
        self, tunnel_id: str, hosts: tuple[str, ...], *, max_streams: int | None = None
    ) -> bytes:
        headers = [
            ("Connection", "Upgrade"),
            ("Upgrade", "reverse"),
            ("Selected-ALPN", "h2"),
            ("Ptth-Tunnel-Id", tunnel_id),
        ]
        if hosts:
            headers.append(("Ptth-Hosts", ", ".join(hosts)))
        if max_streams is not None:
            # Lets the helper open more tunnels before this one fills (ARCHITECTURE.md).
            headers.append(("Ptth-Max-Streams", str(max_streams)))
        headers += self._worker_headers()
        return self._conn.send(h11.InformationalResponse(status_code=101, headers=headers)) or b""

    def refuse(self, status: int, reason: str, *, retry_after: float | None = None) -> bytes:
        """A complete refusal response; the caller closes the connection after sending it.

        ``retry_after`` (seconds) becomes a Retry-After in whole seconds, rounded up.
        """
        body = (reason.strip() + "\n").encode("utf-8")
        headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
        if status == 401:
            headers.append(("WWW-Authenticate", 'Bearer realm="ptth"'))
        if status == 426:
            headers.append(("Upgrade", "reverse"))
        if retry_after is not None and math.isfinite(retry_after):
            headers.append(("Retry-After", str(max(0, math.ceil(retry_after)))))
        headers += self._worker_headers()
        response = h11.Response(
            status_code=status, headers=headers, reason=REASONS.get(status, "Error").encode()
        )
        # The head may have been unparseable; a fresh connection object can always answer. So
        # must a HEAD request: h11 would refuse the reason's body (RFC 9110, section 9.3.2).
        request = self._request
        conn = self._conn if request is not None and request.method != b"HEAD" else None
        if conn is None or conn.our_state is not h11.SEND_RESPONSE:
            conn = h11.Connection(h11.SERVER)
            conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            conn.next_event()
        out = conn.send(response) or b""
        out += conn.send(h11.Data(data=body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        return out

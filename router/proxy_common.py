"""What the two proxies (:mod:`router.proxy_http`, :mod:`router.proxy_ws`) share.

Both take the same steps around their protocol-specific part: shed load before any work
(:meth:`ProxyContext.admitted`), route the request to a service (:meth:`ProxyContext.route`),
acquire a tunnel from the registry, open one stream on it (:func:`tunnel_stream`) with the request
block that tunnel asked for (:func:`block_for`), and relay the backend's response body under the
same idle timeout (:func:`next_response_chunk`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import trio
from h2.errors import ErrorCodes

from ptth.driver import Stream
from ptth.errors import (
    BadGateway,
    HeaderError,
    NoRoute,
    Overloaded,
    ProxyError,
    PTTHError,
    RateLimited,
    StreamReset,
    TunnelError,
)
from ptth.groups import unwrap
from ptth.proto.fields import Headers
from ptth.proto.headers import strip_path_prefix

from .config import RouterConfig
from .frontend.exchange import UserRequest
from .outlier import SUCCESS, StreamOutcome, outcome_of
from .ratelimit import RateLimiter
from .registry import Registry, RouterTunnel
from .routing import Route

__all__ = [
    "MAX_ATTEMPTS",
    "ClientGone",
    "Finished",
    "Observer",
    "ProxyContext",
    "Slot",
    "bad_request",
    "block_for",
    "forwarded_element",
    "next_response_chunk",
    "released",
    "tunnel_stream",
]

MAX_ATTEMPTS = 3  # tunnels tried for one request when a backend refuses its stream


class ClientGone(Exception):
    """The user disconnected (or stopped taking the response); nothing more to send."""


@dataclass(slots=True)
class Finished:
    """One request or WebSocket session as it ended, handed to the :class:`Observer` once
    (ARCHITECTURE.md, "Operations: the admin listener"). Times are ``time.monotonic()``;
    ``headers_at`` is 0.0 when no response head reached the user."""

    request: UserRequest
    kind: str  # "http" or "websocket"
    service: str
    tunnel_id: str
    instance: str
    status: int
    started: float
    headers_at: float
    ended: float
    bytes_in: int
    bytes_out: int
    response_headers: Headers
    request_body: bytes | None = None  # only when the observer asked for bodies
    response_body: bytes | None = None


class Observer(Protocol):
    """Who counts finished requests (the admin listener); called once per request, no I/O."""

    body_limit: int  # bytes of each body to keep in :class:`Finished`; 0: none

    def finished(self, done: Finished) -> None: ...


@dataclass
class ProxyContext:
    config: RouterConfig
    registry: Registry
    trusted_proxies: frozenset[str] = field(default_factory=frozenset)
    in_flight: int = 0
    limiter: RateLimiter | None = None
    per_client: Counter[str] = field(default_factory=Counter)
    observer: Observer | None = None
    websockets: int = 0  # WebSocket sessions on a tunnel now (handshake included)

    def __post_init__(self) -> None:
        if self.limiter is None and self.config.rate_limit > 0:
            self.limiter = RateLimiter(self.config.rate_limit, self.config.rate_burst)

    def admit(self, client: str) -> None:
        """Shed load before any work (ARCHITECTURE.md, attack 22 and the 429 of "Error mapping")."""
        if self.in_flight >= self.config.max_in_flight:
            raise Overloaded(f"router is at its limit of {self.config.max_in_flight} requests")
        cap = self.config.max_in_flight_per_client
        if cap and self.per_client[client] >= cap:
            raise Overloaded(f"this address is at its limit of {cap} requests in flight")
        if self.limiter is not None:
            wait = self.limiter.acquire(client, trio.current_time())
            if wait > 0:
                raise RateLimited("too many requests from this address", wait)

    @contextmanager
    def admitted(self, client: str) -> Iterator[None]:
        """:meth:`admit`, then count the request as in flight until the block ends."""
        self.admit(client)
        self.in_flight += 1
        self.per_client[client] += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            left = self.per_client[client] - 1
            if left:
                self.per_client[client] = left
            else:
                del self.per_client[client]

    def route(self, host: str, path: bytes) -> Route:
        """The service, matched path prefix and claim for this request; 400 for a malformed
        Host, 404 when nothing matches."""
        try:
            found = self.registry.route(host, path.decode("latin-1"))
        except HeaderError as exc:
            raise bad_request(str(exc)) from None
        if found is None:
            raise NoRoute(f"no service for host {host or '(none)'}")
        return found


def block_for(tunnel: RouterTunnel, headers: Headers, prefix: str | None) -> Headers:
    """The request block as ``tunnel`` wants it: a tunnel registered with Ptth-Strip-Prefix gets
    the matched ``prefix`` cut from ``:path`` and named in X-Forwarded-Prefix. Decided per tunnel
    (each sees what it asked for, e.g. while a rolling deploy turns stripping on)."""
    if prefix is None or not tunnel.registration.strip_prefix:
        return headers
    return strip_path_prefix(headers, prefix.encode("ascii"))


def bad_request(message: str) -> ProxyError:
    error = ProxyError(message)
    error.status = 400
    return error


def _node(address: tuple[str, int]) -> bytes:
    host, port = address
    if ":" in host:
        host = f"[{host}]"
    return f'"{host}:{port}"'.encode("ascii", "replace")


def forwarded_element(request: UserRequest, authority: bytes) -> bytes:
    """This hop's RFC 7239 Forwarded element: the user's address and port, the router's, the
    scheme and host, plus the user's HTTP version (an extension parameter, RFC 7239 §5.5), from
    which the helper builds the ASGI scope's ``client``, ``server`` and ``http_version``."""
    host = authority.replace(b"\\", b"").replace(b'"', b"")
    return b'for=%s;by=%s;proto=%s;host="%s";version=%s' % (
        _node(request.client),
        _node(request.server),
        request.scheme,
        host,
        request.http_version.encode("ascii"),
    )


class Slot:
    """A tunnel slot in use (see :func:`released`)."""

    def __init__(self) -> None:
        self.failure: StreamOutcome | None = None


@contextmanager
def released(registry: Registry, tunnel: RouterTunnel) -> Iterator[Slot]:
    """Release ``tunnel``'s slot after the block, reporting the stream's outcome once for passive
    health (ARCHITECTURE.md, "Passive health"): the error the block ended with decides
    (:func:`~router.outlier.outcome_of`), none is a success. A failure the block handled itself
    (a WebSocket whose tunnel was lost after the accept) is set as ``slot.failure``."""
    slot = Slot()
    try:
        yield slot
    except BaseException as exc:
        registry.release(tunnel, outcome_of(exc))
        raise
    registry.release(tunnel, slot.failure or SUCCESS)


@asynccontextmanager
async def tunnel_stream(
    tunnel: RouterTunnel, headers: Headers, *, end_stream: bool = False
) -> AsyncIterator[Stream]:
    """One stream on ``tunnel`` for the block's exchange, closed (reset if unfinished) after it.

    A stream that cannot be opened counts as refused (RFC 9113 §8.7: never processed, so it may
    be tried on another tunnel). The error a nursery in the block ended with comes out unwrapped.
    """
    try:
        stream = await tunnel.connection.open_stream(headers, end_stream=end_stream)
    except TunnelError as exc:
        raise StreamReset(ErrorCodes.REFUSED_STREAM, refused=True) from exc
    try:
        yield stream
    except BaseExceptionGroup as group:
        raise unwrap(group, PTTHError) from None
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def next_response_chunk(stream: Stream, idle: float) -> bytes:
    """The next chunk of the backend's response body (b"" at its end); 502 after ``idle`` s."""
    with trio.move_on_after(idle):
        return await stream.receive_data()
    raise BadGateway(f"response body idle for {idle:g} s")

"""What the two proxies (:mod:`router.proxy_http`, :mod:`router.proxy_ws`) share.

Both take the same steps around their protocol-specific part: shed load before any work
(:meth:`ProxyContext.admitted`), route the request to a service (:meth:`ProxyContext.route`),
acquire a tunnel from the registry, open one stream on it (:func:`tunnel_stream`) with the request
block that tunnel asked for (:func:`block_for`), and relay the backend's response body under the
same idle timeout (:func:`next_response_chunk`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

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
from ptth.types import Scope

from .config import RouterConfig
from .ratelimit import RateLimiter
from .registry import Registry, RouterTunnel

__all__ = [
    "MAX_ATTEMPTS",
    "ClientGone",
    "ProxyContext",
    "bad_request",
    "block_for",
    "client_host",
    "next_response_chunk",
    "request_target",
    "tunnel_stream",
]

MAX_ATTEMPTS = 3  # tunnels tried for one request when a backend refuses its stream


class ClientGone(Exception):
    """The user disconnected (or stopped taking the response); nothing more to send."""


@dataclass
class ProxyContext:
    config: RouterConfig
    registry: Registry
    trusted_proxies: frozenset[str] = field(default_factory=frozenset)
    in_flight: int = 0
    limiter: RateLimiter | None = None

    def __post_init__(self) -> None:
        if self.limiter is None and self.config.rate_limit > 0:
            self.limiter = RateLimiter(self.config.rate_limit, self.config.rate_burst)

    def admit(self, scope: Scope) -> None:
        """Shed load before any work (ARCHITECTURE.md, attack 22 and the 429 of "Error mapping")."""
        if self.in_flight >= self.config.max_in_flight:
            raise Overloaded(f"router is at its limit of {self.config.max_in_flight} requests")
        if self.limiter is not None:
            client = scope.get("client")
            wait = self.limiter.acquire(client[0] if client else "-", trio.current_time())
            if wait > 0:
                raise RateLimited("too many requests from this address", wait)

    @contextmanager
    def admitted(self, scope: Scope) -> Iterator[None]:
        """:meth:`admit`, then count the request as in flight until the block ends."""
        self.admit(scope)
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def route(self, host: str, path: bytes) -> tuple[str, str | None]:
        """The service for this request and the path prefix that matched it (``None``: none);
        400 for a malformed Host, 404 when nothing matches."""
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


def client_host(scope: Scope) -> str | None:
    """The user's address as hypercorn saw it (the peer of the front-end connection)."""
    client = scope.get("client")
    return client[0] if client else None


def request_target(scope: Scope) -> tuple[str, bytes]:
    """The Host value and the raw path with its query, as the request carried them."""
    host = ""
    for name, value in scope["headers"]:
        if name == b"host":
            host = value.decode("latin-1")
            break
    path = scope.get("raw_path") or scope["path"].encode()
    if scope.get("query_string"):
        path = path + b"?" + scope["query_string"]
    return host, path


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

"""One user request as the proxy sees it, whichever protocol carried it (ARCHITECTURE.md,
"The front end").

The front end parses the request (HTTP/1.1 on h11, HTTP/2 on the engine) and hands the proxy an
:class:`Exchange`: the request head, a pull-based body, and a response sink that can say what a
proxy must say and an ASGI server cannot: 1xx responses, request trailers, trailers on the way
back, and a true abort (HTTP/1.1: the connection closes before the declared end; HTTP/2:
RST_STREAM). Body bytes are read only when the proxy asks, so the user's TCP window (HTTP/1.1)
or stream window (HTTP/2) is the backpressure, end to end.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from ptth.proto.fields import Headers

__all__ = ["Exchange", "UserRequest", "offered_subprotocols"]


def offered_subprotocols(headers: Headers) -> list[str]:
    """The WebSocket subprotocols the user offered, in order (RFC 6455 §4.1)."""
    return [
        part.strip().decode("latin-1")
        for name, value in headers
        if name == b"sec-websocket-protocol"
        for part in value.split(b",")
        if part.strip()
    ]


@dataclass
class UserRequest:
    """The request head as received, before any proxy rule ran.

    ``target`` is the origin-form path and query (an absolute-form target has been reduced to it,
    its authority put in ``authority``); ``headers`` are the regular fields with lower-case names,
    in order, ``host`` included for HTTP/1.1 (for HTTP/2 ``:authority`` is ``authority``).
    ``protocol`` is ``b"websocket"`` for a WebSocket handshake (HTTP/1.1 Upgrade or RFC 8441).
    """

    method: bytes
    target: bytes
    scheme: bytes
    authority: bytes | None
    headers: Headers
    http_version: str
    client: tuple[str, int]
    server: tuple[str, int]
    protocol: bytes | None = None
    has_body: bool = True
    subprotocols: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        if self.authority is not None:
            return self.authority.decode("latin-1")
        for name, value in self.headers:
            if name == b"host":
                return value.decode("latin-1")
        return ""


class Exchange(ABC):
    """A request in progress and the one response it will get."""

    request: UserRequest
    trailers: Headers | None = None  # the request's trailers, once its body ended with some
    response_started = False

    @property
    @abstractmethod
    def can_send_trailers(self) -> bool:
        """Response trailers reach this user (HTTP/2, or HTTP/1.1 chunked with ``TE: trailers``)."""

    @abstractmethod
    async def receive(self) -> tuple[bytes, bool]:
        """The next piece of the request body and whether more follows; raises ``ClientGone``
        when the user left or broke the framing (the connection is then closed)."""

    @abstractmethod
    async def wait_gone(self) -> None:
        """Return when the user has left (connection closed, stream reset); else never."""

    @abstractmethod
    async def informational(self, status: int, headers: Headers) -> None:
        """A 1xx response before the final one (103 Early Hints); dropped where not allowed."""

    @abstractmethod
    async def start(
        self, status: int, headers: Headers, *, end: bool = False, trailers: bool = False
    ) -> None:
        """The final response head; ``end`` when there is no body, ``trailers`` when trailers
        will end it. Buffered until the first body bytes (one write for a small response)
        unless :meth:`flush` is called."""

    @abstractmethod
    async def send(self, data: bytes, *, end: bool = False) -> None:
        """Response body bytes; returns once the user's connection took them (backpressure)."""

    @abstractmethod
    async def flush(self) -> None:
        """Write a buffered response head now (a stream whose first bytes may be late: SSE)."""

    @abstractmethod
    async def send_trailers(self, headers: Headers) -> None:
        """End the response with trailers (only when :attr:`can_send_trailers`)."""

    @abstractmethod
    def abort(self) -> None:
        """End the response so the user sees it incomplete, never as a clean short body."""

    # -- WebSockets --------------------------------------------------------------------------

    def carries_tunnel(self) -> None:  # noqa: B027 (a hook; most protocols need nothing)
        """The exchange now carries a backend's tunnel (a WebSocket tunnel): its connection no
        longer counts as a user's for the caps, and the router's drain closes it with the
        tunnels, not before them (ARCHITECTURE.md, "Transports")."""

    @abstractmethod
    async def accept_websocket(self, subprotocol: str | None, headers: Headers) -> None:
        """Accept the user's WebSocket: 101 (HTTP/1.1) or 200 (RFC 8441). Afterwards
        :meth:`receive` and :meth:`send` carry raw WebSocket frames."""

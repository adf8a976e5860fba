"""Forward one ASGI ``http`` request onto a tunnel stream and relay the response back.

The request body and the response body both stream: a chunk is read from one side only after
the previous one was handed to the other, and tunnel DATA is acknowledged (window reopened) only
when the user's connection took it. Failures map to statuses once, in :func:`forward`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from email.utils import formatdate

import trio
from h2.errors import ErrorCodes

from ptth._groups import unwrap
from ptth._headers import clean_trailers, from_tunnel_response, to_tunnel_request
from ptth._stream import TunnelStream
from ptth._types import Message, Receive, Scope, Send
from ptth.errors import (
    BadGateway,
    BodyTooLarge,
    HeaderError,
    NoRoute,
    Overloaded,
    ProxyError,
    PTTHError,
    RateLimited,
    RequestTimeout,
    ResponseTimeout,
    StreamReset,
    TunnelError,
)

from .config import RouterConfig
from .ratelimit import RateLimiter
from .registry import Registry, RouterTunnel

__all__ = ["ProxyContext", "forward"]

log = logging.getLogger("router.access")

MAX_ATTEMPTS = 3
REPLAY_LIMIT = 64 * 1024  # body bytes kept so a refused stream can be replayed elsewhere


class ClientGone(Exception):
    """The user disconnected; nothing more to send."""


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
        """Shed load before any work (RELIABILITY.md rows 22 and the 429 of DESIGN.md)."""
        if self.in_flight >= self.config.max_in_flight:
            raise Overloaded(f"router is at its limit of {self.config.max_in_flight} requests")
        if self.limiter is not None:
            client = scope.get("client")
            wait = self.limiter.acquire(client[0] if client else "-", trio.current_time())
            if wait > 0:
                raise RateLimited("too many requests from this address", wait)


class _Body:
    """The request body as read from ASGI ``receive``; keeps a replay copy while it is small."""

    def __init__(self, receive: Receive, limit: int, idle_timeout: float) -> None:
        self._receive = receive
        self.limit = limit
        self.idle_timeout = idle_timeout
        self.replay: list[bytes] | None = []
        self.replay_size = 0
        self.total = 0
        self.complete = False
        self.disconnected = False

    async def next_chunk(self) -> bytes | None:
        """The next body chunk, or None at the end; raises ClientGone on disconnect."""
        if self.complete:
            return None
        # A body that stalls (slowloris/RUDY, RELIABILITY.md row 12) must not pin a stream.
        with trio.move_on_after(self.idle_timeout):
            message: Message = await self._receive()
            return self._take(message)
        raise RequestTimeout(f"request body stalled for {self.idle_timeout:g} s")

    def _take(self, message: Message) -> bytes | None:
        if message["type"] == "http.disconnect":
            self.disconnected = True
            raise ClientGone()
        chunk = bytes(message.get("body", b""))
        self.total += len(chunk)
        if self.limit and self.total > self.limit:
            raise BodyTooLarge(f"request body over {self.limit} bytes")
        if not message.get("more_body", False):
            self.complete = True
        if self.replay is not None:
            self.replay.append(chunk)
            self.replay_size += len(chunk)
            if self.replay_size > REPLAY_LIMIT:
                self.replay = None
        return chunk

    async def wait_disconnect(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                return


def _error_response(error: ProxyError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = f"{error}\n".encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"date", formatdate(usegmt=True).encode()),
    ]
    if error.retry_after is not None:
        headers.append((b"retry-after", str(error.retry_after).encode()))
    return error.status, headers, body


async def _send_error(send: Send, error: ProxyError) -> None:
    status, headers, body = _error_response(error)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


@dataclass
class _Outcome:
    status: int = 0
    sent: int = 0
    tunnel_id: str = "-"


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


async def forward(ctx: ProxyContext, scope: Scope, receive: Receive, send: Send) -> None:
    """Proxy one request; every failure becomes the status DESIGN.md's table names."""
    started = time.monotonic()
    outcome = _Outcome()
    host, path = request_target(scope)
    try:
        ctx.admit(scope)
        ctx.in_flight += 1
        try:
            await _forward(ctx, scope, receive, send, host, path, outcome)
        finally:
            ctx.in_flight -= 1
    except ClientGone:
        outcome.status = outcome.status or 499
    except ProxyError as error:
        if outcome.status:  # the response had started: abort the user's connection/stream
            raise
        outcome.status = error.status
        await _send_error(send, error)
    finally:
        if ctx.config.access_log:
            log.info(
                "%s %s %s %s %d %d %.1fms tunnel=%s",
                scope.get("client", ("-",))[0] if scope.get("client") else "-",
                scope["method"],
                host or "-",
                path.decode("latin-1"),
                outcome.status,
                outcome.sent,
                (time.monotonic() - started) * 1000,
                outcome.tunnel_id,
            )


async def _forward(
    ctx: ProxyContext,
    scope: Scope,
    receive: Receive,
    send: Send,
    host: str,
    path: bytes,
    outcome: _Outcome,
) -> None:
    try:
        service = ctx.registry.match(host, path.decode("latin-1"))
    except HeaderError as exc:
        raise _status(400, str(exc)) from None
    if service is None:
        raise NoRoute(f"no service for host {host or '(none)'}")
    client = scope.get("client")
    client_addr = client[0] if client else None
    try:
        headers = to_tunnel_request(
            method=scope["method"].encode(),
            path=path,
            scheme=scope.get("scheme", "http").encode(),
            headers=scope["headers"],
            client_addr=client_addr,
            trusted_proxy=client_addr in ctx.trusted_proxies,
        )
    except HeaderError as exc:
        raise _status(400, str(exc)) from None
    declared = _declared_length(headers)
    limit = ctx.config.max_body
    if limit and declared is not None and declared > limit:
        raise BodyTooLarge(f"request body of {declared} bytes is over the {limit}-byte limit")
    no_body = declared == 0 or (
        declared is None
        and not any(n == b"transfer-encoding" for n, _ in scope["headers"])
        and scope.get("http_version") == "1.1"
    )
    body = _Body(receive, limit, ctx.config.request_body_timeout)
    tried: set[str] = set()
    for attempt in range(MAX_ATTEMPTS):
        tunnel = await ctx.registry.acquire(service, exclude=tried)
        outcome.tunnel_id = tunnel.tunnel_id
        try:
            await _exchange(ctx, tunnel, headers, body, no_body, scope, send, outcome)
            return
        except StreamReset as exc:
            retry = exc.refused and not outcome.status and body.replay is not None
            if not retry or attempt == MAX_ATTEMPTS - 1:
                raise BadGateway(f"backend reset the stream (code {exc.error_code})") from None
            tried.add(tunnel.tunnel_id)
            log.info("tunnel %s refused the stream; retrying elsewhere", tunnel.tunnel_id)
        finally:
            ctx.registry.release(tunnel)


def _status(status: int, message: str) -> ProxyError:
    error = ProxyError(message)
    error.status = status
    return error


def _declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value)
    return None


async def _exchange(
    ctx: ProxyContext,
    tunnel: RouterTunnel,
    headers: list[tuple[bytes, bytes]],
    body: _Body,
    no_body: bool,
    scope: Scope,
    send: Send,
    outcome: _Outcome,
) -> None:
    cfg = ctx.config
    end_now = no_body and not body.replay_size
    try:
        stream = await tunnel.connection.open_stream(headers, end_stream=end_now)
    except TunnelError as exc:
        raise StreamReset(ErrorCodes.REFUSED_STREAM, refused=True) from exc
    try:
        try:
            await _run_exchange(cfg, stream, body, end_now, scope, send, outcome)
        except BaseExceptionGroup as group:
            raise unwrap(group, PTTHError) from None
        if body.disconnected:
            raise ClientGone()
    except StreamReset:
        raise
    except TunnelError as exc:
        if outcome.status:
            raise BadGateway("tunnel lost mid-response") from exc
        raise BadGateway(f"tunnel lost before the response: {exc}") from exc
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def _run_exchange(
    cfg: RouterConfig,
    stream: TunnelStream,
    body: _Body,
    end_now: bool,
    scope: Scope,
    send: Send,
    outcome: _Outcome,
) -> None:
    """Pump the request body and relay the response concurrently (a user gone cancels both)."""
    async with trio.open_nursery() as nursery:
        if end_now:
            nursery.start_soon(_watch_disconnect, body, nursery.cancel_scope)
        else:
            nursery.start_soon(_pump_request, body, stream, nursery.cancel_scope)
        with trio.move_on_after(cfg.response_timeout) as waiting:
            response_headers = await stream.receive_headers()
        if waiting.cancelled_caught:
            raise ResponseTimeout(f"no response headers within {cfg.response_timeout:g} s")
        try:
            status, response_fields = from_tunnel_response(response_headers)
        except HeaderError as exc:
            raise BadGateway(f"backend sent an invalid response: {exc}") from None
        await _relay_response(cfg, stream, status, response_fields, scope, send, outcome)
        nursery.cancel_scope.cancel()


async def _watch_disconnect(body: _Body, scope: trio.CancelScope) -> None:
    await body.wait_disconnect()
    scope.cancel()  # the user went away: stop waiting, the stream is reset on the way out


async def _pump_request(body: _Body, stream: TunnelStream, scope: trio.CancelScope) -> None:
    try:
        if body.replay:
            chunks = list(body.replay)
            for i, chunk in enumerate(chunks):
                last = body.complete and i == len(chunks) - 1
                await stream.send_data(chunk, end_stream=last)
            if body.complete:
                await body.wait_disconnect()
                scope.cancel()
                return
        while True:
            next_chunk = await body.next_chunk()
            if next_chunk is None:
                break
            await stream.send_data(next_chunk, end_stream=body.complete)
            if body.complete:
                break
        await stream.end()
        await body.wait_disconnect()
    except ClientGone:
        pass
    except TunnelError:
        return  # the response side reports the stream's failure
    scope.cancel()


async def _relay_response(
    cfg: RouterConfig,
    stream: TunnelStream,
    status: int,
    fields: list[tuple[bytes, bytes]],
    scope: Scope,
    send: Send,
    outcome: _Outcome,
) -> None:
    wants_trailers = "http.response.trailers" in scope.get("extensions", {}) and any(
        n == b"te" and b"trailers" in v for n, v in scope["headers"]
    )
    late: list[tuple[bytes, bytes]] = []
    if wants_trailers and _grpc_trailers_only(stream, fields):
        fields, late = _split_trailers_only(fields)
    if not any(name == b"date" for name, _ in fields):
        fields = [*fields, (b"date", formatdate(usegmt=True).encode())]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": fields,
            "trailers": wants_trailers,
        }
    )
    outcome.status = status
    idle = cfg.response_idle_timeout
    while True:
        with trio.move_on_after(idle) as waiting:
            chunk = await stream.receive_data()
        if waiting.cancelled_caught:
            raise BadGateway(f"response body idle for {idle:g} s")
        if not chunk:
            break
        outcome.sent += len(chunk)
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    if wants_trailers:
        trailers = clean_trailers(stream.trailers or late)
        await send({"type": "http.response.trailers", "headers": trailers, "more_trailers": False})


def _grpc_trailers_only(stream: TunnelStream, fields: list[tuple[bytes, bytes]]) -> bool:
    """A gRPC "Trailers-Only" response: one HEADERS frame that also ended the stream."""
    ended = stream.received_end and stream.buffered == 0 and stream.trailers is None
    return ended and any(
        n == b"content-type" and v.startswith(b"application/grpc") for n, v in fields
    )


def _split_trailers_only(
    fields: list[tuple[bytes, bytes]],
) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    """Headers (content-type) and trailers (the rest) for a gRPC Trailers-Only response.

    gRPC (PROTOCOL-HTTP2.md) lets an error be a single HEADERS frame with END_STREAM carrying
    grpc-status. ASGI cannot end a response on its header block (hypercorn always follows it with
    a DATA frame), and a gRPC client that sees the stream end on DATA with no trailers reports
    UNKNOWN. The same fields sent as headers plus trailers mean the same thing to gRPC: custom
    metadata of a Trailers-Only response is trailing metadata.
    """
    head = [(n, v) for n, v in fields if n == b"content-type"]
    rest = [(n, v) for n, v in fields if n not in (b"content-type", b"content-length")]
    return head, rest

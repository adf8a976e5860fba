"""Forward one user request onto a tunnel stream and relay the response back.

The request body and the response body both stream: a chunk is read from one side only after
the previous one was handed to the other, and tunnel DATA is acknowledged (window reopened) only
when the user's connection took it. Failures map to statuses once, in :func:`forward`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from email.utils import formatdate

import trio

from ptth.driver import Stream
from ptth.errors import (
    BadGateway,
    BodyTooLarge,
    HeaderError,
    ProxyError,
    PTTHError,
    ResponseTimeout,
    StreamReset,
    TunnelError,
)
from ptth.groups import unwrap
from ptth.logs import tunnel_fields
from ptth.proto.fields import declared_length
from ptth.proto.headers import clean_trailers, from_tunnel_response, to_tunnel_request

from . import access_log
from .config import RouterConfig
from .frontend.exchange import Exchange, UserRequest
from .frontend.http1 import ClientGoneError
from .proxy_common import (
    MAX_ATTEMPTS,
    ClientGone,
    Finished,
    ProxyContext,
    bad_request,
    block_for,
    forwarded_element,
    next_response_chunk,
    released,
    tunnel_stream,
)
from .registry import RouterTunnel
from .request_body import RequestBody, pump_request, watch_disconnect, watch_until_stream
from .responses import error_response, is_grpc_trailers_only, split_trailers_only
from .routing import Route

__all__ = ["forward"]

log = logging.getLogger("router.access")

# Seconds a request without a body waits for its whole response before a watcher for the user
# leaving is started (see _run_exchange).
QUICK_RESPONSE = 0.05


async def _send_error(exchange: Exchange, error: ProxyError) -> None:
    status, headers, body = error_response(error, date=formatdate(usegmt=True).encode())
    await exchange.start(status, headers)
    await exchange.send(body, end=True)


@dataclass
class _Outcome:
    status: int = 0
    sent: int = 0
    tunnel_id: str = "-"
    # What the admin listener's observer gets (ARCHITECTURE.md, "Operations: the admin listener").
    service: str = "-"
    instance: str = "-"
    headers_at: float = 0.0
    response_headers: list[tuple[bytes, bytes]] | None = None
    body: RequestBody | None = None
    response_body: bytearray | None = None  # kept up to body_limit (--inspect-bodies)
    body_limit: int = 0


async def forward(ctx: ProxyContext, exchange: Exchange) -> None:
    """Proxy one request; each failure becomes a status of ARCHITECTURE.md, "Error mapping"."""
    started = time.monotonic()
    outcome = _Outcome()
    if ctx.observer is not None and ctx.observer.body_limit:
        outcome.body_limit = ctx.observer.body_limit
        outcome.response_body = bytearray()
    request = exchange.request
    host = request.host
    try:
        with ctx.admitted(request.client[0]):
            await _forward(ctx, exchange, host, outcome)
    except (ClientGone, ClientGoneError):
        outcome.status = outcome.status or 499
    except ProxyError as error:
        if outcome.status:  # the response had started: abort the user's connection/stream
            log.info("response aborted: %s", error)
            exchange.abort()
        else:
            outcome.status = error.status
            try:
                await _send_error(exchange, error)
            except ClientGoneError:
                pass
    finally:
        if ctx.observer is not None:
            _observe(ctx, request, outcome, started)
        if access_log.enabled(ctx.config):
            access_log.write(
                kind="http",
                client=request.client[0],
                method=request.method.decode("latin-1"),
                host=host or "-",
                path=request.target.decode("latin-1"),
                status=outcome.status,
                bytes_in=0 if outcome.body is None else outcome.body.total,
                bytes_out=outcome.sent,
                duration_ms=(time.monotonic() - started) * 1000,
                tunnel_id=outcome.tunnel_id,
                instance=outcome.instance,
                service=outcome.service,
            )


def _observe(ctx: ProxyContext, request: UserRequest, outcome: _Outcome, started: float) -> None:
    """Hand the finished request to the observer: one call, no I/O."""
    assert ctx.observer is not None
    body = outcome.body
    limit = ctx.observer.body_limit
    request_body = None
    if limit and body is not None:
        # The replay copy holds the body while it is small (REPLAY_LIMIT); past that it is gone.
        request_body = b"".join(body.replay)[:limit] if body.replay is not None else None
    ctx.observer.finished(
        Finished(
            request=request,
            kind="http",
            service=outcome.service,
            tunnel_id=outcome.tunnel_id,
            instance=outcome.instance,
            status=outcome.status,
            started=started,
            headers_at=outcome.headers_at,
            ended=time.monotonic(),
            bytes_in=0 if body is None else body.total,
            bytes_out=outcome.sent,
            response_headers=outcome.response_headers or [],
            request_body=request_body,
            response_body=None if outcome.response_body is None else bytes(outcome.response_body),
        )
    )


async def _forward(ctx: ProxyContext, exchange: Exchange, host: str, outcome: _Outcome) -> None:
    request = exchange.request
    if request.method == b"TRACE":
        error = ProxyError("TRACE is not allowed through this router")
        error.status = 405
        raise error
    route = ctx.route(host, request.target)
    outcome.service = route.service
    prefix = route.prefix
    client_addr = request.client[0]
    trusted = client_addr in ctx.trusted_proxies
    try:
        authority = request.authority or b""
        headers = to_tunnel_request(
            method=request.method,
            path=request.target,
            scheme=request.scheme,
            headers=request.headers,
            client_addr=client_addr,
            trusted_proxy=trusted,
            authority=request.authority,
            forwarded_element=forwarded_element(request, authority or host.encode("latin-1")),
        )
    except HeaderError as exc:
        raise bad_request(str(exc)) from None
    declared = declared_length(headers)
    limit = ctx.config.max_body_size
    if limit and declared is not None and declared > limit:
        raise BodyTooLarge(f"request body of {declared} bytes is over the {limit}-byte limit")
    cfg = ctx.config
    body = outcome.body = RequestBody(exchange, limit, cfg.request_body_timeout, cfg.min_body_rate)
    no_body = declared == 0 or body.complete
    tried: set[str] = set()
    for attempt in range(MAX_ATTEMPTS):
        tunnel = await _acquire(ctx, route, tried, body)
        outcome.tunnel_id = tunnel.tunnel_id
        outcome.instance = tunnel.registration.instance or "-"
        try:
            with released(ctx.registry, tunnel):
                block = block_for(tunnel, headers, prefix)
                await _exchange(ctx, tunnel, block, body, no_body, exchange, outcome)
            return
        except StreamReset as exc:
            retry = exc.refused and not outcome.status and body.replay is not None
            if not retry or attempt == MAX_ATTEMPTS - 1:
                raise BadGateway(f"backend reset the stream (code {exc.error_code})") from None
            tried.add(tunnel.tunnel_id)
            log.info(
                "tunnel %s refused the stream; retrying elsewhere",
                tunnel.tunnel_id,
                extra=tunnel_fields(tunnel.tunnel_id, tunnel.registration.instance, route.service),
            )


async def _acquire(
    ctx: ProxyContext, route: Route, exclude: set[str], body: RequestBody
) -> RouterTunnel:
    """A tunnel slot for the request; while it waits for one, a user who resets the request or
    leaves makes it give up its place (ARCHITECTURE.md, attack 1, :func:`watch_until_stream`)."""
    acquired = ctx.registry.try_acquire(route, exclude=exclude)
    if acquired is not None:
        return acquired
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_until_stream, body, nursery.cancel_scope)
            acquired = await ctx.registry.acquire(route, exclude=exclude)
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if acquired is not None:
            ctx.registry.release(acquired)
        raise unwrap(group, PTTHError) from None
    if acquired is None or body.disconnected:
        if acquired is not None:
            ctx.registry.release(acquired)
        raise ClientGone()
    return acquired


async def _exchange(
    ctx: ProxyContext,
    tunnel: RouterTunnel,
    headers: list[tuple[bytes, bytes]],
    body: RequestBody,
    no_body: bool,
    exchange: Exchange,
    outcome: _Outcome,
) -> None:
    cfg = ctx.config
    end_now = (no_body or body.complete) and not body.replay_size and not body.trailers
    try:
        async with tunnel_stream(tunnel, headers, end_stream=end_now) as stream:
            await _run_exchange(cfg, stream, body, end_now, exchange, outcome)
            if body.disconnected:
                raise ClientGone()
    except StreamReset:
        raise
    except TunnelError as exc:
        if outcome.status:
            raise BadGateway("tunnel lost mid-response") from exc
        raise BadGateway(f"tunnel lost before the response: {exc}") from exc


async def _run_exchange(
    cfg: RouterConfig,
    stream: Stream,
    body: RequestBody,
    end_now: bool,
    exchange: Exchange,
    outcome: _Outcome,
) -> None:
    """Pump the request body and relay the response concurrently (a user gone cancels both).

    The response timeout counts from the end of the request, as Envoy's route timeout does: an
    upload that takes longer than the timeout is not a backend that failed to answer.
    """
    if end_now and await _arrived_whole(stream, min(QUICK_RESPONSE, cfg.response_timeout / 2)):
        # The whole response is already here: nothing to pump, and no need to watch for the
        # user leaving meanwhile (a write to a user who left fails). Most small requests take
        # this path, which saves a task, a nursery and a read per request.
        await _relay(cfg, stream, exchange, outcome, stream.headers or [])
        return
    waiting = trio.CancelScope()

    def request_sent() -> None:
        waiting.deadline = trio.current_time() + cfg.response_timeout

    async with trio.open_nursery() as nursery:
        if end_now:
            request_sent()
            nursery.start_soon(watch_disconnect, body, nursery.cancel_scope)
        else:
            nursery.start_soon(pump_request, body, stream, nursery.cancel_scope, request_sent)
        with waiting:
            response_headers = await _informational(stream, exchange)
        if waiting.cancelled_caught:
            raise ResponseTimeout(f"no response headers within {cfg.response_timeout:g} s")
        await _relay(cfg, stream, exchange, outcome, response_headers)
        nursery.cancel_scope.cancel()


async def _arrived_whole(stream: Stream, patience: float) -> bool:
    """Wait up to ``patience`` s for the complete response (headers, body, end; no 1xx)."""
    with trio.move_on_after(patience):
        while not stream.received_end and stream.error is None and not stream.informational:
            await stream.wait_changed()
    return (
        stream.received_end
        and stream.error is None
        and stream.headers is not None
        and not stream.informational
    )


async def _relay(
    cfg: RouterConfig,
    stream: Stream,
    exchange: Exchange,
    outcome: _Outcome,
    response_headers: list[tuple[bytes, bytes]],
) -> None:
    try:
        status, response_fields = from_tunnel_response(response_headers)
    except HeaderError as exc:
        raise BadGateway(f"backend sent an invalid response: {exc}") from None
    await _relay_response(cfg, stream, status, response_fields, exchange, outcome)


async def _informational(stream: Stream, exchange: Exchange) -> list[tuple[bytes, bytes]]:
    """Relay 1xx responses (103 Early Hints) until the final response headers arrive."""
    seen = 0
    while True:
        block = await stream.wait_informational(seen)
        if block is None:
            return await stream.receive_headers()
        seen += 1
        try:
            status, fields = from_tunnel_response(block)
        except HeaderError:
            continue  # a malformed 1xx is dropped; the final response decides
        if status != 100:  # 100 Continue was for the router's hop (it sent its own)
            await exchange.informational(status, fields)


async def _relay_response(
    cfg: RouterConfig,
    stream: Stream,
    status: int,
    fields: list[tuple[bytes, bytes]],
    exchange: Exchange,
    outcome: _Outcome,
) -> None:
    request = exchange.request
    wants_trailers = exchange.can_send_trailers and any(
        n == b"te" and b"trailers" in v for n, v in request.headers
    )
    late: list[tuple[bytes, bytes]] = []
    ended = stream.received_end and stream.buffered == 0
    if wants_trailers and stream.trailers is None and is_grpc_trailers_only(fields, ended=ended):
        fields, late = split_trailers_only(fields)
    if not any(name == b"date" for name, _ in fields):
        fields = [*fields, (b"date", formatdate(usegmt=True).encode())]
    trailers = wants_trailers and (stream.trailers is not None or bool(late) or not ended)
    outcome.status = status
    outcome.headers_at = time.monotonic()
    outcome.response_headers = fields
    if request.method == b"HEAD" or status in (204, 304):
        # No body, whatever the backend sent (RFC 9110 §9.3.2, §15.3.5, §15.4.5).
        await _to_user(exchange.start(status, fields, end=True), cfg.response_idle_timeout)
        return
    if ended and not trailers:
        await _to_user(exchange.start(status, fields, end=True), cfg.response_idle_timeout)
        return
    await exchange.start(status, fields, trailers=trailers)
    if not stream.buffered:
        await exchange.flush()  # the body may be late (SSE): the user sees the head now
    more = True
    while more:
        chunk = await next_response_chunk(stream, cfg.response_idle_timeout)
        # Mark the last chunk as such when the backend already ended: one write fewer per
        # response (most small responses arrive whole).
        more = bool(chunk) and not (stream.received_end and stream.buffered == 0)
        outcome.sent += len(chunk)
        kept = outcome.response_body
        if kept is not None and len(kept) < outcome.body_limit:
            kept += chunk[: outcome.body_limit - len(kept)]
        end = not more and not trailers
        await _to_user(exchange.send(chunk, end=end), cfg.response_idle_timeout)
    if trailers:
        final = clean_trailers(stream.trailers or late)
        if final:
            await _to_user(exchange.send_trailers(final), cfg.response_idle_timeout)
        else:
            await _to_user(exchange.send(b"", end=True), cfg.response_idle_timeout)


async def _to_user(step: Awaitable[None], idle: float) -> None:
    """One write to the user; a user who takes nothing for ``idle`` s loses the response.

    Over HTTP/2 the write waits for the user's flow-control window, which a user who never
    sends WINDOW_UPDATE keeps shut (ARCHITECTURE.md, attacks 8 and 13): give up, so the tunnel
    stream is reset and the backend sees ``http.disconnect``. Over HTTP/1.1 the front end's
    write deadline closes a connection whose socket stays full.
    """
    with trio.move_on_after(idle):
        await step
        return
    log.info("user took no response data for %g s: response aborted", idle)
    raise ClientGone()

"""Forward one ASGI ``http`` request onto a tunnel stream and relay the response back.

The request body and the response body both stream: a chunk is read from one side only after
the previous one was handed to the other, and tunnel DATA is acknowledged (window reopened) only
when the user's connection took it. Failures map to statuses once, in :func:`forward`.
"""

from __future__ import annotations

import logging
import time
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
from ptth.proto.fields import declared_length
from ptth.proto.headers import clean_trailers, from_tunnel_response, to_tunnel_request
from ptth.types import Message, Receive, Scope, Send

from .config import RouterConfig
from .proxy_common import (
    MAX_ATTEMPTS,
    ClientGone,
    ProxyContext,
    bad_request,
    block_for,
    client_host,
    next_response_chunk,
    request_target,
    tunnel_stream,
)
from .registry import RouterTunnel
from .request_body import RequestBody, pump_request, watch_disconnect, watch_until_stream
from .responses import error_response, is_grpc_trailers_only, split_trailers_only

__all__ = ["forward"]

log = logging.getLogger("router.access")


async def _send_error(send: Send, error: ProxyError) -> None:
    status, headers, body = error_response(error, date=formatdate(usegmt=True).encode())
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


@dataclass
class _Outcome:
    status: int = 0
    sent: int = 0
    tunnel_id: str = "-"


async def forward(ctx: ProxyContext, scope: Scope, receive: Receive, send: Send) -> None:
    """Proxy one request; each failure becomes a status of ARCHITECTURE.md, "Error mapping"."""
    started = time.monotonic()
    outcome = _Outcome()
    host, path = request_target(scope)
    try:
        with ctx.admitted(scope):
            await _forward(ctx, scope, receive, send, host, path, outcome)
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
    service, prefix = ctx.route(host, path)
    client_addr = client_host(scope)
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
        raise bad_request(str(exc)) from None
    declared = declared_length(headers)
    limit = ctx.config.max_body
    if limit and declared is not None and declared > limit:
        raise BodyTooLarge(f"request body of {declared} bytes is over the {limit}-byte limit")
    no_body = declared == 0 or (
        declared is None
        and not any(n == b"transfer-encoding" for n, _ in scope["headers"])
        and scope.get("http_version") == "1.1"
    )
    body = RequestBody(receive, limit, ctx.config.request_body_timeout)
    tried: set[str] = set()
    for attempt in range(MAX_ATTEMPTS):
        tunnel = await _acquire(ctx, service, tried, body)
        outcome.tunnel_id = tunnel.tunnel_id
        try:
            block = block_for(tunnel, headers, prefix)
            await _exchange(ctx, tunnel, block, body, no_body, scope, send, outcome)
            return
        except StreamReset as exc:
            retry = exc.refused and not outcome.status and body.replay is not None
            if not retry or attempt == MAX_ATTEMPTS - 1:
                raise BadGateway(f"backend reset the stream (code {exc.error_code})") from None
            tried.add(tunnel.tunnel_id)
            log.info("tunnel %s refused the stream; retrying elsewhere", tunnel.tunnel_id)
        finally:
            ctx.registry.release(tunnel)


async def _acquire(
    ctx: ProxyContext, service: str, exclude: set[str], body: RequestBody
) -> RouterTunnel:
    """A tunnel slot for the request; while it waits for one, a user who resets the request or
    leaves makes it give up its place (ARCHITECTURE.md, attack 1, :func:`watch_until_stream`)."""
    acquired = ctx.registry.try_acquire(service, exclude=exclude)
    if acquired is not None:
        return acquired
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_until_stream, body, nursery.cancel_scope)
            acquired = await ctx.registry.acquire(service, exclude=exclude)
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
    scope: Scope,
    send: Send,
    outcome: _Outcome,
) -> None:
    cfg = ctx.config
    end_now = (no_body or body.complete) and not body.replay_size
    try:
        async with tunnel_stream(tunnel, headers, end_stream=end_now) as stream:
            await _run_exchange(cfg, stream, body, end_now, scope, send, outcome)
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
    scope: Scope,
    send: Send,
    outcome: _Outcome,
) -> None:
    """Pump the request body and relay the response concurrently (a user gone cancels both).

    The response timeout counts from the end of the request, as Envoy's route timeout does: an
    upload that takes longer than the timeout is not a backend that failed to answer.
    """
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
            response_headers = await stream.receive_headers()
        if waiting.cancelled_caught:
            raise ResponseTimeout(f"no response headers within {cfg.response_timeout:g} s")
        try:
            status, response_fields = from_tunnel_response(response_headers)
        except HeaderError as exc:
            raise BadGateway(f"backend sent an invalid response: {exc}") from None
        await _relay_response(cfg, stream, status, response_fields, scope, send, outcome)
        nursery.cancel_scope.cancel()


async def _relay_response(
    cfg: RouterConfig,
    stream: Stream,
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
    ended = stream.received_end and stream.buffered == 0 and stream.trailers is None
    if wants_trailers and is_grpc_trailers_only(fields, ended=ended):
        fields, late = split_trailers_only(fields)
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
    more = True
    while more:
        chunk = await next_response_chunk(stream, cfg.response_idle_timeout)
        # Mark the last chunk as such when the backend already ended: one write fewer per
        # response for the front end (most small responses arrive whole).
        more = bool(chunk) and not (stream.received_end and stream.buffered == 0)
        outcome.sent += len(chunk)
        body = {"type": "http.response.body", "body": chunk, "more_body": more}
        await _send_to_user(send, body, cfg.response_idle_timeout)
    if wants_trailers:
        trailers = clean_trailers(stream.trailers or late)
        end = {"type": "http.response.trailers", "headers": trailers, "more_trailers": False}
        await _send_to_user(send, end, cfg.response_idle_timeout)


async def _send_to_user(send: Send, message: Message, idle: float) -> None:
    """``send`` one message; a user who takes nothing for ``idle`` s loses the response.

    Over HTTP/2 hypercorn's ``send`` waits for the user's flow-control window, which a user who
    never sends WINDOW_UPDATE keeps shut (ARCHITECTURE.md, attacks 8 and 13): give up, so the tunnel
    stream is reset and the backend sees ``http.disconnect``. A write stuck on a full socket
    cannot be cancelled from here (hypercorn shields it); the front end's write timeout
    (:mod:`router._hypercorn_write`) closes that connection instead.
    """
    with trio.move_on_after(idle):
        await send(message)
        return
    log.info("user took no response data for %g s: response aborted", idle)
    raise ClientGone()

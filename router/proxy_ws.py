"""Forward one WebSocket session onto a tunnel stream (RFC 8441 extended CONNECT).

The front end hands the router an exchange with ``protocol`` websocket for an HTTP/1.1 Upgrade
and for an h2 extended CONNECT alike. The session is routed and balanced like a request, then
opened in the tunnel as ``CONNECT`` with ``:protocol websocket``. The backend's answer decides
the handshake: 2xx accepts the user's WebSocket, any other status is relayed as the denial.

Then two tasks pump messages, and each reads its side only after the other side took the
previous message: tunnel DATA is acknowledged when the user's connection accepted the message
built from it, so a user who stops reading stops the backend through HTTP/2 flow control and the
router's memory stays bounded by one stream window plus one message. Inside the tunnel the router
is the WebSocket client and masks its frames (RFC 6455 §5.3). Failures before the accept map to
statuses as for plain requests (404, 502, 503, 504); a tunnel lost after it closes the user's
WebSocket with 1011, never silently. On the user's side the router is the WebSocket server
(:class:`_User`, a :class:`~ptth.proto.ws_frames.FrameCodec` over the exchange's bytes).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import trio
from h2.errors import ErrorCodes

from ptth.driver import Stream
from ptth.errors import (
    BadGateway,
    HeaderError,
    ProxyError,
    ResponseTimeout,
    StreamReset,
    TunnelError,
)
from ptth.logs import tunnel_fields
from ptth.proto.fields import Headers
from ptth.proto.headers import from_tunnel_response, to_tunnel_request
from ptth.proto.ws_frames import (
    ABNORMAL_CLOSURE,
    CLOSE_TIMEOUT,
    INTERNAL_ERROR,
    FrameCodec,
    WSMessage,
)
from ptth.types import Message

from . import access_log
from .config import RouterConfig
from .frontend.exchange import Exchange, UserRequest
from .frontend.http1 import ClientGoneError
from .outlier import StreamOutcome, outcome_of
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
from .responses import error_response

__all__ = ["forward_websocket"]

log = logging.getLogger("router.access")

# Handshake fields of the user's hop only: the key and its accept are per connection (RFC 6455
# §4.2.2) and extensions such as permessage-deflate were negotiated with the user, not inside.
_USER_HOP_ONLY = frozenset(
    {b"sec-websocket-key", b"sec-websocket-accept", b"sec-websocket-extensions"}
)


@dataclass
class _Outcome:
    status: int = 0
    sent: int = 0  # message bytes relayed to the user
    received: int = 0  # message bytes relayed to the backend
    close_code: int | None = None
    tunnel_id: str = "-"
    # The tunnel failed the accepted session (reset, lost): reported to passive health.
    failure: StreamOutcome | None = None
    service: str = "-"  # these three for the admin listener's observer
    instance: str = "-"
    accepted_at: float = 0.0


class _User:
    """The user's side of the session: the router is its WebSocket server.

    Messages come and go as the dicts the pump has always used (``websocket.receive``,
    ``websocket.disconnect``); frames are decoded and encoded here.
    """

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.request: UserRequest = exchange.request
        self.codec = FrameCodec(client=False)
        self._events: list[Message] = []
        self.responded = False  # a denial or close went out: the handshake is answered
        self.accepted = False
        self.closed = False  # we sent a close frame: no message may follow
        self.gone = False  # the user's close or disconnect arrived
        # Two tasks write to the user: the pump from the tunnel (messages, the close) and the
        # reader answering pings and the user's close. One frame at a time, whole.
        self._write_lock = trio.Lock()

    async def wait_gone(self) -> None:
        """Before the accept only a disconnect can come from the user."""
        await self.exchange.wait_gone()
        self.gone = True

    async def receive(self) -> Message:
        while not self._events:
            if self.gone:
                return {"type": "websocket.disconnect", "code": ABNORMAL_CLOSURE}
            try:
                data, more = await self.exchange.receive()
            except ClientGoneError:
                data, more = b"", False
            if not data and not more:
                self.gone = True
                return {"type": "websocket.disconnect", "code": ABNORMAL_CLOSURE}
            for event in self.codec.feed(data):
                if isinstance(event, WSMessage):
                    if isinstance(event.data, str):
                        self._events.append({"type": "websocket.receive", "text": event.data})
                    else:
                        self._events.append({"type": "websocket.receive", "bytes": event.data})
                else:
                    self.gone = True
                    self.closed = True
                    self._events.append(
                        {"type": "websocket.disconnect", "code": event.code, "reason": event.reason}
                    )
            answer = self.codec.data_to_send()  # pongs, the answer to the user's close
            if answer:
                await self._write(answer)
        return self._events.pop(0)

    async def _write(self, data: bytes) -> None:
        async with self._write_lock:
            try:
                await self.exchange.send(data)
            except ClientGoneError:
                self.gone = True

    async def accept(self, subprotocol: str | None, headers: Headers) -> None:
        self.responded = self.accepted = True
        await self.exchange.accept_websocket(subprotocol, headers)

    async def send_message(self, data: str | bytes) -> None:
        if self.closed or self.gone:
            return  # the user would not see it anyway
        await self._write(self.codec.send_message(data))

    async def close(self, code: int, reason: str = "") -> None:
        if self.closed or self.gone:
            return
        self.closed = self.responded = True
        await self._write(self.codec.send_close(code, reason))

    async def finish(self) -> None:
        """The session is over: end the user's stream (HTTP/2; HTTP/1.1 closes the socket)."""
        if self.accepted and not self.gone:
            async with self._write_lock:
                try:
                    await self.exchange.send(b"", end=True)
                except ClientGoneError:
                    pass

    async def deny_start(self, status: int, headers: Headers) -> None:
        if self.responded:
            return
        self.responded = True
        await self.exchange.start(status, headers)
        await self.exchange.flush()

    async def deny_body(self, body: bytes, *, more: bool) -> None:
        await self.exchange.send(body, end=not more)

    async def deny_error(self, error: ProxyError) -> None:
        if self.responded:
            return
        status, headers, body = error_response(error, date=None)
        await self.deny_start(status, headers)
        await self.deny_body(body, more=False)


async def forward_websocket(ctx: ProxyContext, exchange: Exchange) -> None:
    """Proxy one WebSocket session; failures before the accept become denial statuses."""
    started = time.monotonic()
    outcome = _Outcome()
    user = _User(exchange)
    request = exchange.request
    host = request.host
    path = request.target
    try:
        with ctx.admitted(request.client[0]):
            await _forward(ctx, user, host, path, outcome)
    except (ClientGone, ClientGoneError):
        outcome.status = outcome.status or 499
    except ProxyError as error:
        if not user.responded:
            outcome.status = error.status
        try:
            await user.deny_error(error)
        except ClientGoneError:
            pass
    finally:
        if ctx.observer is not None:
            ctx.observer.finished(
                Finished(
                    request=request,
                    kind="websocket",
                    service=outcome.service,
                    tunnel_id=outcome.tunnel_id,
                    instance=outcome.instance,
                    status=outcome.status,
                    started=started,
                    headers_at=outcome.accepted_at,
                    ended=time.monotonic(),
                    bytes_in=outcome.received,
                    bytes_out=outcome.sent,
                    response_headers=[],
                )
            )
        if access_log.enabled(ctx.config):
            access_log.write(
                kind="websocket",
                client=request.client[0],
                method=request.method.decode("latin-1"),
                host=host or "-",
                path=path.decode("latin-1"),
                status=outcome.status,
                bytes_in=outcome.received,
                bytes_out=outcome.sent,
                duration_ms=(time.monotonic() - started) * 1000,
                tunnel_id=outcome.tunnel_id,
                instance=outcome.instance,
                service=outcome.service,
                close_code=outcome.close_code,
            )


def _tunnel_request(ctx: ProxyContext, request: UserRequest, host: str) -> Headers:
    """The extended CONNECT block (RFC 8441 §4): the user's fields minus their hop's handshake."""
    fields = [(n, v) for n, v in request.headers if n.lower() not in _USER_HOP_ONLY]
    if not any(n.lower() == b"sec-websocket-version" for n, _ in fields):
        fields.append((b"sec-websocket-version", b"13"))  # RFC 8441 §5 keeps the version field
    client_addr = request.client[0]
    try:
        return to_tunnel_request(
            method=b"CONNECT",
            path=request.target,
            # RFC 8441 §5: :scheme is that of the target URI, http or https.
            scheme=request.scheme,
            headers=fields,
            client_addr=client_addr,
            trusted_proxy=client_addr in ctx.trusted_proxies,
            protocol=b"websocket",
            authority=request.authority,
            forwarded_element=forwarded_element(
                request, request.authority or host.encode("latin-1")
            ),
        )
    except HeaderError as exc:
        raise bad_request(str(exc)) from None


async def _forward(
    ctx: ProxyContext, user: _User, host: str, path: bytes, outcome: _Outcome
) -> None:
    route = ctx.route(host, path)
    outcome.service = route.service
    prefix = route.prefix
    headers = _tunnel_request(ctx, user.request, host)
    tried: set[str] = set()
    for attempt in range(MAX_ATTEMPTS):
        tunnel = await ctx.registry.acquire(route, exclude=tried)
        outcome.tunnel_id = tunnel.tunnel_id
        outcome.instance = tunnel.registration.instance or "-"
        try:
            with released(ctx.registry, tunnel) as slot:
                block = block_for(tunnel, headers, prefix)
                ctx.websockets += 1
                try:
                    await _session(ctx.config, tunnel, block, user, outcome)
                finally:
                    ctx.websockets -= 1
                slot.failure = outcome.failure
            return
        except StreamReset as exc:
            # Nothing is sent on the stream before the backend answers, so a refused stream
            # (RFC 9113 §8.7) is always safe to open again elsewhere.
            if not exc.refused or attempt == MAX_ATTEMPTS - 1:
                raise BadGateway(f"backend reset the stream (code {exc.error_code})") from None
            tried.add(tunnel.tunnel_id)
            log.info(
                "tunnel %s refused the WebSocket; retrying elsewhere",
                tunnel.tunnel_id,
                extra=tunnel_fields(tunnel.tunnel_id, tunnel.registration.instance, route.service),
            )


async def _session(
    cfg: RouterConfig, tunnel: RouterTunnel, headers: Headers, user: _User, outcome: _Outcome
) -> None:
    try:
        async with tunnel_stream(tunnel, headers) as stream:
            await _converse(cfg, stream, user, outcome)
    except StreamReset:
        raise
    except TunnelError as exc:
        raise BadGateway(f"tunnel lost before the WebSocket was accepted: {exc}") from exc


async def _converse(cfg: RouterConfig, stream: Stream, user: _User, outcome: _Outcome) -> None:
    response = await _wait_response(cfg, stream, user)
    try:
        status, fields = from_tunnel_response(response)
    except HeaderError as exc:
        raise BadGateway(f"backend sent an invalid response: {exc}") from None
    if not 200 <= status < 300:
        outcome.status = status
        await _relay_denial(cfg, stream, status, fields, user, outcome)
        return
    subprotocol, extra = _accept_fields(fields, user.request)
    await user.accept(subprotocol, extra)
    outcome.status = 101
    outcome.accepted_at = time.monotonic()
    try:
        await _Pump(stream, user, outcome).run()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await user.finish()


async def _wait_response(cfg: RouterConfig, stream: Stream, user: _User) -> Headers:
    """The backend's response headers; the user leaving meanwhile abandons the stream."""
    response: Headers | None = None
    async with trio.open_nursery() as nursery:

        async def watch_user() -> None:
            await user.wait_gone()
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch_user)
        with trio.move_on_after(cfg.response_timeout):
            response = await stream.receive_headers()
        nursery.cancel_scope.cancel()
    if user.gone:
        raise ClientGone()
    if response is None:
        raise ResponseTimeout(f"no response headers within {cfg.response_timeout:g} s")
    return response


def _accept_fields(fields: Headers, request: UserRequest) -> tuple[str | None, Headers]:
    """The subprotocol the backend chose (RFC 6455 §4.2.2) and the fields to pass on."""
    subprotocol: str | None = None
    extra: Headers = []
    for name, value in fields:
        if name == b"sec-websocket-protocol":
            subprotocol = value.decode("latin-1").strip()
        elif not name.startswith(b"sec-websocket-") and name != b"content-length":
            extra.append((name, value))
    if subprotocol is not None and subprotocol not in request.subprotocols:
        raise BadGateway(f"backend chose subprotocol {subprotocol!r}, which the user did not offer")
    return subprotocol, extra


async def _relay_denial(
    cfg: RouterConfig,
    stream: Stream,
    status: int,
    fields: Headers,
    user: _User,
    outcome: _Outcome,
) -> None:
    await user.deny_start(status, fields)
    while chunk := await next_response_chunk(stream, cfg.response_idle_timeout):
        outcome.sent += len(chunk)
        await user.deny_body(chunk, more=True)
    await user.deny_body(b"", more=False)


class _Pump:
    """Both directions of an accepted session, each ending with its half of the close."""

    def __init__(self, stream: Stream, user: _User, outcome: _Outcome) -> None:
        self.stream = stream
        self.user = user
        self.outcome = outcome
        self.codec = FrameCodec(client=True)
        self._write_lock = trio.Lock()  # frames of two tasks must never interleave in the stream
        self._scope = trio.CancelScope()

    async def run(self) -> None:
        with self._scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._from_user)
                nursery.start_soon(self._from_backend)

    def _closing(self) -> None:
        """One side's close is done: the other gets CLOSE_TIMEOUT to complete (§7.1.1)."""
        self._scope.deadline = min(self._scope.deadline, trio.current_time() + CLOSE_TIMEOUT)

    async def _write(self, data: bytes, *, end: bool = False) -> None:
        async with self._write_lock:
            if data:
                await self.stream.send_data(data, end_stream=end)
            elif end:
                await self.stream.end()  # a no-op when our close already ended the stream

    async def _from_user(self) -> None:
        codec = self.codec
        try:
            while True:
                message = await self.user.receive()
                if message["type"] == "websocket.receive":
                    raw = message.get("bytes")
                    payload: str | bytes = bytes(raw) if raw is not None else message["text"]
                    self.outcome.received += len(payload)
                    async with self._write_lock:
                        frame = codec.send_message(payload)
                        if frame:
                            await self.stream.send_data(frame)
                elif message["type"] == "websocket.disconnect":
                    await self._user_left(message)
                    return
        except TunnelError:
            return  # the backend side reports the stream's failure to the user

    async def _user_left(self, message: Message) -> None:
        code = int(message.get("code") or 1005)
        if self.codec.close_sent:
            return  # the backend closed first and was answered: the user just completed it
        if self.outcome.close_code is None:
            self.outcome.close_code = code
        if code == ABNORMAL_CLOSURE:
            # The user vanished without a close frame: the backend sees a reset, which its
            # adapter reports as 1006 too.
            await self.stream.reset(ErrorCodes.CANCEL)
            self._scope.cancel()
            return
        self._closing()
        async with self._write_lock:
            frame = self.codec.send_close(code, str(message.get("reason") or ""))
            await self.stream.send_data(frame, end_stream=True)

    async def _from_backend(self) -> None:
        codec = self.codec
        try:
            while True:
                data = await self.stream.receive_data()
                if not data:
                    if codec.closed is None:
                        await self._lost("the backend ended the WebSocket without a close frame")
                    return
                for event in codec.feed(data):
                    if isinstance(event, WSMessage):
                        self.outcome.sent += len(event.data)
                        await self.user.send_message(event.data)
                    else:
                        # The deadline first: the user or the lock may make us wait below.
                        self._closing()
                        if self.outcome.close_code is None:
                            self.outcome.close_code = event.code
                        await self.user.close(event.code, event.reason)
                        # Our answer (or our own close after a protocol error) ends the stream.
                        await self._write(codec.data_to_send(), end=True)
                        if event.by_peer:
                            return
                        # We closed for the backend's error: read on until it answers and ends
                        # its side, so it learns the code instead of seeing a reset.
                pongs = codec.data_to_send()
                if pongs:
                    await self._write(pongs)
        except TunnelError as exc:
            if self.outcome.close_code is None:
                # Not our own reset after the user left (that set the close code first).
                self.outcome.failure = outcome_of(exc)
            await self._lost(f"tunnel lost: {exc}")

    async def _lost(self, why: str) -> None:
        """RFC 6455 §7.4.1: 1011, the server hit a condition it could not handle."""
        log.info("websocket %s: %s", self.stream.stream_id, why)
        if self.outcome.close_code is None:
            self.outcome.close_code = INTERNAL_ERROR
        await self.user.close(INTERNAL_ERROR, "backend connection lost")
        self._scope.cancel()

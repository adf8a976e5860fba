"""Serve one tunnel stream as an ASGI 3 ``websocket`` call (RFC 8441 extended CONNECT).

The router opened the stream with ``:method CONNECT`` and ``:protocol websocket``; the backend
answers ``200`` to accept (RFC 8441 §5) or any other status to deny, then both ends exchange
RFC 6455 frames as DATA (:mod:`ptth.proto.ws_frames`). Frames are read from the stream only
inside the app's ``receive()``, so an app that stops receiving stops the router (and the user)
through HTTP/2 flow control; ``send()`` waits for window the same way.

Outcomes of the app's call:

* closes before accepting -> ``403`` (ASGI spec); ``websocket.http.response.*`` -> that response;
* raises or returns before accepting -> ``500``; after accepting -> close frame ``1011`` (raised)
  or ``1000`` (returned);
* after its own close, the peer's answer is awaited briefly so both directions end cleanly.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Any

import anyio
import anyio.abc
from h2.errors import ErrorCodes

from ._asgi_http import build_scope, log_app_error
from .driver import Stream
from .engine import Headers
from .errors import HeaderError, TunnelError
from .proto.fields import strip_hop_by_hop
from .proto.headers import RequestHead
from .proto.ws_frames import (
    ABNORMAL_CLOSURE,
    CLOSE_TIMEOUT,
    INTERNAL_ERROR,
    NORMAL_CLOSURE,
    FrameCodec,
    WSClosed,
    WSMessage,
)
from .types import ASGIApp, Message

__all__ = ["WebSocketDisconnected", "serve_websocket"]

# How long an end that sent its close frame waits for the peer's answer (RFC 6455 §7.1.1).


class WebSocketDisconnected(OSError):
    """``send()`` after the peer went away (ASGI: servers raise an OSError subclass)."""


class _State(enum.Enum):
    CONNECTING = "connecting"  # websocket.connect delivered, no answer yet
    CONNECTED = "connected"  # accepted: frames flow
    RESPONDING = "responding"  # websocket.http.response.start received, body not complete
    DONE = "done"  # a denial response was sent completely
    CLOSED = "closed"  # our close frame went out, or the conversation ended


def _offered_subprotocols(headers: Headers) -> list[str]:
    offered: list[str] = []
    for name, value in headers:
        if name == b"sec-websocket-protocol":
            for item in value.decode("latin-1").split(","):
                if item.strip():
                    offered.append(item.strip())
    return offered


class _Session:
    """The app's ``receive`` and ``send`` for one WebSocket conversation."""

    def __init__(self, stream: Stream, offered: list[str]) -> None:
        self.stream = stream
        self.offered = offered
        self.codec = FrameCodec(client=False)
        self.state = _State.CONNECTING
        self.connect_delivered = False
        self.pending: deque[WSMessage | WSClosed] = deque()
        self.disconnect: Message | None = None  # set once the conversation is over
        self.send_failed = False  # the stream broke under a write
        self.response_headers_sent = False
        self.status = 0
        self.response_fields: Headers = []
        self._write_lock = anyio.Lock()
        self._read_lock = anyio.Lock()

    # -- receive ----------------------------------------------------------------------------

    async def receive(self) -> Message:
        if not self.connect_delivered:
            self.connect_delivered = True
            return {"type": "websocket.connect"}
        async with self._read_lock:
            return await self._receive()

    async def _receive(self) -> Message:
        # Nothing to read before the accept: wait for it, a denial, or the router going away.
        while (
            self.state in (_State.CONNECTING, _State.RESPONDING)
            and self.stream.error is None
            and not self.stream.received_end
        ):
            await self.stream.wait_changed()
        if self.state not in (_State.CONNECTED, _State.CLOSED):
            return self._disconnected(ABNORMAL_CLOSURE)
        while True:
            if self.pending:
                event = self.pending.popleft()
                if isinstance(event, WSMessage):
                    if isinstance(event.data, str):
                        return {"type": "websocket.receive", "text": event.data}
                    return {"type": "websocket.receive", "bytes": event.data}
                return self._disconnected(event.code, event.reason)
            if self.disconnect is not None:
                return self.disconnect
            await self._read_more()

    async def _read_more(self) -> None:
        try:
            data = await self.stream.receive_data()
        except TunnelError:
            self._disconnected(ABNORMAL_CLOSURE)
            return
        if not data:  # the router ended the stream without a close frame
            self._disconnected(ABNORMAL_CLOSURE)
            return
        events = self.codec.feed(data)
        reply = self.codec.data_to_send()
        if reply:
            # A close answer ends our side of the stream; a pong does not.
            await self._write(reply, end=self.codec.closed is not None)
        self.pending.extend(events)

    def _disconnected(self, code: int, reason: str = "") -> Message:
        if self.disconnect is None:
            self.disconnect = {"type": "websocket.disconnect", "code": code, "reason": reason}
            if self.state is _State.CONNECTED:
                self.state = _State.CLOSED
        return self.disconnect

    # -- send -------------------------------------------------------------------------------

    async def _write(self, data: bytes, *, end: bool = False) -> None:
        """One writer at a time: frames from send() and pongs from receive() never interleave."""
        async with self._write_lock:
            try:
                if data:
                    await self.stream.send_data(data, end_stream=end)
                elif end:
                    await self.stream.end()  # a no-op when our side already ended
            except TunnelError:
                # Later sends fail; receive() still returns what arrived before the reset
                # (often the close frame that explains it), then the disconnect.
                self.send_failed = True

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "websocket.accept":
            self._expect(_State.CONNECTING, kind)
            await self._accept(message)
        elif kind == "websocket.send":
            if self.disconnect is not None or self.send_failed or self.state is _State.CLOSED:
                raise WebSocketDisconnected("the WebSocket is closed")
            self._expect(_State.CONNECTED, kind)
            data = message.get("bytes")
            payload: str | bytes = bytes(data) if data is not None else str(message["text"])
            await self._write(self.codec.send_message(payload))
        elif kind == "websocket.close":
            if self.state is _State.CONNECTING:
                await self._respond(403, [(b"content-length", b"0")], b"", end=True)
            elif self.state is _State.CONNECTED and self.disconnect is None:
                code = int(message.get("code") or NORMAL_CLOSURE)
                reason = str(message.get("reason") or "")
                self.state = _State.CLOSED
                await self._write(self.codec.send_close(code, reason), end=True)
            # Closing an already closed WebSocket is harmless.
        elif kind == "websocket.http.response.start":
            self._expect(_State.CONNECTING, kind)
            self.status = int(message["status"])
            self.response_fields = strip_hop_by_hop(message.get("headers", []))
            self.state = _State.RESPONDING
        elif kind == "websocket.http.response.body":
            self._expect(_State.RESPONDING, kind)
            more = bool(message.get("more_body", False))
            await self._respond(
                self.status, self.response_fields, bytes(message.get("body", b"")), end=not more
            )
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} in state {self.state.value}")

    def _expect(self, state: _State, kind: str) -> None:
        if self.state is not state:
            raise RuntimeError(f"ASGI message {kind!r} is not allowed in state {self.state.value}")

    async def _accept(self, message: Message) -> None:
        block: Headers = [(b":status", b"200")]
        subprotocol = message.get("subprotocol")
        if subprotocol is not None:
            if subprotocol not in self.offered:
                raise RuntimeError(f"subprotocol {subprotocol!r} was not offered by the client")
            block.append((b"sec-websocket-protocol", str(subprotocol).encode("latin-1")))
        for name, value in strip_hop_by_hop(message.get("headers", [])):
            if name.startswith(b":"):
                raise HeaderError(f"pseudo-header field {name!r} in websocket.accept")
            if not name.startswith(b"sec-websocket-"):
                # The router completes the handshake with the user itself (RFC 6455 §4.2.2).
                block.append((name, value))
        self.state = _State.CONNECTED
        self.stream.wake()  # a receive() waiting for the accept may read now
        try:
            await self.stream.send_headers(block)
        except TunnelError:
            self._disconnected(ABNORMAL_CLOSURE)

    async def _respond(self, status: int, fields: Headers, body: bytes, *, end: bool) -> None:
        """A denial (any status but 200, RFC 8441 §5): headers once, then the body."""
        self.state = _State.DONE if end else _State.RESPONDING
        try:
            if not self.response_headers_sent:
                self.response_headers_sent = True
                block = [(b":status", str(status).encode()), *fields]
                await self.stream.send_headers(block, end_stream=end and not body)
                if end and not body:
                    return
            await self.stream.send_data(body, end_stream=end)
        except TunnelError:
            self._disconnected(ABNORMAL_CLOSURE)
        finally:
            self.stream.wake()

    # -- after the app ----------------------------------------------------------------------

    async def finish(self, failed: bool) -> None:
        """Complete whatever the app left open (see the module docstring)."""
        if self.state is _State.CONNECTING:
            # Neither accepted nor denied: the app broke.
            await self._respond(500, [(b"content-length", b"0")], b"", end=True)
        elif self.state is _State.RESPONDING:
            await self.stream.reset(ErrorCodes.INTERNAL_ERROR)
        elif self.state is _State.CONNECTED and self.disconnect is None:
            code = INTERNAL_ERROR if failed else NORMAL_CLOSURE
            self.state = _State.CLOSED
            await self._write(self.codec.send_close(code), end=True)
        if self.codec.close_sent and self.disconnect is None:
            with anyio.move_on_after(CLOSE_TIMEOUT):
                while self.disconnect is None and not self.pending_close():
                    await self._read_more()

    def pending_close(self) -> bool:
        return any(isinstance(event, WSClosed) for event in self.pending)


async def serve_websocket(
    app: ASGIApp,
    stream: Stream,
    head: RequestHead,
    *,
    server: tuple[str, int | None] | None = None,
    root_path: str = "",
) -> None:
    """Run ``app`` for one WebSocket conversation on ``stream``; returns when it is over."""
    scope: dict[str, Any] = build_scope(
        head, scope_type="websocket", server=server, root_path=root_path
    )
    scope["subprotocols"] = _offered_subprotocols(head.headers)
    scope["extensions"] = {"websocket.http.response": {}}
    session = _Session(stream, scope["subprotocols"])
    failed = False
    try:
        await app(scope, session.receive, session.send)
    except WebSocketDisconnected:
        pass  # the app sent after the peer left and let the error end it: nothing to report
    except Exception as exc:
        failed = True
        log_app_error(stream, exc)
    await session.finish(failed)

"""A byte stream carried in WebSocket binary messages (ARCHITECTURE.md, "Transports").

Both ends of a ``ws://`` tunnel use it: the helper over its socket (the client end, which masks,
RFC 6455 §5.3) and the router over the front end's accepted WebSocket (the server end). Message
boundaries carry no meaning: a ``send`` may become several messages and a ``receive`` may
return part of one or several. Framing is :class:`ptth.proto.ws_frames.FrameCodec` (wsproto):
pings are answered, messages are bounded (over the limit: close 1009).

The end of the stream is faithful: the peer's close frame with 1000, 1001 or no code is EOF
(``EndOfStream`` once the buffered bytes are read); any other close, a text message (1003), a
protocol error, or the transport ending without a close frame (1006) is
``BrokenResourceError``. ``send_eof`` sends our close frame, a half-close: the peer may send
until its own close. The peer's close is answered at once and nothing may follow our close
(RFC 6455 §5.5.1), so after the peer's EOF a ``send`` fails: unlike TCP, only the side that
closes first keeps a direction open (the tunnel's drain closes last, ARCHITECTURE.md,
"The driver"). Backpressure is the transport's:
``receive`` reads only when its buffer is empty, ``send`` returns once the transport took the
frames.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc

from ..proto.ws_frames import FrameCodec, WSClosed

__all__ = ["CLEAN_CLOSES", "MAX_MESSAGE", "SEND_MESSAGE", "WebSocketStream"]

# Largest message accepted from the peer, and the size ``send`` cuts its bytes into: a few
# frames per HTTP/2 write, and a bounded reassembly buffer (the codec keeps one message).
MAX_MESSAGE = 1024 * 1024
SEND_MESSAGE = 256 * 1024
RECEIVE_SIZE = 256 * 1024
# How long our last close frame may take to leave when closing (nothing waits for a reply).
CLOSE_WRITE_TIMEOUT = 1.0
# Close codes that end the stream cleanly (RFC 6455 §7.4.1): normal, going away, no code.
CLEAN_CLOSES = frozenset({1000, 1001, 1005})
UNSUPPORTED_DATA = 1003


class WebSocketStream(anyio.abc.ByteStream):
    """Bytes over a WebSocket whose opening handshake is done; ``transport`` carries its
    frames (``initial``: frame bytes already read past the handshake)."""

    def __init__(
        self,
        transport: anyio.abc.ByteStream,
        *,
        client: bool,
        initial: bytes = b"",
        max_message: int = MAX_MESSAGE,
        send_message: int = SEND_MESSAGE,
    ) -> None:
        self.transport = transport
        self._codec = FrameCodec(client=client, max_message_size=max_message)
        self._chunk = send_message
        self._initial = initial
        self._buffer = bytearray()
        self._end: WSClosed | None = None  # how the peer's side ended, once it did
        self._send_lock = anyio.Lock()
        self._closed = False

    @property
    def close_code(self) -> int | None:
        """The code the WebSocket closed with (1006: the transport ended without a close)."""
        return self._end.code if self._end is not None else None

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while not self._buffer:
            if self._closed:
                raise anyio.ClosedResourceError
            if self._end is not None:
                if self._end.by_peer and self._end.code in CLEAN_CLOSES:
                    raise anyio.EndOfStream
                raise anyio.BrokenResourceError(
                    f"WebSocket closed with {self._end.code} {self._end.reason}".rstrip()
                )
            await self._read_frames()
        data = bytes(self._buffer[:max_bytes])
        del self._buffer[:max_bytes]
        return data

    async def _read_frames(self) -> None:
        if self._initial:
            raw, self._initial = self._initial, b""
        else:
            try:
                raw = await self.transport.receive(RECEIVE_SIZE)
            except anyio.EndOfStream:
                raw = b""
            if not raw:  # the transport ended without a close frame (RFC 6455 §7.1.5)
                self._end = WSClosed(1006, "connection ended without a close frame")
                return
        for event in self._codec.feed(raw):
            if isinstance(event, WSClosed):
                self._end = event
                break
            if isinstance(event.data, str):
                self._end = WSClosed(UNSUPPORTED_DATA, "text message in a tunnel", by_peer=False)
                await self._send_frames(
                    lambda: self._codec.send_close(UNSUPPORTED_DATA, "binary messages only")
                )
                return
            self._buffer += event.data
        # Pongs, the answer to the peer's close, our close after its protocol error.
        await self._send_frames(self._codec.data_to_send, quiet=self._end is not None)

    async def _send_frames(self, frames: Callable[[], bytes], *, quiet: bool = True) -> None:
        """Write what ``frames()`` makes, made under the lock: nothing can slip in between a
        close frame being made and being written. ``quiet``: a failed write is not an error
        (the conversation is over anyway)."""
        async with self._send_lock:
            data = frames()
            if not data:
                return
            try:
                await self.transport.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                if not quiet:
                    raise anyio.BrokenResourceError from None

    async def send(self, item: bytes) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        if self._codec.close_sent:
            raise anyio.BrokenResourceError("WebSocket closed: nothing more may be sent")
        view = memoryview(item)
        chunk = self._chunk

        def frames() -> bytes:
            if self._codec.close_sent:  # a close went out while we waited for the lock
                raise anyio.BrokenResourceError("WebSocket closed: nothing more may be sent")
            return b"".join(
                self._codec.send_message(bytes(view[i : i + chunk]))
                for i in range(0, len(view), chunk)
            )

        await self._send_frames(frames, quiet=False)

    async def send_eof(self) -> None:
        """Our close frame (1000): nothing more from us; the peer may still send."""
        await self._send_frames(self._codec.send_close, quiet=False)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if not self._codec.close_sent:
                with anyio.move_on_after(CLOSE_WRITE_TIMEOUT, shield=True):
                    await self._send_frames(self._codec.send_close)
        finally:
            await self.transport.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self.transport.extra_attributes

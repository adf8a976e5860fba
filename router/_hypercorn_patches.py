"""Make hypercorn abort an HTTP/2 response the app could not finish.

When the ASGI app fails after ``http.response.start`` (say the backend died mid-body), the
user must see an *aborted* response, never a short body that looks complete.

* HTTP/1.1 is already right in hypercorn 0.18: the app's end (``app_send(None)``) reaches
  ``H11Protocol`` as ``StreamClosed`` without ``EndBody``; h11 is then not ``DONE``, so the
  connection is closed before the declared Content-Length / the terminating ``0`` chunk.
* HTTP/2 is not: ``H2Protocol`` handles that ``StreamClosed`` by forgetting the stream
  (``_close_stream``). No END_STREAM and no RST_STREAM are ever sent, so the client waits for
  the rest of the body until its own timeout, and the stream's send buffer leaks for the
  connection's lifetime.

:func:`install` swaps in :class:`AbortingH2Protocol`, which resets such a stream with
``INTERNAL_ERROR`` (RFC 9113 section 8.1: a server that cannot complete a response resets
the stream), flushes, then lets hypercorn close the stream as before. Body bytes still in
hypercorn's send buffer at that moment are dropped rather than sent ahead of the reset: waiting
for them could block on the client's flow-control window, and clients discard a reset
response anyway.

"Could not finish" is read from hypercorn's own ``HTTPStream.state``: every normal ending
(``EndBody`` from the last body message, the trailers, or hypercorn's own 500 when the app
failed before starting a response) sets it to ``CLOSED`` *before* ``StreamClosed`` is sent.
The h2 stream's send state alone is not enough: ``EndBody`` returns once the buffer is
drained, which can be before the send task has emitted END_STREAM, so a normal response
can still look open at that moment. WebSocket-over-h2 streams (``WSStream``) are left alone.

:class:`BoundedStreamBuffer` fixes the backpressure of hypercorn's per-stream send buffer. Its
``pop`` releases a waiting ``push`` when the bytes it *popped* are few, not when the bytes left
are: a user whose flow-control window is 0 (or 1) makes every pop return b"" (or 1 byte), so
the app is never held back and the whole response piles up in the router (measured: 256 MiB of
RSS for one 256 MiB download to a user who set INITIAL_WINDOW_SIZE=0; ARCHITECTURE.md, attack 8).
Here a push waits until the buffer itself is below the low-water mark.
"""

from __future__ import annotations

import hypercorn.protocol
import hypercorn.protocol.h2
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError
from h2.stream import StreamState
from hypercorn.protocol.events import EndBody, StreamClosed, Trailers
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.h2 import BUFFER_LOW_WATER, H2Protocol, StreamBuffer
from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream

__all__ = ["AbortingH2Protocol", "BoundedStreamBuffer", "install"]

# Server-side h2 states in which we may still send on the stream.
_CAN_SEND = frozenset({StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE})


class AbortingH2Protocol(H2Protocol):
    """``H2Protocol`` that sends RST_STREAM(INTERNAL_ERROR) for a response the app abandoned."""

    async def stream_send(self, event: StreamEvent) -> None:
        if isinstance(event, Trailers) and not event.headers:
            # The router announces trailers (``"trailers": True``) before it knows whether the
            # backend sends any, so the trailer section may be empty. An empty block cannot be
            # a HEADERS frame (h2 raises IndexError and the user sees a reset stream): end the
            # stream with an empty DATA frame instead, as a response without trailers does.
            event = EndBody(stream_id=event.stream_id)
        if isinstance(event, StreamClosed) and self._abandoned(event.stream_id):
            await self._abort_stream(event.stream_id)
        await super().stream_send(event)

    def _abandoned(self, stream_id: int) -> bool:
        # A StreamClosed reaching stream_send always comes from the app side (client resets
        # and connection loss go through _close_stream directly), and the stream is still
        # in self.streams unless it was already closed by the peer or the connection.
        stream = self.streams.get(stream_id)
        if not isinstance(stream, HTTPStream) or stream.state is ASGIHTTPState.CLOSED:
            return False
        h2_stream = self.connection.streams.get(stream_id)
        return h2_stream is not None and h2_stream.state_machine.state in _CAN_SEND

    async def _abort_stream(self, stream_id: int) -> None:
        try:
            self.connection.reset_stream(stream_id, error_code=ErrorCodes.INTERNAL_ERROR)
        except ProtocolError:  # the stream or the connection closed meanwhile
            return
        await self._flush()
        buffer = self.stream_buffers.get(stream_id)
        if buffer is not None:
            # Drop unsent body and let the send task retire the buffer: its next attempt on
            # the reset stream fails and takes hypercorn's own cleanup path. (Deleting it here
            # would race with a send task parked inside _send_data for this stream.)
            await buffer.close()
            self.priority.unblock(stream_id)
            await self.has_data.set()


class BoundedStreamBuffer(StreamBuffer):
    """``StreamBuffer`` whose ``pop`` un-pauses the app by what is left, not what was taken."""

    async def pop(self, max_length: int) -> bytes:
        length = min(len(self.buffer), max_length)
        data = bytes(self.buffer[:length])
        del self.buffer[:length]
        if len(self.buffer) < BUFFER_LOW_WATER:
            await self._paused.set()
        if len(self.buffer) == 0:
            await self._is_empty.set()
        return data


def install() -> None:
    """Make hypercorn's HTTP/2 connections use :class:`AbortingH2Protocol` and
    :class:`BoundedStreamBuffer`. Idempotent.

    ``hypercorn.protocol.ProtocolWrapper`` looks ``H2Protocol`` up in its module globals each
    time it builds a connection (ALPN ``h2``, h2c prior knowledge, h2c upgrade), and
    ``H2Protocol`` looks ``StreamBuffer`` up in its own for each stream, so rebinding those names
    covers every worker type; call it before serving.
    """
    hypercorn.protocol.H2Protocol = AbortingH2Protocol  # type: ignore[attr-defined]
    hypercorn.protocol.h2.StreamBuffer = BoundedStreamBuffer  # type: ignore[misc]

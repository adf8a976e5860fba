"""One HTTP/2 stream of a tunnel, as seen by the task that proxies or serves it.

Inbound bytes are buffered here by the connection's reader task (which never waits for us) and
acknowledged to the peer only when :meth:`TunnelStream.receive_data` hands them out: flow control
is the backpressure, and a stream's memory is bounded by the window we advertised.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import h2.exceptions
import trio
from h2.errors import ErrorCodes

from .errors import StreamReset, TunnelClosed, TunnelError

if TYPE_CHECKING:
    from ._tunnel import TunnelConnection

__all__ = ["Headers", "TunnelStream"]

Headers = list[tuple[bytes, bytes]]

COALESCE_LIMIT = 256 * 1024  # bytes joined into one receive_data() result at most


class TunnelStream:
    """Send and receive on one stream; every wait raises the stream's error if it failed."""

    def __init__(self, tunnel: TunnelConnection, stream_id: int) -> None:
        self.tunnel = tunnel
        self.stream_id = stream_id
        self.headers: Headers | None = None
        self.informational: list[Headers] = []
        self.trailers: Headers | None = None
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._buffered = 0
        self._received_end = False
        self._sent_end = False
        self._error: TunnelError | None = None
        self._changed = trio.Event()
        self._discarded = False

    # -- called by the reader task (synchronous, never blocks) -------------------------------

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _on_headers(self, headers: Headers) -> None:
        if self.headers is None:
            self.headers = headers
        else:
            self.trailers = headers
        self._wake()

    def _on_informational(self, headers: Headers) -> None:
        self.informational.append(headers)
        self._wake()

    def _on_data(self, data: bytes, flow_controlled_length: int) -> None:
        if self._discarded or not data:
            # Padding-only or empty frames carry nothing to hand out (and b"" means "end").
            self.tunnel._acknowledge(self.stream_id, flow_controlled_length)
            return
        self._chunks.append((data, flow_controlled_length))
        self._buffered += len(data)
        self._wake()

    def _on_end(self) -> None:
        self._received_end = True
        self._wake()

    def _on_error(self, error: TunnelError) -> None:
        if self._error is None and not (self._received_end and self._sent_end):
            self._error = error
        self._wake()

    # -- public ------------------------------------------------------------------------------

    @property
    def error(self) -> TunnelError | None:
        return self._error

    @property
    def received_end(self) -> bool:
        return self._received_end

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed (bounded by our stream window)."""
        return self._buffered

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        await self._changed.wait()

    def wake(self) -> None:
        """Wake tasks blocked in :meth:`wait_changed` (the owner's own state changed)."""
        self._wake()

    async def wait_changed(self) -> None:
        """Until anything happens on the stream; never raises."""
        await self._changed.wait()

    async def receive_headers(self) -> Headers:
        """The peer's header block (request on the server side, final response on the client)."""
        while self.headers is None:
            if self._received_end:
                raise TunnelError("stream ended without headers")
            await self._wait()
        return self.headers

    async def wait_informational(self, seen: int) -> Headers | None:
        """Wait until more than ``seen`` 1xx blocks arrived (returns it) or final headers (None)."""
        while len(self.informational) <= seen and self.headers is None:
            await self._wait()
        if len(self.informational) > seen:
            return self.informational[seen]
        return None

    async def receive_data(self) -> bytes:
        """The next chunk of the body, or b"" at its end (then ``trailers`` may be set).

        Acknowledging here, not on arrival, is what carries a slow consumer's pace to the peer.
        """
        while not self._chunks:
            if self._received_end:
                return b""
            await self._wait()
        data, flow_length = self._chunks.popleft()
        if self._chunks and len(data) < COALESCE_LIMIT:
            # Hand out what has queued up in one piece (frames are at most 64 KiB): fewer
            # round trips through the consumer, which is where a bulk relay spends its time.
            parts = [data]
            size = len(data)
            while self._chunks and size < COALESCE_LIMIT:
                more, more_length = self._chunks.popleft()
                parts.append(more)
                size += len(more)
                flow_length += more_length
            data = b"".join(parts)
        self._buffered -= len(data)
        await self.tunnel._acknowledge_and_flush(self.stream_id, flow_length)
        return data

    async def send_headers(self, headers: Headers, *, end_stream: bool = False) -> None:
        await self.tunnel._send_headers(self, headers, end_stream=end_stream)
        if end_stream:
            self._sent_end = True

    async def send_data(self, data: bytes, *, end_stream: bool = False) -> None:
        """Send body bytes, waiting for flow-control window as the peer consumes."""
        await self.tunnel._send_data(self, data, end_stream=end_stream)
        if end_stream:
            self._sent_end = True

    async def send_trailers(self, headers: Headers) -> None:
        await self.send_headers(headers, end_stream=True)

    async def end(self) -> None:
        if not self._sent_end:
            await self.tunnel._send_data(self, b"", end_stream=True)
            self._sent_end = True

    async def reset(self, error_code: int = ErrorCodes.CANCEL) -> None:
        """Abort the stream (RST_STREAM); safe to call at any time, even when cancelled."""
        await self.tunnel._reset(self, error_code)

    @property
    def finished(self) -> bool:
        return self._received_end and self._sent_end and not self._chunks

    async def aclose(self) -> None:
        """Release the stream: reset it unless both directions completed, return its window."""
        if self._discarded:
            return
        if not (self._received_end and self._sent_end) and self._error is None:
            await self.reset(ErrorCodes.CANCEL)
        self._discard()

    def _discard(self) -> None:
        if self._discarded:
            return
        self._discarded = True
        pending = sum(length for _, length in self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if pending:
            self.tunnel._acknowledge(self.stream_id, pending)
        self.tunnel._streams.forget(self)
        if self._error is None:
            self._error = StreamReset(ErrorCodes.CANCEL)
        self._wake()


def is_stream_gone(exc: BaseException) -> bool:
    """h2 errors that only mean 'this stream is already closed or reset'."""
    return isinstance(exc, h2.exceptions.StreamClosedError | TunnelClosed)

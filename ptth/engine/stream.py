"""One HTTP/2 stream's state inside the engine: what arrived, what waits to be sent; pure.

Inbound DATA is buffered here until the consumer takes it (:meth:`Engine.read`), and only then is
stream-level credit returned to the peer: a stream's memory is bounded by the window we granted
it. Outbound body bytes wait in a queue until flow control lets the engine frame them, so a
sender learns of backpressure from ``queued`` instead of by blocking inside the engine.
"""

from __future__ import annotations

from collections import deque

from ..errors import TunnelError

__all__ = ["Headers", "StreamState"]

Headers = list[tuple[bytes, bytes]]


class StreamState:
    """Read-only to everyone but the engine; ``handle`` is the driver's to use."""

    __slots__ = (
        "_chunks",
        "_out",
        "active",
        "buffered",
        "end_queued",
        "error",
        "handle",
        "headers",
        "informational",
        "queued",
        "received_end",
        "sent_end",
        "sent_status",
        "stream_id",
        "trailers",
        "trailers_queued",
        "unacked",
        "window",
    )

    def __init__(self, stream_id: int, window: int) -> None:
        self.stream_id = stream_id
        self.headers: Headers | None = None
        self.informational: list[Headers] = []  # 1xx blocks, bounded by the engine's budget
        self.trailers: Headers | None = None
        self._chunks: deque[tuple[bytes, int]] = deque()
        self.buffered = 0  # received body bytes not yet read
        self.received_end = False
        self.sent_end = False  # END_STREAM has been framed (not merely queued)
        self.sent_status: int | None = None  # the final response's status, once sent (metrics)
        self.error: TunnelError | None = None
        self._out: deque[memoryview] = deque()
        self.queued = 0  # body bytes accepted by send_data and not yet framed
        self.end_queued = False
        self.trailers_queued: Headers | None = None
        self.window = window  # the receive window this stream is granted (grows, see Engine)
        self.unacked = 0  # bytes read (or padding) whose credit is not yet returned
        self.active = True  # holds a concurrency slot in the engine's table
        self.handle: object = None

    @property
    def finished(self) -> bool:
        """Both directions completed and nothing is left unread."""
        return self.received_end and self.sent_end and not self._chunks

    @property
    def send_pending(self) -> bool:
        """Body bytes, END_STREAM or trailers are queued and not yet framed."""
        return bool(self.queued or self.end_queued or self.trailers_queued is not None)

    # -- used by the engine ---------------------------------------------------------------

    def push(self, data: bytes, flow_length: int) -> None:
        self._chunks.append((data, flow_length))
        self.buffered += len(data)

    def pop(self, limit: int) -> tuple[bytes, int]:
        """Up to about ``limit`` buffered bytes in one piece, and their flow-controlled length."""
        data, flow = self._chunks.popleft()
        if self._chunks and len(data) < limit:
            parts = [data]
            size = len(data)
            while self._chunks and size < limit:
                more, more_flow = self._chunks.popleft()
                parts.append(more)
                size += len(more)
                flow += more_flow
            data = b"".join(parts)
        self.buffered -= len(data)
        return data, flow

    def drop_buffered(self) -> int:
        """Forget unread data; returns its flow-controlled length."""
        flow = sum(length for _, length in self._chunks)
        self._chunks.clear()
        self.buffered = 0
        return flow

    def enqueue(self, data: bytes) -> None:
        self._out.append(memoryview(data))
        self.queued += len(data)

    def take(self, size: int) -> bytes:
        """``size`` queued bytes (at most), in order, as one piece."""
        first = self._out[0]
        if len(first) > size:
            self._out[0] = first[size:]
            self.queued -= size
            return bytes(first[:size])
        parts = []
        taken = 0
        while self._out and taken < size:
            piece = self._out[0]
            room = size - taken
            if len(piece) > room:
                parts.append(piece[:room])
                self._out[0] = piece[room:]
                taken += room
                break
            parts.append(piece)
            self._out.popleft()
            taken += len(piece)
        self.queued -= taken
        return b"".join(parts)

    def drop_queue(self) -> None:
        self._out.clear()
        self.queued = 0
        self.end_queued = False
        self.trailers_queued = None

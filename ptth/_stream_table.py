"""The open streams of one tunnel: which stream holds a slot, its events, and who waits.

A stream holds one of the peer's SETTINGS_MAX_CONCURRENT_STREAMS slots (RFC 9113 §5.1.2) from its
HEADERS until both directions ended or it was reset. Freeing a slot wakes the tasks waiting for
the table to change (a free slot, a GOAWAY) and the senders waiting for flow-control window, which
then find their stream gone. Only the connection's reader task and the streams' own tasks call in;
nothing here blocks except the ``wait_*`` methods.
"""

from __future__ import annotations

import h2.events
import trio
from h2.errors import ErrorCodes

from ._stream import TunnelStream
from .errors import StreamReset, TunnelClosed

__all__ = ["StreamTable"]


class StreamTable:
    def __init__(self) -> None:
        self._streams: dict[int, TunnelStream] = {}
        self._changed = trio.Event()
        self._window_changed = trio.Event()

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def add(self, stream: TunnelStream) -> None:
        self._streams[stream.stream_id] = stream

    def deliver(self, event: h2.events.Event) -> None:
        """Hand a stream-level event to its stream; one for a stream no longer here is dropped."""
        if isinstance(event, h2.events.DataReceived):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream._on_data(event.data or b"", event.flow_controlled_length or 0)
        elif isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
            stream = self._streams.get(event.stream_id or 0)
            if stream is not None:
                stream._on_headers(list(event.headers or []))
        elif isinstance(event, h2.events.InformationalResponseReceived):
            stream = self._streams.get(event.stream_id or 0)
            if stream is not None:
                stream._on_informational(list(event.headers or []))
        elif isinstance(event, h2.events.StreamEnded):
            stream = self._streams.get(event.stream_id or 0)
            if stream is not None:
                stream._on_end()
                self.release_if_done(stream)
        elif isinstance(event, h2.events.StreamReset):
            stream = self._streams.get(event.stream_id or 0)
            if stream is not None:
                code = int(event.error_code or 0)
                stream._on_error(StreamReset(code, refused=code == ErrorCodes.REFUSED_STREAM))
                self.forget(stream)

    def release_if_done(self, stream: TunnelStream) -> None:
        if stream._received_end and stream._sent_end:
            # Both directions done: the slot is free. The stream object stays readable.
            self.forget(stream)

    def forget(self, stream: TunnelStream) -> None:
        """Free ``stream``'s slot, if it still holds it."""
        if self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]
            self.changed()
            self.wake_senders()

    def refuse_above(self, last_stream_id: int) -> None:
        """The peer's GOAWAY: streams above its last id were never processed (RFC 9113 §6.8)."""
        for stream_id, stream in list(self._streams.items()):
            if stream_id > last_stream_id:
                stream._on_error(StreamReset(ErrorCodes.REFUSED_STREAM, refused=True))
                self.forget(stream)

    def fail_all(self, error: TunnelClosed) -> None:
        """The tunnel closed: every stream fails with ``error``; waiters wake for good."""
        for stream in list(self._streams.values()):
            stream._on_error(error)
        self._streams.clear()
        self._changed.set()
        self.wake_senders()

    def changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    def wake_senders(self) -> None:
        self._window_changed.set()
        self._window_changed = trio.Event()

    async def wait_window(self) -> None:
        await self._window_changed.wait()

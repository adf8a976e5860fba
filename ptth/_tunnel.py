"""The trio driver of one HTTP/2 tunnel: the router is its client, the backend its server.

One reader task owns the socket's receive side and never awaits a consumer; every write goes
through :meth:`TunnelConnection._flush`, one lock-guarded ``send_all`` with a deadline, so h2's
unbounded output buffer never grows past what the socket accepts. A failed or timed-out write
marks the tunnel dead.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import h2.events
import h2.exceptions
import trio
from h2.errors import ErrorCodes

from ._budget import FrameBudget
from ._frame_guard import FrameGuard
from ._h2 import GRACEFUL_LAST_STREAM, H2Settings, make_connection
from ._stream import Headers, TunnelStream
from .errors import StreamReset, TunnelClosed, TunnelError

__all__ = ["Liveness", "TunnelConnection"]

log = logging.getLogger("ptth.tunnel")

RECEIVE_SIZE = 256 * 1024
# Seconds a drained tunnel waits, half-closed, for the peer to close too (see _linger_close).
LINGER = 2.0


@dataclass(frozen=True)
class Liveness:
    """Keepalive: PING after ``interval`` of silence; no frame at all for ``dead_after``: dead."""

    interval: float = 10.0
    dead_after: float = 20.0
    write_timeout: float = 30.0


StreamHandler = Callable[[TunnelStream], Awaitable[None]]


class TunnelConnection:
    """Drive one h2 connection over a trio stream.

    Client side (router): :meth:`open_stream`. Server side (backend): ``on_stream`` is called in
    ``handler_nursery`` for every request the peer opens.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        client_side: bool,
        tunnel_id: str = "",
        settings: H2Settings | None = None,
        liveness: Liveness | None = None,
        on_stream: StreamHandler | None = None,
        initial_data: bytes = b"",
    ) -> None:
        self.tunnel_id = tunnel_id
        self.client_side = client_side
        self.settings = settings or H2Settings()
        self.liveness = liveness or Liveness()
        self._socket = stream
        self._on_stream = on_stream
        self._initial_data = initial_data
        self._conn = make_connection(client_side=client_side, settings=self.settings, logger=log)
        self._send_lock = trio.Lock()
        self._streams: dict[int, TunnelStream] = {}
        self._window_changed = trio.Event()
        self._closed: TunnelClosed | None = None
        self._closed_event = trio.Event()
        self._remote_settings_seen = trio.Event()
        self._goaway_received: int | None = None
        self._goaway_sent = False
        self._streams_changed = trio.Event()
        self._last_received = trio.current_time()
        self._budget = FrameBudget()
        self._guard = FrameGuard(
            max_frame_size=self.settings.max_frame_size, server_side=not client_side
        )
        self._handler_nursery: trio.Nursery | None = None
        self._reader_scope = trio.CancelScope()
        self._linger = False
        self.streams_opened = 0

    # -- state -------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed is not None

    @property
    def draining(self) -> bool:
        """No new streams may be opened (a GOAWAY went either way, or the tunnel is closed)."""
        return self._closed is not None or self._goaway_received is not None or self._goaway_sent

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def peer_max_concurrent_streams(self) -> int:
        return int(self._conn.remote_settings.max_concurrent_streams)

    async def wait_remote_settings(self) -> None:
        """Until the peer's first SETTINGS arrived, or the tunnel closed (check ``closed``)."""
        await self._remote_settings_seen.wait()

    async def wait_closed(self) -> None:
        await self._closed_event.wait()

    async def wait_streams_changed(self) -> None:
        """Until a stream opens or closes, a GOAWAY arrives or the tunnel closes."""
        await self._streams_changed.wait()

    async def wait_idle(self) -> None:
        """Until no stream is open (used by drain)."""
        while self._streams and not self.closed:
            await self._streams_changed.wait()

    # -- the connection task -----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the socket until the tunnel closes; request handlers run inside this call."""
        try:
            async with trio.open_nursery() as nursery:
                self._handler_nursery = nursery
                with self._reader_scope:
                    try:
                        await self._flush()
                        if self._initial_data:
                            await self._receive(self._initial_data)
                    except TunnelClosed:
                        pass  # reported through `closed`, like any later failure
                    nursery.start_soon(self._keepalive)
                    task_status.started()
                    await self._read_loop()
                nursery.cancel_scope.cancel()
        finally:
            self._mark_closed(self._closed or TunnelClosed("tunnel closed"))
            with trio.CancelScope(shield=True):
                if self._linger:
                    await self._linger_close()
                await trio.aclose_forcefully(self._socket)

    async def _linger_close(self) -> None:
        """After a drain: half-close, then read (and ignore) until the peer closes, bounded.

        Closing a socket with unread input makes the kernel answer with RST, and an RST can
        destroy what the peer has not read yet, our GOAWAY included: a stream the peer opened
        just before it would then fail as "tunnel lost" instead of being retried as refused
        (RFC 9113 section 6.8). With EOF the peer reads everything, then closes its side.
        """
        if not isinstance(self._socket, trio.abc.HalfCloseableStream):
            return
        with trio.move_on_after(LINGER):
            try:
                await self._socket.send_eof()
                while await self._socket.receive_some(RECEIVE_SIZE):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    async def _read_loop(self) -> None:
        while self._closed is None:
            try:
                data = await self._socket.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._mark_closed(TunnelClosed(f"tunnel lost: {exc!r}"))
                return
            if not data:
                self._mark_closed(TunnelClosed("peer closed the tunnel"))
                return
            await self._receive(data)

    async def _receive(self, data: bytes | bytearray) -> None:
        self._last_received = trio.current_time()
        problem = self._guard.check(bytes(data))
        if problem is not None:
            log.warning("tunnel %s: %s; closing", self.tunnel_id, problem)
            await self._fail(ErrorCodes.PROTOCOL_ERROR, problem)
            return
        try:
            events = self._conn.receive_data(bytes(data))
        except h2.exceptions.ProtocolError as exc:
            code = getattr(exc, "error_code", ErrorCodes.PROTOCOL_ERROR)
            log.warning("tunnel %s: protocol error from peer: %s", self.tunnel_id, exc)
            await self._fail(code, f"protocol error: {exc}")
            return
        for event in events:
            self._handle(event)
        if self._budget.exceeded is not None:
            log.warning("tunnel %s: %s; closing", self.tunnel_id, self._budget.exceeded)
            # h2 has already queued an ACK for every PING/SETTINGS of the flood: send none.
            self._conn.clear_outbound_data_buffer()
            await self._fail(ErrorCodes.ENHANCE_YOUR_CALM, self._budget.exceeded)
            return
        try:
            await self._flush()
        except TunnelClosed:
            return

    def _handle(self, event: h2.events.Event) -> None:
        now = trio.current_time()
        if isinstance(event, h2.events.DataReceived):
            stream = self._streams.get(event.stream_id)
            length = event.flow_controlled_length or 0
            self._budget.data_frame(now, empty=length == 0 and not event.stream_ended)
            if stream is None:
                self._acknowledge(event.stream_id, length)
            else:
                stream._on_data(event.data or b"", length)
        elif isinstance(event, h2.events.RequestReceived):
            self._on_request(event)
        elif isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
            self._budget.headers_frame(now)
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
                self._maybe_finished(stream)
        elif isinstance(event, h2.events.StreamReset):
            stream = self._streams.get(event.stream_id or 0)
            if stream is not None:
                code = int(event.error_code or 0)
                stream._on_error(StreamReset(code, refused=code == ErrorCodes.REFUSED_STREAM))
                self._forget(stream)
        elif isinstance(event, h2.events.WindowUpdated):
            self._budget.window_update(now)
            self._wake_senders()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._budget.control_frame(now)
            self._remote_settings_seen.set()
            self._wake_senders()
        elif isinstance(event, h2.events.PingReceived):
            self._budget.control_frame(now)
        elif isinstance(event, h2.events.PriorityUpdated):
            self._budget.priority_frame(now)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._on_goaway(event)

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id or 0
        self._budget.headers_frame(trio.current_time())
        if self._goaway_sent or self._on_stream is None or self._handler_nursery is None:
            # RFC 9113 §8.7: refused streams were never processed, so the client may retry them.
            self._conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        stream = TunnelStream(self, stream_id)
        stream._on_headers(list(event.headers or []))
        if event.stream_ended is not None:
            stream._on_end()
        self._streams[stream_id] = stream
        self._handler_nursery.start_soon(self._run_handler, stream)

    async def _run_handler(self, stream: TunnelStream) -> None:
        assert self._on_stream is not None
        try:
            await self._on_stream(stream)
        except TunnelError as exc:
            log.info("tunnel %s: stream %d ended: %s", self.tunnel_id, stream.stream_id, exc)
        except Exception:
            # One broken request must never take the tunnel (and its other streams) down.
            log.exception("tunnel %s: stream %d handler failed", self.tunnel_id, stream.stream_id)
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(1):
                    await stream.aclose()

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        code = int(event.error_code or 0)
        last = int(event.last_stream_id if event.last_stream_id is not None else 0)
        if code != ErrorCodes.NO_ERROR:
            log.warning("tunnel %s: peer sent GOAWAY %s", self.tunnel_id, code)
            self._mark_closed(TunnelClosed(f"peer sent GOAWAY ({code})", error_code=code))
            return
        log.info("tunnel %s: peer is draining (GOAWAY, last stream %d)", self.tunnel_id, last)
        self._goaway_received = last
        for stream_id, stream in list(self._streams.items()):
            if self.client_side and stream_id > last:
                stream._on_error(StreamReset(ErrorCodes.REFUSED_STREAM, refused=True))
                self._forget(stream)
        self._streams_changed.set()
        self._streams_changed = trio.Event()

    # -- keepalive ---------------------------------------------------------------------------

    async def _keepalive(self) -> None:
        interval, dead_after = self.liveness.interval, self.liveness.dead_after
        while True:
            await trio.sleep(min(interval, dead_after) / 2)
            silent = trio.current_time() - self._last_received
            if silent >= dead_after:
                log.warning("tunnel %s: no answer for %.1f s; dead", self.tunnel_id, silent)
                await self._fail(ErrorCodes.NO_ERROR, f"no answer for {silent:.1f} s")
                return
            if silent >= interval:
                try:
                    self._conn.ping(b"ptthping")
                    await self._flush()
                except (h2.exceptions.ProtocolError, TunnelClosed):
                    return

    # -- streams -----------------------------------------------------------------------------

    async def open_stream(self, headers: Headers, *, end_stream: bool = False) -> TunnelStream:
        """Client side: start a request. Raises :class:`TunnelClosed` if draining or closed."""
        if self.draining:
            raise self._closed or TunnelClosed("tunnel is draining")
        stream_id = self._conn.get_next_available_stream_id()
        stream = TunnelStream(self, stream_id)
        self._streams[stream_id] = stream
        self.streams_opened += 1
        try:
            self._conn.send_headers(stream_id, headers, end_stream=end_stream)
        except h2.exceptions.ProtocolError as exc:
            self._forget(stream)
            raise TunnelError(f"cannot open stream: {exc}") from exc
        if end_stream:
            stream._sent_end = True
        await self._flush()
        return stream

    async def _send_headers(
        self, stream: TunnelStream, headers: Headers, *, end_stream: bool
    ) -> None:
        self._check_stream(stream)
        try:
            self._conn.send_headers(stream.stream_id, headers, end_stream=end_stream)
        except h2.exceptions.StreamClosedError as exc:
            raise stream.error or StreamReset(ErrorCodes.STREAM_CLOSED) from exc
        await self._flush()
        if end_stream:
            stream._sent_end = True
            self._maybe_finished(stream)

    async def _send_data(self, stream: TunnelStream, data: bytes, *, end_stream: bool) -> None:
        view = memoryview(data)
        while True:
            self._check_stream(stream)
            try:
                window = self._conn.local_flow_control_window(stream.stream_id)
            except h2.exceptions.StreamClosedError as exc:
                raise stream.error or StreamReset(ErrorCodes.STREAM_CLOSED) from exc
            if window <= 0 and len(view) > 0:
                await self._wait_window()
                continue
            size = min(len(view), window, self._conn.max_outbound_frame_size)
            chunk, view = view[:size], view[size:]
            last = end_stream and not view
            try:
                self._conn.send_data(stream.stream_id, bytes(chunk), end_stream=last)
                self._budget.data_sent()
            except h2.exceptions.StreamClosedError as exc:
                raise stream.error or StreamReset(ErrorCodes.STREAM_CLOSED) from exc
            await self._flush()
            if not view:
                break
        if end_stream:
            stream._sent_end = True
            self._maybe_finished(stream)

    def _check_stream(self, stream: TunnelStream) -> None:
        if stream.error is not None:
            raise stream.error
        if self._closed is not None:
            raise self._closed

    async def _wait_window(self) -> None:
        event = self._window_changed
        if self._closed is not None:
            raise self._closed
        await event.wait()

    def _wake_senders(self) -> None:
        self._window_changed.set()
        self._window_changed = trio.Event()

    async def _reset(self, stream: TunnelStream, error_code: int) -> None:
        if self._closed is None and stream.stream_id in self._streams:
            try:
                self._conn.reset_stream(stream.stream_id, error_code)
            except h2.exceptions.ProtocolError:
                pass  # already closed on h2's side
            with trio.CancelScope(shield=True), trio.move_on_after(self.liveness.write_timeout):
                try:
                    await self._flush()
                except TunnelClosed:
                    pass
        stream._on_error(StreamReset(error_code))
        self._forget(stream)

    def _maybe_finished(self, stream: TunnelStream) -> None:
        if stream._received_end and stream._sent_end:
            # Both directions done: the slot is free. The stream object stays readable.
            self._forget(stream, keep_open=True)

    def _forget(self, stream: TunnelStream, *, keep_open: bool = False) -> None:
        if self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]
            self._streams_changed.set()
            self._streams_changed = trio.Event()
            self._wake_senders()

    def _acknowledge(self, stream_id: int, length: int) -> None:
        if length and self._closed is None:
            try:
                self._conn.acknowledge_received_data(length, stream_id)
            except h2.exceptions.ProtocolError:
                pass

    async def _acknowledge_and_flush(self, stream_id: int, length: int) -> None:
        # Data that already arrived stays valid after the tunnel closes (a drained backend
        # closes right after its last END_STREAM): returning the window is then pointless, and
        # an unfinished stream reports the loss on its next wait instead.
        if self._closed is not None:
            return
        self._acknowledge(stream_id, length)
        try:
            await self._flush()
        except TunnelClosed:
            pass

    # -- writing and closing -----------------------------------------------------------------

    async def _flush(self) -> None:
        """Send everything h2 has queued; the only place that writes to the socket."""
        async with self._send_lock:
            if self._closed is not None:
                raise self._closed
            data = self._conn.data_to_send()
            if not data:
                return
            # A half-written frame would corrupt the connection, so the write is shielded and
            # bounded by its own deadline instead of the caller's cancellation.
            with trio.CancelScope(shield=True):
                with trio.move_on_after(self.liveness.write_timeout) as scope:
                    try:
                        await self._socket.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                        self._mark_closed(TunnelClosed(f"tunnel lost while writing: {exc!r}"))
                        raise self._closed from exc  # type: ignore[misc]
            if scope.cancelled_caught:
                self._mark_closed(TunnelClosed("tunnel write timed out"))
                raise self._closed  # type: ignore[misc]

    async def _fail(self, error_code: int, reason: str) -> None:
        """Close the connection with a GOAWAY carrying ``error_code`` (best effort)."""
        if self._closed is not None:
            return
        try:
            self._conn.close_connection(error_code=error_code)
        except h2.exceptions.ProtocolError:
            pass
        with trio.move_on_after(1):
            try:
                await self._flush()
            except TunnelClosed:
                pass
        self._mark_closed(TunnelClosed(reason, error_code=error_code))

    async def goaway(self) -> None:
        """Start a graceful drain: tell the peer to open no new streams (RFC 9113 §6.8)."""
        if self._goaway_sent or self._closed is not None:
            return
        self._goaway_sent = True
        last = GRACEFUL_LAST_STREAM if self.client_side else self._conn.highest_inbound_stream_id
        self._conn.send_graceful_goaway(last)
        try:
            await self._flush()
        except TunnelClosed:
            pass

    async def drain(self, timeout: float) -> None:
        """GOAWAY, let in-flight streams finish for up to ``timeout`` seconds, then close."""
        await self.goaway()
        with trio.move_on_after(timeout):
            await self.wait_idle()
        self._linger = True
        await self._fail(ErrorCodes.NO_ERROR, "drained")

    async def aclose(self) -> None:
        await self._fail(ErrorCodes.NO_ERROR, "closed")

    def _mark_closed(self, error: TunnelClosed) -> None:
        if self._closed is not None:
            return
        self._closed = error
        for stream in list(self._streams.values()):
            stream._on_error(error)
        self._streams.clear()
        self._streams_changed.set()
        self._wake_senders()
        self._closed_event.set()
        self._remote_settings_seen.set()  # a tunnel that closes before its SETTINGS wakes waiters
        self._reader_scope.cancel()  # the reader may be blocked in receive_some

    def statistics(self) -> dict[str, float]:
        return {
            "open_streams": len(self._streams),
            "streams_opened": self.streams_opened,
            "outbound_window": self._conn.outbound_flow_control_window,
            "idle_for": trio.current_time() - self._last_received,
            "closed": float(self._closed is not None),
        }

"""The trio driver of one HTTP/2 tunnel: the router is its client, the backend its server.

One reader task owns the socket's receive side and never awaits a consumer; every write goes
through :meth:`TunnelConnection._flush`, one lock-guarded ``send_all`` with a deadline, so h2's
unbounded output buffer never grows past what the socket accepts. A failed or timed-out write
marks the tunnel dead.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import h2.events
import h2.exceptions
import trio
from h2.errors import ErrorCodes

from ._budget import FrameBudget
from ._frame_guard import FrameGuard
from ._h2 import GRACEFUL_LAST_STREAM, H2Settings, make_connection
from ._linger import linger_close
from ._liveness import Liveness, Verdict
from ._stream import Headers, TunnelStream
from ._stream_table import StreamTable
from .errors import StreamReset, TunnelClosed, TunnelError

__all__ = ["StreamHandler", "TunnelConnection"]

log = logging.getLogger("ptth.tunnel")

RECEIVE_SIZE = 256 * 1024
# Seconds a drained tunnel waits, half-closed, for the peer to close too (see ._linger).
LINGER = 2.0


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
        self._streams = StreamTable()
        self._closed: TunnelClosed | None = None
        self._closed_event = trio.Event()
        self._remote_settings_seen = trio.Event()
        self._goaway_received: int | None = None
        self._goaway_sent = False
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
        await self._streams.wait_changed()

    async def wait_idle(self) -> None:
        """Until no stream is open (used by drain)."""
        while self._streams and not self.closed:
            await self._streams.wait_changed()

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
                    await linger_close(self._socket, timeout=LINGER)
                await trio.aclose_forcefully(self._socket)

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
        await self._flush_unless_closed()

    def _handle(self, event: h2.events.Event) -> None:
        self._budget.count(event, trio.current_time())
        if isinstance(event, h2.events.DataReceived) and event.stream_id not in self._streams:
            # DATA for a stream already forgotten still used window: give it back.
            self._acknowledge(event.stream_id, event.flow_controlled_length or 0)
        elif isinstance(event, h2.events.RequestReceived):
            self._on_request(event)
        elif isinstance(event, h2.events.WindowUpdated):
            self._streams.wake_senders()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._remote_settings_seen.set()
            self._streams.wake_senders()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._on_goaway(event)
        else:
            self._streams.deliver(event)

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id or 0
        if self._goaway_sent or self._on_stream is None or self._handler_nursery is None:
            # RFC 9113 §8.7: refused streams were never processed, so the client may retry them.
            self._conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        stream = TunnelStream(self, stream_id)
        stream._on_headers(list(event.headers or []))
        if event.stream_ended is not None:
            stream._on_end()
        self._streams.add(stream)
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
        if self._goaway_received is None:
            log.info("tunnel %s: peer is draining (GOAWAY, last stream %d)", self.tunnel_id, last)
        self._goaway_received = last
        if self.client_side:
            self._streams.refuse_above(last)
        self._streams.changed()

    # -- keepalive ---------------------------------------------------------------------------

    async def _keepalive(self) -> None:
        while True:
            await trio.sleep(self.liveness.check_every)
            silent = trio.current_time() - self._last_received
            verdict = self.liveness.verdict(silent)
            if verdict is Verdict.DEAD:
                log.warning("tunnel %s: no answer for %.1f s; dead", self.tunnel_id, silent)
                await self._fail(ErrorCodes.NO_ERROR, f"no answer for {silent:.1f} s")
                return
            if verdict is Verdict.PING:
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
        self._streams.add(stream)
        self.streams_opened += 1
        try:
            self._conn.send_headers(stream_id, headers, end_stream=end_stream)
        except h2.exceptions.ProtocolError as exc:
            self._streams.forget(stream)
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
            self._streams.release_if_done(stream)

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
            self._streams.release_if_done(stream)

    def _check_stream(self, stream: TunnelStream) -> None:
        if stream.error is not None:
            raise stream.error
        if self._closed is not None:
            raise self._closed

    async def _wait_window(self) -> None:
        if self._closed is not None:
            raise self._closed
        await self._streams.wait_window()

    async def _reset(self, stream: TunnelStream, error_code: int) -> None:
        if self._closed is None and stream.stream_id in self._streams:
            try:
                self._conn.reset_stream(stream.stream_id, error_code)
            except h2.exceptions.ProtocolError:
                pass  # already closed on h2's side
            with trio.CancelScope(shield=True), trio.move_on_after(self.liveness.write_timeout):
                await self._flush_unless_closed()
        stream._on_error(StreamReset(error_code))
        self._streams.forget(stream)

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
        await self._flush_unless_closed()

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

    async def _flush_unless_closed(self) -> None:
        """:meth:`_flush` where a closed tunnel needs no answer (``closed`` already reports it)."""
        try:
            await self._flush()
        except TunnelClosed:
            pass

    async def _fail(self, error_code: int, reason: str) -> None:
        """Close the connection with a GOAWAY carrying ``error_code`` (best effort)."""
        if self._closed is not None:
            return
        try:
            self._conn.close_connection(error_code=error_code)
        except h2.exceptions.ProtocolError:
            pass
        with trio.move_on_after(1):
            await self._flush_unless_closed()
        self._mark_closed(TunnelClosed(reason, error_code=error_code))

    async def goaway(self) -> None:
        """Start a graceful drain: tell the peer to open no new streams (RFC 9113 §6.8)."""
        if self._goaway_sent or self._closed is not None:
            return
        self._goaway_sent = True
        last = GRACEFUL_LAST_STREAM if self.client_side else self._conn.highest_inbound_stream_id
        self._conn.send_graceful_goaway(last)
        await self._flush_unless_closed()

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
        self._streams.fail_all(error)
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

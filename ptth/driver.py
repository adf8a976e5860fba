"""The one driver of the engine, written once with anyio: it runs on asyncio and on trio.

Per connection (ARCHITECTURE.md, "The driver"): one **reader** task owns the receive side and
never awaits a consumer (it feeds the engine and wakes whoever the engine's events name); one
**writer** task is the only one that writes, taking everything the engine has queued in one
``send`` per wake-up, under a deadline (a peer that stops reading is as dead as a silent one);
one **timer** task sleeps until the engine's next deadline (keepalive). Stream tasks only change
engine state and wait on their stream's own event, so a slow stream never stalls another.

Roles: the router's tunnel client and agent mode's h2c upstream open streams
(:meth:`Connection.open_stream`); the backend's tunnel server and the front end's HTTP/2 server
get one ``on_stream`` task per stream the peer opens.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
import anyio.lowlevel
from h2.errors import ErrorCodes

from ._native import Spawn, Waiter, event_factory, open_spawner
from .engine import (
    BudgetLimits,
    ConnectionClosed,
    Engine,
    Event,
    GoAwayReceived,
    Headers,
    Liveness,
    Settings,
    SettingsReceived,
    StreamChanged,
    StreamOpened,
    StreamsChanged,
    StreamState,
)
from .errors import TunnelClosed, TunnelError

__all__ = ["Connection", "Stream", "StreamHandler", "linger_close"]

log = logging.getLogger("ptth.tunnel")

RECEIVE_SIZE = 256 * 1024
# Seconds a drained connection waits, half-closed, for the peer to close too (linger_close).
LINGER = 2.0
_CLOSE_FLUSH = 1.0  # seconds the last bytes (a GOAWAY) may take when closing

StreamHandler = Callable[["Stream"], Awaitable[None]]
_BROKEN = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class Stream:
    """One stream as its task sees it; every wait raises the stream's error if it failed."""

    __slots__ = ("_waiter", "connection", "state")
    _waiter: Waiter | None

    def __init__(self, connection: Connection, state: StreamState) -> None:
        self.connection = connection
        self.state = state
        self._waiter = None
        state.handle = self

    # -- state -------------------------------------------------------------------------------

    @property
    def tunnel_id(self) -> str:
        return self.connection.tunnel_id

    @property
    def stream_id(self) -> int:
        return self.state.stream_id

    @property
    def headers(self) -> Headers | None:
        return self.state.headers

    @property
    def informational(self) -> list[Headers]:
        return self.state.informational

    @property
    def trailers(self) -> Headers | None:
        return self.state.trailers

    @property
    def sent_status(self) -> int | None:
        """The final response status this side sent, if any (1xx are not final)."""
        return self.state.sent_status

    @property
    def received_end(self) -> bool:
        return self.state.received_end

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed (bounded by the window granted to the stream)."""
        return self.state.buffered

    @property
    def error(self) -> TunnelError | None:
        return self.state.error

    @property
    def finished(self) -> bool:
        return self.state.finished

    # -- waiting -----------------------------------------------------------------------------

    def _notify(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set()

    def wake(self) -> None:
        """Wake tasks blocked in :meth:`wait_changed` (the owner's own state changed)."""
        self._notify()

    async def wait_changed(self) -> None:
        """Until anything happens on the stream; never raises."""
        waiter = self._waiter
        if waiter is None:
            waiter = self._waiter = self.connection.new_event()
        await waiter.wait()

    async def _wait(self) -> None:
        if self.state.error is not None:
            raise self.state.error
        await self.wait_changed()

    # -- receiving ---------------------------------------------------------------------------

    async def receive_headers(self) -> Headers:
        """The peer's header block (request on the server side, final response on the client)."""
        state = self.state
        while state.headers is None:
            if state.received_end:
                raise TunnelError("stream ended without headers")
            await self._wait()
        return state.headers

    async def wait_informational(self, seen: int) -> Headers | None:
        """Wait until more than ``seen`` 1xx blocks arrived (returns it) or final headers (None)."""
        state = self.state
        while len(state.informational) <= seen and state.headers is None:
            await self._wait()
        if len(state.informational) > seen:
            return state.informational[seen]
        return None

    async def receive_data(self) -> bytes:
        """The next chunk of the body, or b"" at its end (then ``trailers`` may be set).

        Credit goes back to the peer here, not on arrival: a slow consumer paces the sender.
        """
        state = self.state
        while not state.buffered:
            if state.received_end:
                return b""
            await self._wait()
        connection = self.connection
        data = connection.engine.read(state)
        if connection.engine.credit_pending:
            connection.wake_writer()
        return data

    # -- sending -----------------------------------------------------------------------------

    async def send_headers(self, headers: Headers, *, end_stream: bool = False) -> None:
        connection = self.connection
        connection.engine.send_headers(self.state, headers, end_stream=end_stream)
        connection.wake_writer()
        if end_stream:
            await self._drain_queue()

    async def send_data(self, data: bytes, *, end_stream: bool = False) -> None:
        """Send body bytes; returns once they are framed (flow control is the backpressure)."""
        connection = self.connection
        connection.engine.send_data(self.state, data, end_stream=end_stream)
        connection.wake_writer()
        await self._drain_queue()

    async def _drain_queue(self) -> None:
        state = self.state
        engine = self.connection.engine
        while state.send_pending or engine.backlogged:
            if state.error is not None:
                raise state.error
            if engine.closed is not None:
                raise engine.closed
            if state.send_pending:
                await self.wait_changed()
            else:
                await self.connection.wait_flushed()
        if state.error is not None and not state.sent_end:
            raise state.error

    async def send_trailers(self, headers: Headers) -> None:
        await self.send_headers(headers, end_stream=True)

    async def end(self) -> None:
        if not self.state.sent_end and not self.state.end_queued:
            await self.send_data(b"", end_stream=True)

    async def reset(self, error_code: int = ErrorCodes.CANCEL) -> None:
        """Abort the stream (RST_STREAM); safe to call at any time, even when cancelled."""
        self.connection.engine.reset(self.state, error_code)
        self.connection.wake_writer()

    async def aclose(self) -> None:
        """Release the stream: reset it unless both directions completed."""
        self.connection.engine.release(self.state)
        self.connection.wake_writer()
        self._notify()


class Connection:
    """Drive one engine over an anyio byte stream until the connection closes (:meth:`run`)."""

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        *,
        client_side: bool,
        tunnel_id: str = "",
        settings: Settings | None = None,
        liveness: Liveness | None = None,
        limits: BudgetLimits | None = None,
        on_stream: StreamHandler | None = None,
        initial_data: bytes = b"",
        upgrade: tuple[bytes, Headers] | None = None,
    ) -> None:
        self.tunnel_id = tunnel_id
        self._upgrade = upgrade
        self.client_side = client_side
        self.liveness = liveness or Liveness()
        self.engine = Engine(
            client_side=client_side,
            settings=settings,
            liveness=self.liveness,
            limits=limits,
            accept_streams=on_stream is not None,
        )
        self._socket = stream
        self._on_stream = on_stream
        self._initial_data = initial_data
        self._kick: Waiter | None = None
        self._flushed: anyio.Event | None = None
        self._streams_changed: anyio.Event | None = None
        self._settings_seen = False
        self._settings_waiters: list[anyio.Event] = []
        self._closed_waiters: list[anyio.Event] = []
        self._writer_done: anyio.Event | None = None
        self._spawn: Spawn | None = None
        self.new_event: Callable[[], Waiter] = anyio.Event
        self._reader_scope: anyio.CancelScope | None = None
        self._linger = False
        self._finished = False

    # -- state -------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.engine.closed is not None

    @property
    def close_reason(self) -> TunnelClosed | None:
        return self.engine.closed

    @property
    def draining(self) -> bool:
        return self.engine.draining

    @property
    def open_streams(self) -> int:
        return self.engine.open_streams

    @property
    def streams_opened(self) -> int:
        return self.engine.streams_opened

    @property
    def peer_max_concurrent_streams(self) -> int:
        return self.engine.peer_max_concurrent_streams

    @property
    def rtt(self) -> float | None:
        return self.engine.rtt

    def statistics(self) -> dict[str, float]:
        return self.engine.statistics()

    async def wait_remote_settings(self) -> None:
        """Until the peer's first SETTINGS arrived, or the connection closed (check ``closed``)."""
        if self._settings_seen or self.closed:
            return
        event = anyio.Event()
        self._settings_waiters.append(event)
        await event.wait()

    async def wait_closed(self) -> None:
        """Until the connection is over: its last bytes (a GOAWAY) sent, the stream closed."""
        if self._finished:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        self._closed_waiters.append(event)
        await event.wait()

    async def wait_streams_changed(self) -> None:
        """Until a stream opens or closes, a GOAWAY arrives or the connection closes."""
        if self.closed:
            await anyio.lowlevel.checkpoint()
            return
        if self._streams_changed is None:
            self._streams_changed = anyio.Event()
        await self._streams_changed.wait()

    async def wait_idle(self) -> None:
        """Until no stream is open (used by drain)."""
        while self.engine.open_streams and not self.closed:
            await self.wait_streams_changed()

    async def wait_flushed(self) -> None:
        """Until the writer has taken the engine's output (senders wait here when it piles up)."""
        if self.closed:
            return
        if self._flushed is None:
            self._flushed = anyio.Event()
        await self._flushed.wait()

    # -- the connection's tasks --------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the byte stream until the connection closes; stream handlers run inside this."""
        self.engine.start(anyio.current_time())
        self._writer_done = anyio.Event()
        self.new_event = event_factory()
        try:
            async with anyio.create_task_group() as group, open_spawner() as spawn:
                self._spawn = spawn
                group.start_soon(self._writer)
                group.start_soon(self._timer)
                if self._upgrade is not None:
                    self.engine.accept_upgrade(*self._upgrade)
                    self._dispatch(self.engine.take_events())
                    self.wake_writer()
                if self._initial_data:
                    self._feed(self._initial_data)
                task_status.started()
                with anyio.CancelScope() as self._reader_scope:
                    if not self.closed:
                        await self._reader()
                with anyio.move_on_after(_CLOSE_FLUSH):
                    await self._writer_done.wait()
                group.cancel_scope.cancel()
        finally:
            if not self.closed:
                self._dispatch(self.engine.connection_lost("connection closed"))
            with anyio.CancelScope(shield=True):
                if self._linger:
                    await linger_close(self._socket, timeout=LINGER)
                await anyio.aclose_forcefully(self._socket)
            self._writer_done.set()
            self._finished = True
            for event in self._closed_waiters:
                event.set()
            self._closed_waiters.clear()

    async def _reader(self) -> None:
        receive = self._socket.receive
        while self.engine.closed is None:
            try:
                data = await receive(RECEIVE_SIZE)
            except anyio.EndOfStream:
                self._dispatch(self.engine.connection_lost("peer closed the connection"))
                return
            except _BROKEN as exc:
                self._dispatch(self.engine.connection_lost(f"connection lost: {exc!r}"))
                return
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        engine = self.engine
        self._dispatch(engine.receive_data(data, anyio.current_time()))
        if engine.wants_write:  # most requests need no answer frame until the app sends one
            self.wake_writer()

    async def _writer(self) -> None:
        engine = self.engine
        send = self._socket.send
        timeout = self.liveness.write_timeout
        assert self._writer_done is not None
        # One scope for the writer's life whose deadline is armed only while a send is under
        # way: a peer that stops reading is as dead as a silent one.
        with anyio.CancelScope() as deadline:
            try:
                while True:
                    data = engine.data_to_send()
                    self._dispatch(engine.take_events())
                    if data:
                        deadline.deadline = anyio.current_time() + timeout
                        try:
                            await send(data)
                        except _BROKEN as exc:
                            lost = f"connection lost while writing: {exc!r}"
                            self._dispatch(engine.connection_lost(lost))
                        deadline.deadline = math.inf
                        flushed, self._flushed = self._flushed, None
                        if flushed is not None:
                            flushed.set()
                        continue
                    if engine.closed is not None:
                        return
                    kick = self._kick = self.new_event()
                    await kick.wait()
            finally:
                self._writer_done.set()
        if deadline.cancelled_caught and engine.closed is None:
            self._dispatch(engine.connection_lost("write timed out (peer not reading)"))

    async def _timer(self) -> None:
        engine = self.engine
        while True:
            deadline = engine.next_deadline()
            if deadline is None:
                return
            await anyio.sleep_until(deadline)
            self._dispatch(engine.handle_timer(anyio.current_time()))
            self.wake_writer()

    def wake_writer(self) -> None:
        kick = self._kick
        if kick is not None:
            self._kick = None
            kick.set()

    def _dispatch(self, events: list[Event]) -> None:
        for event in events:
            kind = type(event)
            if kind is StreamChanged:
                handle = event.stream.handle  # type: ignore[attr-defined]
                if handle is not None:
                    handle._notify()
            elif kind is StreamOpened:
                self._start_handler(event.stream)  # type: ignore[attr-defined]
            elif kind is StreamsChanged:
                changed, self._streams_changed = self._streams_changed, None
                if changed is not None:
                    changed.set()
            elif kind is SettingsReceived:
                self._settings_arrived()
            elif kind is GoAwayReceived:
                self._on_goaway(event)  # type: ignore[arg-type]
            elif kind is ConnectionClosed:
                self._on_closed(event)  # type: ignore[arg-type]

    def _settings_arrived(self) -> None:
        self._settings_seen = True
        for waiter in self._settings_waiters:
            waiter.set()
        self._settings_waiters.clear()

    def _on_goaway(self, event: GoAwayReceived) -> None:
        if event.error_code:
            log.warning("tunnel %s: peer sent GOAWAY %s", self.tunnel_id, event.error_code)
        else:
            log.info(
                "tunnel %s: peer is draining (GOAWAY, last stream %d)",
                self.tunnel_id,
                event.last_stream_id,
            )

    def _on_closed(self, event: ConnectionClosed) -> None:
        error = event.error
        if error.error_code not in (None, ErrorCodes.NO_ERROR):
            log.warning("tunnel %s: %s; closing", self.tunnel_id, error)
        self._settings_arrived()  # a connection that closes before its SETTINGS wakes waiters
        for waiter in (self._streams_changed, self._flushed):
            if waiter is not None:
                waiter.set()
        self._streams_changed = self._flushed = None
        if self._reader_scope is not None:
            self._reader_scope.cancel()  # the reader may be blocked in receive
        self.wake_writer()

    def _start_handler(self, state: StreamState) -> None:
        stream = Stream(self, state)
        assert self._spawn is not None
        self._spawn(self._run_handler, stream)

    async def _run_handler(self, stream: Stream) -> None:
        assert self._on_stream is not None
        try:
            await self._on_stream(stream)
        except TunnelError as exc:
            log.info("tunnel %s: stream %d ended: %s", self.tunnel_id, stream.stream_id, exc)
        except Exception:
            # One broken request must never take the connection (and its other streams) down.
            log.exception("tunnel %s: stream %d handler failed", self.tunnel_id, stream.stream_id)
        finally:
            await stream.aclose()

    # -- client side and lifecycle -----------------------------------------------------------

    async def open_stream(self, headers: Headers, *, end_stream: bool = False) -> Stream:
        """Client side: start a request. Raises :class:`TunnelClosed` if draining or closed."""
        state = self.engine.open_stream(headers, end_stream=end_stream)
        self.wake_writer()
        return Stream(self, state)

    async def goaway(self) -> None:
        """Start a graceful drain: tell the peer to open no new streams (RFC 9113 §6.8)."""
        self.engine.goaway()
        self.wake_writer()
        self._dispatch(self.engine.take_events())

    async def drain(self, timeout: float) -> None:
        """GOAWAY, let in-flight streams finish for up to ``timeout`` seconds, then close."""
        await self.goaway()
        with anyio.move_on_after(timeout):
            await self.wait_idle()
        self._linger = True
        await self.close(ErrorCodes.NO_ERROR, "drained")

    async def close(self, error_code: int = ErrorCodes.NO_ERROR, reason: str = "closed") -> None:
        """GOAWAY with ``error_code`` (sent within a second, best effort), then close."""
        if self.closed:
            return
        self._dispatch(self.engine.close(error_code, reason))
        self.wake_writer()
        if self._writer_done is not None:
            with anyio.move_on_after(_CLOSE_FLUSH):
                await self._writer_done.wait()

    async def aclose(self) -> None:
        await self.close(ErrorCodes.NO_ERROR, "closed")

    async def abort(self) -> None:
        """Drop the byte stream at once, with no GOAWAY (the peer sees the connection lost)."""
        self._dispatch(self.engine.connection_lost("connection aborted"))
        await anyio.aclose_forcefully(self._socket)


async def linger_close(stream: anyio.abc.ByteStream, *, timeout: float) -> None:
    """Half-close, then read (and ignore) until the peer closes, for at most ``timeout`` s.

    Closing a socket with unread input makes the kernel answer with RST, and an RST can destroy
    what the peer has not read yet, our GOAWAY included: a stream the peer opened just before it
    would then fail as "connection lost" instead of being retried as refused (RFC 9113 §6.8).
    With EOF the peer reads everything, then closes its side.
    """
    with anyio.move_on_after(timeout):
        try:
            await stream.send_eof()
            while await stream.receive(RECEIVE_SIZE):
                pass
        except (anyio.EndOfStream, NotImplementedError, *_BROKEN):
            pass

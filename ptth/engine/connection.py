"""The sans-I/O HTTP/2 engine: one connection's decisions, with bytes and time in, events out.

It wraps h2's ``H2Connection`` and owns what h2 leaves to its user (ARCHITECTURE.md, "The
engine"): the stream table and its concurrency slots; per-stream receive buffers whose credit
goes back to the peer only when the consumer reads (flow control is the backpressure); send
queues framed as windows allow; the graceful GOAWAY policy (RFC 9113 §6.8) and refused streams;
the frame guard; flood budgets; keepalive. It never reads a clock or touches a socket:

    engine.receive_data(data, now) -> events      bytes from the peer
    engine.data_to_send() -> bytes                bytes for the peer (call after any change)
    engine.next_deadline() / handle_timer(now)    keepalive and liveness
    engine.open_stream / send_headers / send_data / read / reset / release / goaway / close

Flow control, per direction we receive on:

* **Connection credit is returned as DATA arrives**, so streams whose consumers stall cost only
  their own stream window, never the connection's: their neighbours keep flowing. Only when the
  unread bytes of all streams together pass ``Settings.max_buffered`` is connection credit held
  back until the consumers catch up.
* **Stream credit is returned as the consumer reads.** A stream starts with
  ``Settings.stream_window``; each time its consumer has read half a window and left at most
  half a window unread, its window doubles (up to ``max_stream_window``, from a per-connection
  ``window_pool``), so a fast consumer reaches line rate and a stalled one never grows.
"""

from __future__ import annotations

import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

from ..errors import StreamReset, TunnelClosed, TunnelError
from ._h2 import GRACEFUL_LAST_STREAM, make_h2
from .budget import BudgetLimits, FrameBudget
from .events import (
    ConnectionClosed,
    Event,
    GoAwayReceived,
    SettingsReceived,
    StreamChanged,
    StreamOpened,
    StreamsChanged,
)
from .frame_guard import FrameGuard
from .liveness import Liveness, Verdict
from .settings import Settings
from .stream import Headers, StreamState

__all__ = ["COALESCE_LIMIT", "OUTBOUND_HIGH_WATER", "Engine"]

COALESCE_LIMIT = 256 * 1024  # bytes joined into one read() result at most
# Framed bytes per data_to_send(); senders wait above it. Larger batches cost more than they
# save: 1 MiB took 4.5 CPU s/GB against 3.0 at 256 KiB (allocator churn; benchmarks/README.md).
OUTBOUND_HIGH_WATER = 256 * 1024
_PING = b"ptthping"
_REFUSED = ErrorCodes.REFUSED_STREAM


class Engine:
    """One HTTP/2 connection; ``client_side`` is the role (the router is the tunnel's client)."""

    def __init__(
        self,
        *,
        client_side: bool,
        settings: Settings | None = None,
        liveness: Liveness | None = None,
        limits: BudgetLimits | None = None,
        accept_streams: bool = True,
        now: float = 0.0,
    ) -> None:
        self.client_side = client_side
        self.settings = s = settings or Settings()
        self.liveness = liveness or Liveness()
        self._budget = FrameBudget(limits or BudgetLimits())
        local: dict[h2.settings.SettingCodes, int] = {
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: s.stream_window,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: s.max_frame_size,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: s.max_header_list_size,
        }
        if client_side:
            # Never accept pushed streams; h2 does unless told otherwise.
            local[h2.settings.SettingCodes.ENABLE_PUSH] = 0
        else:
            local[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = s.max_concurrent_streams
            if s.enable_connect_protocol:
                local[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL] = 1
        self._conn = make_h2(
            client_side=client_side,
            local=local,
            max_frame_size=s.max_frame_size,
            max_header_list_size=s.max_header_list_size,
            connection_window=s.connection_window,
            validate_outbound=s.validate_outbound_headers,
        )
        self._guard = FrameGuard(max_frame_size=s.max_frame_size, server_side=not client_side)
        self._accept = accept_streams and not client_side
        self._streams: dict[int, StreamState] = {}
        self._sendable: dict[int, StreamState] = {}
        self._events: list[Event] = []
        self._changed: dict[int, StreamState] = {}
        self._slots_changed = False
        self._pool = s.window_pool
        self._arrived = 0  # connection credit not yet returned
        self._credit_threshold = max(1, s.connection_window // 4)
        self._buffered_total = 0
        self._unflushed = 0
        self._last_received = now
        self._ping_sent: float | None = None
        self.rtt: float | None = None
        self.closed: TunnelClosed | None = None
        self.goaway_received: int | None = None
        self.goaway_sent = False
        self.settings_received = False
        self.streams_opened = 0
        self.bytes_received = 0
        # Credit was queued by read(): the driver should run data_to_send() soon.
        self.credit_pending = False

    # -- state -------------------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        """No new streams may be opened (a GOAWAY went either way, or the connection closed)."""
        return self.closed is not None or self.goaway_received is not None or self.goaway_sent

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def peer_max_concurrent_streams(self) -> int:
        return int(self._conn.remote_settings.max_concurrent_streams)

    @property
    def backlogged(self) -> bool:
        """Framed output is piling up faster than it is taken: senders should wait."""
        return self._unflushed > OUTBOUND_HIGH_WATER

    @property
    def wants_write(self) -> bool:
        """``data_to_send()`` would return something (frames queued, or body bytes waiting)."""
        return bool(self._sendable) or self._conn.has_output()

    @property
    def buffered(self) -> int:
        """Received body bytes not yet read, over every stream."""
        return self._buffered_total

    def stream(self, stream_id: int) -> StreamState | None:
        return self._streams.get(stream_id)

    # -- input -------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """The connection starts now (resets the liveness clock)."""
        self._last_received = now

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Feed bytes from the peer; returns what happened."""
        if self.closed is not None:
            return self._take_events()
        self._last_received = now
        self.bytes_received += len(data)
        budget = self._budget
        guard = self._guard
        # One slice of at most FRAMES_PER_SLICE frames at a time: checked by the guard, parsed
        # by h2, counted against the budgets. A flood of tiny frames then costs a bounded amount
        # of work past its budget, not a whole read's worth (ARCHITECTURE.md, "Budgets").
        pos, end = 0, len(data)
        while pos < end:
            stop, problem = guard.scan(data, pos)
            if problem is not None:
                self._fail(guard.error_code, problem)
                return self._take_events()
            try:
                h2_events = self._conn.receive_data(data if stop - pos == end else data[pos:stop])
            except h2.exceptions.ProtocolError as exc:
                code = getattr(exc, "error_code", None) or ErrorCodes.PROTOCOL_ERROR
                self._fail(code, f"protocol error from peer: {exc}", goaway=False)
                return self._take_events()
            # Frames that made no event at all (on a stream we reset, h2 answers each with
            # RST_STREAM and tells us nothing) are charged too; see FrameBudget.silent.
            budget.silent(guard.slice_frames - len(h2_events), now)
            for event in h2_events:
                budget.count(event, now)
                if budget.exceeded is not None:
                    break  # nothing behind a flood reaches the application (or its memory)
                self._handle(event, now)
            if budget.exceeded is not None or self.closed is not None:
                break
            pos = stop
        if budget.exceeded is not None and self.closed is None:
            # h2 has already queued an ACK for every PING/SETTINGS of the flood: send none.
            self._conn.clear_outbound_data_buffer()
            self._fail(ErrorCodes.ENHANCE_YOUR_CALM, budget.exceeded)
        elif self._arrived >= self._credit_threshold:
            self._return_connection_credit()
        return self._take_events()

    def _handle(self, event: h2.events.Event, now: float) -> None:
        kind = type(event)
        if kind is h2.events.DataReceived:
            self._on_data(event)  # type: ignore[arg-type]
        elif kind is h2.events.StreamEnded:
            state = self._streams.get(event.stream_id)  # type: ignore[attr-defined]
            if state is not None:
                state.received_end = True
                self._touch(state)
                self._release_if_done(state)
        elif kind is h2.events.RequestReceived:
            self._on_request(event)  # type: ignore[arg-type]
        elif kind is h2.events.ResponseReceived or kind is h2.events.TrailersReceived:
            state = self._streams.get(event.stream_id)  # type: ignore[attr-defined]
            if state is not None:
                block = list(event.headers or [])  # type: ignore[attr-defined]
                if state.headers is None:
                    state.headers = block
                else:
                    state.trailers = block
                self._touch(state)
        elif kind is h2.events.InformationalResponseReceived:
            state = self._streams.get(event.stream_id)  # type: ignore[attr-defined]
            if state is not None:
                state.informational.append(list(event.headers or []))  # type: ignore[attr-defined]
                self._budget.informational(len(state.informational))
                self._touch(state)
        elif kind is h2.events.StreamReset:
            state = self._streams.get(event.stream_id)  # type: ignore[attr-defined]
            if state is not None:
                code = int(event.error_code or 0)  # type: ignore[attr-defined]
                self._fail_stream(state, StreamReset(code, refused=code == _REFUSED))
        elif kind is h2.events.WindowUpdated or kind is h2.events.RemoteSettingsChanged:
            if kind is h2.events.RemoteSettingsChanged:
                self.settings_received = True
                self._events.append(SettingsReceived())
                self._slots_changed = True
            # Queued data may now fit: data_to_send frames it.
        elif kind is h2.events.PingAckReceived:
            if self._ping_sent is not None:
                self.rtt = now - self._ping_sent
                self._ping_sent = None
        elif kind is h2.events.ConnectionTerminated:
            self._on_goaway(event)  # type: ignore[arg-type]

    def _on_data(self, event: h2.events.DataReceived) -> None:
        flow = event.flow_controlled_length or 0
        self._arrived += flow
        state = self._streams.get(event.stream_id or 0)
        if state is None:
            return  # a stream we already let go: its connection credit comes back anyway
        data = event.data or b""
        if data:
            state.push(data, flow)
            self._buffered_total += len(data)
            self._touch(state)
        else:
            state.unacked += flow  # padding only: nothing to hand out

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id or 0
        if self.goaway_sent or not self._accept:
            # RFC 9113 §8.7: refused streams were never processed, so the client may retry.
            try:
                self._conn.reset_stream(stream_id, _REFUSED)
                self._budget.reset_sent()
            except h2.exceptions.ProtocolError:
                pass  # a GOAWAY later in the same batch already closed h2's side
            return
        state = StreamState(stream_id, self.settings.stream_window)
        state.headers = list(event.headers or [])
        if event.stream_ended is not None:
            state.received_end = True
        self._add(state)
        self._events.append(StreamOpened(state))

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        code = int(event.error_code or 0)
        last = int(event.last_stream_id if event.last_stream_id is not None else 0)
        self._events.append(GoAwayReceived(last, code))
        if code != ErrorCodes.NO_ERROR:
            self._close(TunnelClosed(f"peer sent GOAWAY ({code})", error_code=code))
            return
        self.goaway_received = last
        self._slots_changed = True
        if self.client_side:
            for stream_id, state in list(self._streams.items()):
                if stream_id > last:
                    self._fail_stream(state, StreamReset(_REFUSED, refused=True))

    # -- time --------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` next has something to do (None once closed)."""
        if self.closed is not None:
            return None
        live = self.liveness
        if self._ping_sent is None or self._ping_sent < self._last_received:
            return self._last_received + min(live.interval, live.dead_after)
        # Unanswered: PING again after ``interval``, or give up at ``dead_after``, which first.
        return min(self._last_received + live.dead_after, self._ping_sent + live.interval)

    def handle_timer(self, now: float) -> list[Event]:
        if self.closed is None:
            silent = now - self._last_received
            verdict = self.liveness.verdict(silent)
            if verdict is Verdict.DEAD:
                self._fail(ErrorCodes.NO_ERROR, f"no answer for {silent:.1f} s")
            elif verdict is Verdict.PING and (
                self._ping_sent is None
                or self._ping_sent < self._last_received
                or now - self._ping_sent >= self.liveness.interval
            ):
                self._conn.ping(_PING)
                self._ping_sent = now
        return self._take_events()

    # -- output ------------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Bytes for the peer: h2's queued frames plus queued body data that windows allow."""
        if self._sendable and self.closed is None:
            self._frame_queued(OUTBOUND_HIGH_WATER)
        self._unflushed = 0
        self.credit_pending = False
        return self._conn.data_to_send()

    def take_events(self) -> list[Event]:
        """Events produced by calls other than receive_data / handle_timer (e.g. framing)."""
        return self._take_events()

    def _take_events(self) -> list[Event]:
        if self._changed:
            self._events.extend(StreamChanged(state) for state in self._changed.values())
            self._changed.clear()
        if self._slots_changed:
            self._slots_changed = False
            self._events.append(StreamsChanged())
        events, self._events = self._events, []
        return events

    def _frame_queued(self, budget: int) -> None:
        """Turn queued body bytes into DATA frames, round robin, as flow control allows."""
        conn = self._conn
        max_frame = conn.max_outbound_frame_size
        progress = True
        while progress and self._sendable and budget > 0:
            progress = False
            for stream_id, state in list(self._sendable.items()):
                if budget <= 0:
                    break
                if state.queued:
                    try:
                        window = conn.local_flow_control_window(stream_id)
                    except h2.exceptions.StreamClosedError:
                        self._fail_stream(state, StreamReset(ErrorCodes.STREAM_CLOSED))
                        continue
                    if window <= 0:
                        continue
                    size = min(window, max_frame, state.queued, budget)
                    chunk = state.take(size)
                    last = state.end_queued and not state.queued and state.trailers_queued is None
                    conn.send_data(stream_id, chunk, end_stream=last)
                    self._budget.data_sent()
                    budget -= size
                    progress = True
                    if last:
                        state.end_queued = False
                        self._sent_end(state)
                    # Rotate: the next pass (or call) starts with another stream.
                    self._sendable.pop(stream_id, None)
                    if state.send_pending and state.active:
                        self._sendable[stream_id] = state
                    else:
                        self._touch(state)
                    continue
                if state.trailers_queued is not None:
                    trailers, state.trailers_queued = state.trailers_queued, None
                    state.end_queued = False
                    conn.send_headers(stream_id, trailers, end_stream=True)
                    self._sent_end(state)
                elif state.end_queued:
                    state.end_queued = False
                    conn.end_stream(stream_id)
                    self._sent_end(state)
                self._sendable.pop(stream_id, None)
                self._touch(state)
                progress = True

    # -- commands ----------------------------------------------------------------------------

    def accept_upgrade(self, settings_header: bytes, headers: Headers) -> None:
        """Server side of an ``Upgrade: h2c`` (RFC 7540 §3.2): the HTTP/1.1 request, already
        complete, becomes stream 1; ``settings_header`` is its HTTP2-Settings value."""
        self._conn.initiate_upgrade_connection(settings_header)
        state = StreamState(1, self.settings.stream_window)
        state.headers = list(headers)
        state.received_end = True
        self._add(state)
        self._events.append(StreamOpened(state))

    def open_stream(self, headers: Headers, *, end_stream: bool = False) -> StreamState:
        """Client role: start a request. Raises :class:`TunnelClosed` if draining or closed."""
        if self.draining:
            raise self.closed or TunnelClosed("connection is draining")
        stream_id = self._conn.get_next_available_stream_id()
        try:
            self._conn.send_headers(stream_id, headers, end_stream=end_stream)
        except h2.exceptions.ProtocolError as exc:
            raise TunnelError(f"cannot open stream: {exc}") from exc
        state = StreamState(stream_id, self.settings.stream_window)
        self._add(state)
        self.streams_opened += 1
        if end_stream:
            state.sent_end = True
        return state

    def send_headers(self, state: StreamState, headers: Headers, *, end_stream: bool) -> None:
        """Response headers (server role), or trailers (``end_stream``) after the body."""
        self._check(state)
        if end_stream and state.send_pending:
            state.trailers_queued = headers  # after the queued body (RFC 9113 §8.1)
            self._sendable[state.stream_id] = state
            return
        try:
            self._conn.send_headers(state.stream_id, headers, end_stream=end_stream)
        except h2.exceptions.StreamClosedError as exc:
            raise state.error or StreamReset(ErrorCodes.STREAM_CLOSED) from exc
        if state.sent_status is None and headers and headers[0][0] == b":status":
            status = int(headers[0][1])
            if status >= 200 or status == 101:
                state.sent_status = status
        if end_stream:
            self._sent_end(state)

    def send_data(self, state: StreamState, data: bytes, *, end_stream: bool = False) -> None:
        """Queue body bytes; they are framed as windows allow. Watch ``state.queued`` to pace."""
        self._check(state)
        if state.sent_end or state.end_queued:
            raise TunnelError("stream already ended")
        if not state.send_pending and not self.backlogged:
            size = len(data)
            try:
                if size == 0:
                    if end_stream:
                        self._conn.end_stream(state.stream_id)
                        self._sent_end(state)
                    return
                max_size = self._conn.max_outbound_frame_size
                if size <= max_size and size <= self._conn.local_flow_control_window(
                    state.stream_id
                ):
                    # The common case: one frame, sent now (it still waits for the writer).
                    self._conn.send_data(state.stream_id, data, end_stream=end_stream)
                    self._budget.data_sent()
                    self._unflushed += size
                    if end_stream:
                        self._sent_end(state)
                    return
            except h2.exceptions.StreamClosedError as exc:
                raise state.error or StreamReset(ErrorCodes.STREAM_CLOSED) from exc
        if data:
            state.enqueue(data)
        if end_stream:
            state.end_queued = True
        self._sendable[state.stream_id] = state

    def read(self, state: StreamState, limit: int = COALESCE_LIMIT) -> bytes:
        """Take buffered body bytes (b"" if none); their stream credit goes back to the peer."""
        if not state.buffered:
            return b""
        data, flow = state.pop(limit)
        self._buffered_total -= len(data)
        if state.active and self.closed is None:
            state.unacked += flow
            self._credit_stream(state)
            if self._arrived >= self._credit_threshold:
                self._return_connection_credit()
        return data

    def reset(self, state: StreamState, error_code: int = ErrorCodes.CANCEL) -> None:
        """Abort the stream (RST_STREAM); harmless if it is already gone."""
        if state.active and self.closed is None:
            try:
                self._conn.reset_stream(state.stream_id, error_code)
            except h2.exceptions.ProtocolError:
                pass  # already closed on h2's side
            self._budget.reset_sent()
        self._fail_stream(state, StreamReset(error_code))

    def release(self, state: StreamState) -> None:
        """The stream's user is done with it: reset it unless both directions completed."""
        if state.active and not (state.received_end and state.sent_end):
            self.reset(state, ErrorCodes.CANCEL)
        self._buffered_total -= state.buffered
        state.drop_buffered()
        if state.active:
            self._forget(state)

    def goaway(self) -> None:
        """Start a graceful drain: the peer must open no new streams (RFC 9113 §6.8)."""
        if self.goaway_sent or self.closed is not None:
            return
        self.goaway_sent = True
        self._slots_changed = True
        last = GRACEFUL_LAST_STREAM if self.client_side else self._conn.highest_inbound_stream_id
        self._conn.send_graceful_goaway(last)

    def close(self, error_code: int = ErrorCodes.NO_ERROR, reason: str = "closed") -> list[Event]:
        """End the connection with a GOAWAY carrying ``error_code``; send data_to_send() last."""
        self._fail(error_code, reason)
        return self._take_events()

    def connection_lost(self, reason: str) -> list[Event]:
        """The byte stream is gone (no GOAWAY can be sent)."""
        self._close(TunnelClosed(reason))
        return self._take_events()

    def statistics(self) -> dict[str, float]:
        return {
            "open_streams": len(self._streams),
            "streams_opened": self.streams_opened,
            "outbound_window": self._conn.outbound_flow_control_window,
            "buffered": self._buffered_total,
            "window_pool": self._pool,
            "rtt": -1.0 if self.rtt is None else self.rtt,
            "closed": float(self.closed is not None),
        }

    # -- internals ---------------------------------------------------------------------------

    def _check(self, state: StreamState) -> None:
        if state.error is not None:
            raise state.error
        if self.closed is not None:
            raise self.closed

    def _touch(self, state: StreamState) -> None:
        self._changed[state.stream_id] = state

    def _add(self, state: StreamState) -> None:
        self._streams[state.stream_id] = state
        self._slots_changed = True
        self._sync_counts()

    def _forget(self, state: StreamState) -> None:
        if self._streams.pop(state.stream_id, None) is not None:
            state.active = False
            self._sendable.pop(state.stream_id, None)
            self._pool += state.window - self.settings.stream_window
            self._slots_changed = True
            self._sync_counts()

    def _sync_counts(self) -> None:
        count = len(self._streams)
        if self.client_side:
            self._conn.set_open_counts(inbound=0, outbound=count)
        else:
            self._conn.set_open_counts(inbound=count, outbound=0)

    def _sent_end(self, state: StreamState) -> None:
        state.sent_end = True
        self._release_if_done(state)

    def _release_if_done(self, state: StreamState) -> None:
        if state.received_end and state.sent_end:
            self._forget(state)  # the slot is free; the state stays readable

    def _fail_stream(self, state: StreamState, error: TunnelError) -> None:
        if state.error is None and not (state.received_end and state.sent_end):
            state.error = error
        state.drop_queue()
        self._touch(state)
        self._forget(state)

    def _credit_stream(self, state: StreamState) -> None:
        if state.received_end or state.unacked < state.window // 2:
            return
        growth = 0
        limit = self.settings.max_stream_window
        if state.buffered <= state.window // 2 and state.window < limit and self._pool > 0:
            growth = min(state.window, limit - state.window, self._pool)
            state.window += growth
            self._pool -= growth
        increment, state.unacked = state.unacked + growth, 0
        try:
            self._conn.increment_flow_control_window(increment, stream_id=state.stream_id)
        except (h2.exceptions.ProtocolError, KeyError):
            return  # the stream closed on h2's side meanwhile
        self.credit_pending = True

    def _return_connection_credit(self) -> None:
        if self._buffered_total > self.settings.max_buffered or self.closed is not None:
            return  # consumers are behind: hold connection credit until they read
        increment, self._arrived = self._arrived, 0
        self._conn.increment_flow_control_window(increment)
        self.credit_pending = True

    def _fail(self, error_code: int, reason: str, *, goaway: bool = True) -> None:
        if self.closed is not None:
            return
        if goaway:
            try:
                self._conn.close_connection(error_code=error_code)
            except h2.exceptions.ProtocolError:
                pass
        self._close(TunnelClosed(reason, error_code=error_code))

    def _close(self, error: TunnelClosed) -> None:
        if self.closed is not None:
            return
        self.closed = error
        for state in list(self._streams.values()):
            if state.error is None and not (state.received_end and state.sent_end):
                state.error = error
            state.drop_queue()
            state.active = False
            self._touch(state)
        self._streams.clear()
        self._sendable.clear()
        self._slots_changed = True
        self._events.append(ConnectionClosed(error))

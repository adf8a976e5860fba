"""The sans-I/O engine alone: no event loop, explicit time, bytes pumped by hand.

The far end is either another :class:`Engine` or a raw python-hyper ``H2Connection`` driven by
hand, so the engine is not only tested against itself. Groups: round trips; the send queue;
receive flow control (credit on read, connection credit on arrival, window growth, the pool,
``max_buffered``); GOAWAY; budgets; the frame guard; keepalive; a Hypothesis property test over
random and mutated frame streams.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptth.engine import (
    CLIENT_PREFACE,
    BudgetLimits,
    ConnectionClosed,
    Engine,
    Event,
    GoAwayReceived,
    Liveness,
    Settings,
    StreamChanged,
    StreamOpened,
    StreamState,
)
from ptth.errors import StreamReset, TunnelClosed, TunnelError

REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", b"/")]
OK = [(b":status", b"200")]
SMALL = Settings(
    stream_window=16384,
    max_stream_window=131072,
    window_pool=1 << 20,
    connection_window=65536,
    max_frame_size=16384,
)


# -- helpers -------------------------------------------------------------------------------


class GracefulPeer(h2.connection.H2Connection):
    """h2, except that a NO_ERROR GOAWAY leaves the connection open (RFC 9113 §6.8).

    Stock h2 closes its side on any GOAWAY, so it cannot play a peer that keeps its in-flight
    streams, or races a new stream with our GOAWAY.
    """

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[Any]]:
        if frame.error_code:
            return super()._receive_goaway_frame(frame)  # type: ignore[no-any-return]
        event = h2.events.ConnectionTerminated()
        event.error_code, event.last_stream_id = ErrorCodes.NO_ERROR, frame.last_stream_id
        return [], [event]


def raw_peer(*, client_side: bool, graceful: bool = False) -> h2.connection.H2Connection:
    """A plain h2 connection with its preface queued (the far end of an engine)."""
    kind = GracefulPeer if graceful else h2.connection.H2Connection
    conn = kind(h2.config.H2Configuration(client_side=client_side, header_encoding=None))
    conn.initiate_connection()
    return conn


def raw_frame(frame_type: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """Any frame, unknown types included (hyperframe cannot serialise those)."""
    header = len(payload).to_bytes(3, "big") + bytes([frame_type, flags])
    return header + stream_id.to_bytes(4, "big") + payload


@dataclass
class Link:
    """An engine and a raw h2 peer, with everything each side saw."""

    engine: Engine
    peer: h2.connection.H2Connection
    events: list[Event] = field(default_factory=list)
    peer_events: list[h2.events.Event] = field(default_factory=list)
    now: float = 0.0

    def send(self) -> list[Event]:
        """Bytes the peer queued go to the engine (and nothing goes back)."""
        return self.feed(self.peer.data_to_send())

    def feed(self, data: bytes) -> list[Event]:
        """Hand-made bytes go to the engine."""
        events = self.engine.receive_data(data, self.now)
        self.events += events
        return events

    def exchange(self) -> tuple[list[Event], list[h2.events.Event]]:
        """Move bytes both ways until neither side has more to say."""
        engine_events: list[Event] = []
        peer_events: list[h2.events.Event] = []
        for _ in range(100):
            out = self.engine.data_to_send()
            engine_events += self.engine.take_events()
            back = self.peer.data_to_send()
            if not out and not back:
                break
            if out:
                peer_events += self.peer.receive_data(out)
            if back:
                engine_events += self.engine.receive_data(back, self.now)
        self.events += engine_events
        self.peer_events += peer_events
        return engine_events, peer_events

    def peer_saw(self, kind: type[h2.events.Event]) -> list[h2.events.Event]:
        return [event for event in self.peer_events if isinstance(event, kind)]


def link(
    *,
    client_side: bool,
    settings: Settings = SMALL,
    limits: BudgetLimits | None = None,
    liveness: Liveness | None = None,
    accept_streams: bool = True,
    graceful: bool = False,
) -> Link:
    engine = Engine(
        client_side=client_side,
        settings=settings,
        limits=limits,
        liveness=liveness,
        accept_streams=accept_streams,
    )
    pair = Link(engine, raw_peer(client_side=not client_side, graceful=graceful))
    pair.exchange()
    assert engine.settings_received and engine.closed is None
    return pair


def credit(pair: Link, size: int, stream_id: int | None = None) -> None:
    """The raw peer grants ``size`` more bytes on a stream, or on the connection."""
    pair.peer.increment_flow_control_window(size, stream_id=stream_id)


def pump(a: Engine, b: Engine, now: float = 0.0) -> tuple[list[Event], list[Event]]:
    """Two engines: move bytes both ways until both are quiet."""
    events_a: list[Event] = []
    events_b: list[Event] = []
    for _ in range(200):
        out_a, out_b = a.data_to_send(), b.data_to_send()
        events_a += a.take_events()
        events_b += b.take_events()
        if not out_a and not out_b:
            break
        if out_a:
            events_b += b.receive_data(out_a, now)
        if out_b:
            events_a += a.receive_data(out_b, now)
    return events_a, events_b


def engines(settings: Settings = SMALL) -> tuple[Engine, Engine]:
    client = Engine(client_side=True, settings=settings)
    server = Engine(client_side=False, settings=settings)
    pump(client, server)
    assert client.settings_received and server.settings_received
    return client, server


def opened(events: list[Event]) -> list[StreamState]:
    return [event.stream for event in events if isinstance(event, StreamOpened)]


def read_all(engine: Engine, state: StreamState) -> bytes:
    parts = []
    while chunk := engine.read(state):
        parts.append(chunk)
    return b"".join(parts)


def closed_with(engine: Engine, code: int) -> None:
    assert engine.closed is not None, "engine should be closed"
    assert engine.closed.error_code == code, engine.closed


def goaway_code(peer_events: list[h2.events.Event]) -> int | None:
    codes = [e.error_code for e in peer_events if isinstance(e, h2.events.ConnectionTerminated)]
    return int(codes[-1]) if codes and codes[-1] is not None else None


# -- round trips ---------------------------------------------------------------------------


def test_request_and_response_between_two_engines() -> None:
    client, server = engines()
    body = bytes(range(256)) * 1000  # several windows: needs credit from reads to finish
    request = client.open_stream(REQUEST)
    client.send_data(request, body, end_stream=True)
    got = b""
    handled: StreamState | None = None
    for _ in range(100):
        _, server_events = pump(client, server)
        for state in opened(server_events):
            handled = state
        assert handled is not None
        got += read_all(server, handled)
        if handled.received_end and not handled.buffered:
            break
    assert handled is not None and got == body
    assert handled.headers == REQUEST

    server.send_headers(handled, OK, end_stream=False)
    server.send_data(handled, body[::-1], end_stream=True)
    answer = b""
    for _ in range(100):
        pump(client, server)
        answer += read_all(client, request)
        if request.received_end and not request.buffered:
            break
    assert request.headers == OK and answer == body[::-1]
    assert request.finished and handled.finished and request.error is None
    assert client.open_streams == server.open_streams == 0
    assert client.closed is None and server.closed is None


def test_engine_client_against_a_raw_h2_server() -> None:
    pair = link(client_side=True)
    request = pair.engine.open_stream(REQUEST, end_stream=True)
    _, peer_events = pair.exchange()
    received = [e for e in peer_events if isinstance(e, h2.events.RequestReceived)]
    assert [e.stream_id for e in received] == [request.stream_id]
    assert dict(received[0].headers)[b":path"] == b"/"
    pair.peer.send_headers(request.stream_id, OK)
    pair.peer.send_data(request.stream_id, b"hello", end_stream=True)
    events, _ = pair.exchange()
    assert any(isinstance(e, StreamChanged) and e.stream is request for e in events)
    assert request.headers == OK and pair.engine.read(request) == b"hello"
    assert request.received_end and request.finished and pair.engine.open_streams == 0


def test_engine_server_against_a_raw_h2_client() -> None:
    pair = link(client_side=False)
    pair.peer.send_headers(1, REQUEST)
    pair.peer.send_data(1, b"ping", end_stream=True)
    events, _ = pair.exchange()
    [state] = opened(events)
    assert state.stream_id == 1 and state.headers == REQUEST
    assert pair.engine.read(state) == b"ping" and state.received_end
    pair.engine.send_headers(state, OK, end_stream=False)
    pair.engine.send_data(state, b"pong", end_stream=True)
    _, peer_events = pair.exchange()
    kinds = [type(e) for e in peer_events if getattr(e, "stream_id", None) == 1]
    assert kinds == [h2.events.ResponseReceived, h2.events.DataReceived, h2.events.StreamEnded]
    assert pair.peer_saw(h2.events.DataReceived)[0].data == b"pong"
    assert pair.engine.open_streams == 0


def test_trailers_wait_for_the_queued_body() -> None:
    pair = link(client_side=False)
    pair.peer.send_headers(1, REQUEST, end_stream=True)
    [state] = opened(pair.exchange()[0])
    pair.engine.send_headers(state, OK, end_stream=False)
    body = b"b" * 100_000  # the peer's stream window is 65535: the tail waits in the queue
    pair.engine.send_data(state, body)
    pair.engine.send_headers(state, [(b"grpc-status", b"0")], end_stream=True)
    assert state.queued > 0 and state.trailers_queued is not None and not state.sent_end
    _, peer_events = pair.exchange()
    assert not pair.peer_saw(h2.events.TrailersReceived), "trailers must not overtake the body"
    for _ in range(20):
        for event in peer_events:
            if isinstance(event, h2.events.DataReceived):
                credit(pair, event.flow_controlled_length, 1)
                credit(pair, event.flow_controlled_length)
        _, peer_events = pair.exchange()
        if pair.peer_saw(h2.events.StreamEnded):
            break
    on_stream = [e for e in pair.peer_events if getattr(e, "stream_id", None) == 1]
    assert sum(len(e.data) for e in pair.peer_saw(h2.events.DataReceived)) == len(body)
    assert [type(e) for e in on_stream[-2:]] == [h2.events.TrailersReceived, h2.events.StreamEnded]
    assert on_stream[-2].headers == [(b"grpc-status", b"0")]
    assert all(not isinstance(e, h2.events.DataReceived) for e in on_stream[-2:])
    assert state.sent_end and not state.send_pending


def test_commands_on_a_closed_engine_raise_tunnel_closed() -> None:
    client, _server = engines()
    state = client.open_stream(REQUEST)
    client.close(ErrorCodes.NO_ERROR, "bye")
    with pytest.raises(TunnelClosed):
        client.open_stream(REQUEST)
    with pytest.raises(TunnelError):
        client.send_data(state, b"x")
    assert client.draining and client.next_deadline() is None


# -- the send queue ------------------------------------------------------------------------


def test_send_queue_is_framed_as_the_peer_opens_windows() -> None:
    pair = link(client_side=True)
    state = pair.engine.open_stream(REQUEST)
    body = b"q" * 200_000
    pair.engine.send_data(state, body, end_stream=True)
    _, peer_events = pair.exchange()
    first = sum(len(e.data) for e in peer_events if isinstance(e, h2.events.DataReceived))
    assert first == 65535, "exactly the peer's initial stream window is framed"
    assert state.queued == len(body) - first and not state.sent_end
    max_frame = pair.peer.max_inbound_frame_size  # what the peer announced (16 KiB)
    assert all(len(e.data) <= max_frame for e in pair.peer_saw(h2.events.DataReceived))
    pair.exchange()
    assert state.queued == len(body) - first, "nothing more without WINDOW_UPDATE"
    credit(pair, 10_000, state.stream_id)
    credit(pair, first - 10_000)
    _, peer_events = pair.exchange()
    assert sum(len(e.data) for e in peer_events if isinstance(e, h2.events.DataReceived)) == 10_000
    for _ in range(20):
        for event in peer_events:
            if isinstance(event, h2.events.DataReceived):
                credit(pair, event.flow_controlled_length, event.stream_id)
                credit(pair, event.flow_controlled_length)
        _, peer_events = pair.exchange()
    total = sum(len(e.data) for e in pair.peer_saw(h2.events.DataReceived))
    assert total == len(body) and state.sent_end and state.queued == 0
    assert len(pair.peer_saw(h2.events.StreamEnded)) == 1


def test_queued_streams_are_framed_round_robin() -> None:
    pair = link(client_side=True)
    # The peer's connection window (65535) is the bottleneck; stream windows are large.
    pair.peer.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    pair.exchange()
    first = pair.engine.open_stream(REQUEST)
    second = pair.engine.open_stream(REQUEST)
    pair.engine.send_data(first, b"1" * 300_000, end_stream=True)
    pair.engine.send_data(second, b"2" * 300_000, end_stream=True)
    order: list[int] = []
    for _ in range(60):
        _, peer_events = pair.exchange()
        granted = 0
        for event in peer_events:
            if isinstance(event, h2.events.DataReceived):
                order.append(event.stream_id)
                granted += event.flow_controlled_length
        if not granted:
            break
        credit(pair, granted)  # the connection window only: stream windows are large
    assert order.count(first.stream_id) == order.count(second.stream_id) > 10
    assert all(a != b for a, b in itertools.pairwise(order)), order
    assert first.sent_end and second.sent_end


def test_a_stalled_peer_window_does_not_hold_other_streams() -> None:
    pair = link(client_side=True)
    stuck = pair.engine.open_stream(REQUEST)
    moving = pair.engine.open_stream(REQUEST)
    pair.engine.send_data(stuck, b"s" * 100_000)  # the peer never credits this stream
    pair.engine.send_data(moving, b"m" * 50_000, end_stream=True)
    for _ in range(10):
        _, peer_events = pair.exchange()
        for event in peer_events:
            if isinstance(event, h2.events.DataReceived):
                credit(pair, event.flow_controlled_length)
                if event.stream_id == moving.stream_id:
                    credit(pair, event.flow_controlled_length, event.stream_id)
    assert moving.sent_end and moving.queued == 0
    assert stuck.queued == 100_000 - 65535 and not stuck.sent_end


# -- receive flow control ------------------------------------------------------------------


def _response(pair: Link, count: int = 1) -> list[StreamState]:
    """``count`` requests from the engine (client), each answered with headers by the peer."""
    states = [pair.engine.open_stream(REQUEST, end_stream=True) for _ in range(count)]
    pair.exchange()
    for state in states:
        pair.peer.send_headers(state.stream_id, OK)
    pair.exchange()
    return states


def _stream_credit(pair: Link, stream_id: int) -> int:
    updates = pair.peer_saw(h2.events.WindowUpdated)
    return sum(e.delta or 0 for e in updates if e.stream_id == stream_id)


def test_stream_credit_returns_only_when_the_consumer_reads() -> None:
    pair = link(client_side=True)
    [state] = _response(pair)
    half = SMALL.stream_window // 2
    pair.peer.send_data(state.stream_id, b"d" * (half // 2))
    pair.peer.send_data(state.stream_id, b"e" * (half // 2))
    pair.exchange()
    assert state.buffered == half
    assert _stream_credit(pair, state.stream_id) == 0, "no credit before the consumer reads"
    assert pair.peer.local_flow_control_window(state.stream_id) == SMALL.stream_window - half
    assert pair.engine.read(state, limit=1) == b"d" * (half // 2)  # one frame's worth
    pair.exchange()
    assert _stream_credit(pair, state.stream_id) == 0, "credit comes back half a window at a time"
    pair.engine.read(state)
    assert pair.engine.credit_pending
    pair.exchange()
    assert _stream_credit(pair, state.stream_id) >= half
    assert pair.peer.local_flow_control_window(state.stream_id) >= SMALL.stream_window


def test_connection_credit_returns_on_arrival_so_a_stalled_stream_blocks_no_one() -> None:
    pair = link(client_side=True)
    stalled, moving = _response(pair, 2)
    pair.peer.send_data(stalled.stream_id, b"s" * SMALL.stream_window)  # never read
    pair.exchange()
    assert pair.peer.local_flow_control_window(stalled.stream_id) == 0
    assert pair.peer.outbound_flow_control_window == SMALL.connection_window, (
        "connection credit came back without any read"
    )
    total, target = 0, 16 * SMALL.connection_window
    while total < target:
        size = min(
            pair.peer.local_flow_control_window(moving.stream_id),
            pair.peer.outbound_flow_control_window,
            pair.peer.max_outbound_frame_size,
            target - total,
        )
        assert size > 0, "the second stream starved"
        pair.peer.send_data(moving.stream_id, b"m" * size)
        pair.exchange()
        total += len(read_all(pair.engine, moving))
        pair.exchange()
    assert total == target
    assert stalled.buffered == SMALL.stream_window and stalled.window == SMALL.stream_window


def test_window_grows_for_a_consumer_that_keeps_up_and_not_for_a_stalled_one() -> None:
    pair = link(client_side=True)
    fast, slow = _response(pair, 2)
    pair.peer.send_data(slow.stream_id, b"s" * SMALL.stream_window)
    windows = []
    for _ in range(40):
        size = min(
            pair.peer.local_flow_control_window(fast.stream_id),
            pair.peer.outbound_flow_control_window,
            pair.peer.max_outbound_frame_size,
        )
        pair.peer.send_data(fast.stream_id, b"f" * size)
        pair.exchange()
        read_all(pair.engine, fast)
        pair.exchange()
        windows.append(fast.window)
    assert windows[0] == 2 * SMALL.stream_window
    assert sorted(set(windows)) == [32768, 65536, 131072]  # doubles, capped at the maximum
    # Credit goes back half a window at a time: the peer may send at least that much.
    assert pair.peer.local_flow_control_window(fast.stream_id) >= SMALL.max_stream_window // 2
    assert slow.window == SMALL.stream_window
    grown = SMALL.max_stream_window - SMALL.stream_window
    assert pair.engine.statistics()["window_pool"] == SMALL.window_pool - grown


def test_window_growth_is_limited_by_the_pool() -> None:
    tight = Settings(
        stream_window=16384,
        max_stream_window=1 << 20,
        window_pool=20000,
        connection_window=65536,
        max_frame_size=16384,
    )
    pair = link(client_side=True, settings=tight)
    [state] = _response(pair)
    for _ in range(20):
        size = min(pair.peer.local_flow_control_window(state.stream_id), 16384)
        pair.peer.send_data(state.stream_id, b"x" * size)
        pair.exchange()
        read_all(pair.engine, state)
        pair.exchange()
    assert state.window == 16384 + 20000
    assert pair.engine.statistics()["window_pool"] == 0


@pytest.mark.parametrize("ending", ["end_stream", "reset", "release"])
def test_the_pool_is_returned_when_a_stream_ends(ending: str) -> None:
    pair = link(client_side=True)
    [state] = _response(pair)
    for _ in range(10):
        size = min(pair.peer.local_flow_control_window(state.stream_id), 16384)
        pair.peer.send_data(state.stream_id, b"x" * size)
        pair.exchange()
        read_all(pair.engine, state)
        pair.exchange()
    assert pair.engine.statistics()["window_pool"] < SMALL.window_pool
    if ending == "end_stream":
        pair.peer.end_stream(state.stream_id)
        pair.exchange()
    elif ending == "reset":
        pair.peer.reset_stream(state.stream_id, ErrorCodes.CANCEL)
        pair.exchange()
        assert isinstance(state.error, StreamReset)
    else:
        pair.engine.release(state)
    assert not state.active and pair.engine.open_streams == 0
    assert pair.engine.statistics()["window_pool"] == SMALL.window_pool


def test_max_buffered_holds_connection_credit_until_consumers_read() -> None:
    held = Settings(
        stream_window=16384,
        max_stream_window=16384,
        connection_window=65536,
        max_frame_size=16384,
        max_buffered=40000,
    )
    pair = link(client_side=True, settings=held)
    states = _response(pair, 3)
    for state in states[:2]:  # 32 KiB unread: under max_buffered, credit still flows
        pair.peer.send_data(state.stream_id, b"u" * 16384)
    pair.exchange()
    assert pair.peer.outbound_flow_control_window == 65536
    pair.peer.send_data(states[2].stream_id, b"u" * 16384)  # 48 KiB unread: over the limit
    pair.exchange()
    assert pair.engine.buffered == 3 * 16384
    assert pair.peer.outbound_flow_control_window == 65536 - 16384, "credit is held"
    read_all(pair.engine, states[0])
    pair.exchange()
    assert pair.engine.buffered == 2 * 16384
    assert pair.peer.outbound_flow_control_window == 65536, "reading released it"


def test_unread_data_of_a_released_stream_leaves_the_buffered_count() -> None:
    pair = link(client_side=True)
    [state] = _response(pair)
    pair.peer.send_data(state.stream_id, b"x" * 1000)
    pair.exchange()
    assert pair.engine.buffered == 1000
    pair.engine.release(state)
    assert pair.engine.buffered == 0 and state.buffered == 0
    assert pair.engine.read(state) == b""
    _, peer_events = pair.exchange()
    resets = [e for e in peer_events if isinstance(e, h2.events.StreamReset)]
    assert [r.error_code for r in resets] == [ErrorCodes.CANCEL]


# -- GOAWAY --------------------------------------------------------------------------------


def test_graceful_goaway_keeps_in_flight_streams_between_engines() -> None:
    client, server = engines()
    in_flight = client.open_stream(REQUEST, end_stream=True)
    [handled] = opened(pump(client, server)[1])
    server.goaway()
    client_events, _ = pump(client, server)
    assert any(isinstance(e, GoAwayReceived) and e.error_code == 0 for e in client_events)
    assert client.draining and server.draining
    assert client.closed is None and server.closed is None
    with pytest.raises(TunnelClosed):
        client.open_stream(REQUEST)
    server.send_headers(handled, OK, end_stream=False)
    server.send_data(handled, b"finished", end_stream=True)
    pump(client, server)
    assert in_flight.headers == OK and client.read(in_flight) == b"finished"
    assert in_flight.finished and in_flight.error is None
    assert client.open_streams == server.open_streams == 0


def test_new_streams_after_our_goaway_are_refused() -> None:
    pair = link(client_side=False, graceful=True)
    pair.peer.send_headers(1, REQUEST, end_stream=True)
    [first] = opened(pair.exchange()[0])
    pair.engine.goaway()
    pair.peer.send_headers(3, REQUEST, end_stream=True)  # raced with our GOAWAY
    events, peer_events = pair.exchange()
    assert not opened(events), "no stream may open after our GOAWAY"
    goaways = [e for e in peer_events if isinstance(e, h2.events.ConnectionTerminated)]
    assert goaways[0].error_code == 0 and goaways[0].last_stream_id == 1
    resets = [e for e in peer_events if isinstance(e, h2.events.StreamReset)]
    assert [(r.stream_id, r.error_code) for r in resets] == [(3, ErrorCodes.REFUSED_STREAM)]
    pair.engine.send_headers(first, OK, end_stream=True)  # the in-flight stream still completes
    _, peer_events = pair.exchange()
    assert any(isinstance(e, h2.events.ResponseReceived) for e in peer_events)
    assert pair.engine.closed is None and pair.engine.open_streams == 0


def test_streams_above_a_received_goaway_last_id_fail_as_refused() -> None:
    pair = link(client_side=True)
    kept, refused = (pair.engine.open_stream(REQUEST, end_stream=True) for _ in range(2))
    pair.exchange()
    # The raw peer sends a graceful GOAWAY naming stream 1 as the last it processes (h2's own
    # close_connection would close its side too, so the frame is written by hand).
    goaway = GoAwayFrame(0)
    goaway.last_stream_id = kept.stream_id
    goaway.error_code = 0
    events = pair.engine.receive_data(goaway.serialize(), 0.0)
    assert GoAwayReceived(kept.stream_id, 0) in events
    assert isinstance(refused.error, StreamReset) and refused.error.refused
    assert refused.error.error_code == ErrorCodes.REFUSED_STREAM
    assert kept.error is None and pair.engine.closed is None and pair.engine.draining
    pair.peer.send_headers(kept.stream_id, OK, end_stream=True)
    pair.exchange()
    assert kept.headers == OK and kept.finished and pair.engine.open_streams == 0


def test_refused_stream_reset_is_marked_refused() -> None:
    pair = link(client_side=True)
    state = pair.engine.open_stream(REQUEST, end_stream=True)
    pair.exchange()
    pair.peer.reset_stream(state.stream_id, ErrorCodes.REFUSED_STREAM)
    pair.exchange()
    assert isinstance(state.error, StreamReset) and state.error.refused
    other = pair.engine.open_stream(REQUEST, end_stream=True)
    pair.exchange()
    pair.peer.reset_stream(other.stream_id, ErrorCodes.INTERNAL_ERROR)
    pair.exchange()
    assert isinstance(other.error, StreamReset) and not other.error.refused


def test_goaway_with_an_error_closes_the_engine() -> None:
    pair = link(client_side=True)
    state = pair.engine.open_stream(REQUEST, end_stream=True)
    pair.exchange()
    pair.peer.close_connection(ErrorCodes.INTERNAL_ERROR)
    events = pair.send()
    assert any(isinstance(e, ConnectionClosed) for e in events)
    closed_with(pair.engine, ErrorCodes.INTERNAL_ERROR)
    assert isinstance(state.error, TunnelClosed)


def test_refused_request_followed_by_a_goaway_error_in_one_batch() -> None:
    """A request we refuse and an error GOAWAY in one read: h2 closed before we reset."""
    pair = link(client_side=False, graceful=True)
    pair.engine.goaway()
    pair.exchange()
    pair.peer.send_headers(1, REQUEST, end_stream=True)
    pair.peer.close_connection(ErrorCodes.INTERNAL_ERROR)
    events = pair.send()  # must not raise h2's ProtocolError
    assert any(isinstance(e, ConnectionClosed) for e in events)
    closed_with(pair.engine, ErrorCodes.INTERNAL_ERROR)


# -- budgets -------------------------------------------------------------------------------

LIMITS = BudgetLimits(
    control_frames_per_window=20,
    priority_frames_per_window=20,
    unknown_frames_per_window=20,
    resets_per_window=20,
    consecutive_empty_frames=20,
    window_updates_per_data_frame=2,
    window_update_allowance=20,
    informational_per_stream=20,
    goaways=5,
    silent_frames_allowance=20,
    silent_frames_per_reset=20,
    acks_per_window=20,
)


def _flood_pings(pair: Link, count: int) -> None:
    # The peer's first SETTINGS is charged to the same budget as PINGs.
    for i in range(count - 1):
        pair.peer.ping(i.to_bytes(8, "big"))


def _flood_settings(pair: Link, count: int) -> None:
    for _ in range(count - 1):
        pair.peer.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100})


def _flood_priority(pair: Link, count: int) -> None:
    frames = b""
    for _ in range(count):
        frame = PriorityFrame(1)
        frame.depends_on, frame.stream_weight = 0, 15
        frames += frame.serialize()
    pair.feed(frames)


def _flood_unknown(pair: Link, count: int) -> None:
    pair.feed(raw_frame(0xFA, 0, 0, b"hello") * count)


def _flood_resets(pair: Link, count: int) -> None:
    for _ in range(count):  # "rapid reset": open a stream, cancel it at once
        stream_id = pair.peer.get_next_available_stream_id()
        pair.peer.send_headers(stream_id, REQUEST, end_stream=True)
        pair.peer.reset_stream(stream_id, ErrorCodes.CANCEL)


def _flood_empty_data(pair: Link, count: int) -> None:
    pair.peer.send_headers(1, REQUEST)
    for _ in range(count):
        pair.peer.send_data(1, b"")


def _flood_window_updates(pair: Link, count: int) -> None:
    for _ in range(count):
        pair.peer.increment_flow_control_window(1)


def _flood_informational(pair: Link, count: int) -> None:
    for _ in range(count):
        pair.peer.send_headers(1, [(b":status", b"100")])


def _flood_goaways(pair: Link, count: int) -> None:
    frame = GoAwayFrame(0)
    frame.last_stream_id, frame.error_code = 2**31 - 1, 0
    pair.feed(frame.serialize() * count)


@dataclass(frozen=True)
class Flood:
    flood: Callable[[Link, int], None]
    limit: int
    client_side: bool = False  # the engine's role
    opens_stream: bool = False  # the engine opens stream 1 first (client role)


FLOODS = {
    "ping": Flood(_flood_pings, LIMITS.control_frames_per_window),
    "settings": Flood(_flood_settings, LIMITS.control_frames_per_window),
    "priority": Flood(_flood_priority, LIMITS.priority_frames_per_window),
    "unknown frame type": Flood(_flood_unknown, LIMITS.unknown_frames_per_window),
    "rst_stream": Flood(_flood_resets, LIMITS.resets_per_window),
    "empty data": Flood(_flood_empty_data, LIMITS.consecutive_empty_frames),
    "window_update": Flood(_flood_window_updates, LIMITS.window_update_allowance, True),
    "1xx responses": Flood(_flood_informational, LIMITS.informational_per_stream, True, True),
    "goaway": Flood(_flood_goaways, LIMITS.goaways, True),
}


@pytest.mark.parametrize("name", FLOODS)
@pytest.mark.parametrize("over", [0, 1])
def test_budget_trips_at_its_limit_and_not_below(name: str, over: int) -> None:
    flood = FLOODS[name]
    pair = link(client_side=flood.client_side, limits=LIMITS)
    if flood.opens_stream:
        pair.engine.open_stream(REQUEST, end_stream=True)
        pair.exchange()
    flood.flood(pair, flood.limit + over)
    pair.send()
    _, peer_events = pair.exchange()
    if not over:
        assert pair.engine.closed is None, pair.engine.closed
        return
    closed_with(pair.engine, ErrorCodes.ENHANCE_YOUR_CALM)
    assert goaway_code(peer_events) == ErrorCodes.ENHANCE_YOUR_CALM
    assert sum(isinstance(e, ConnectionClosed) for e in pair.events) == 1
    # No answer to the flood: h2's queued PING and SETTINGS ACKs were dropped.
    assert not pair.peer_saw(h2.events.PingAckReceived)


def test_window_update_allowance_grows_with_the_data_we_send() -> None:
    pair = link(client_side=True, limits=LIMITS)
    state = pair.engine.open_stream(REQUEST)
    for _ in range(10):
        pair.engine.send_data(state, b"x" * 100)  # ten DATA frames earn twenty WINDOW_UPDATEs
        pair.exchange()
    _flood_window_updates(pair, LIMITS.window_update_allowance + 20)
    pair.send()
    assert pair.engine.closed is None
    _flood_window_updates(pair, 1)
    pair.send()
    closed_with(pair.engine, ErrorCodes.ENHANCE_YOUR_CALM)


def test_windowed_budgets_start_over_after_the_window() -> None:
    pair = link(client_side=False, limits=LIMITS)
    limit = LIMITS.control_frames_per_window
    pair.now = 1.0
    _flood_pings(pair, limit)  # with the SETTINGS at t=0: the whole budget of this window
    pair.send()
    pair.now = LIMITS.window  # a new window: the count starts over
    for i in range(limit):
        pair.peer.ping(i.to_bytes(8, "big"))
    pair.send()
    assert pair.engine.closed is None
    pair.peer.ping(b"one more")
    pair.send()
    closed_with(pair.engine, ErrorCodes.ENHANCE_YOUR_CALM)


def test_empty_data_budget_counts_only_consecutive_frames() -> None:
    pair = link(client_side=False, limits=LIMITS)
    _flood_empty_data(pair, LIMITS.consecutive_empty_frames)
    pair.peer.send_data(1, b"real data")
    for _ in range(LIMITS.consecutive_empty_frames):
        pair.peer.send_data(1, b"")
    pair.send()
    assert pair.engine.closed is None


def test_informational_flood_in_one_read_is_bounded_by_the_budget() -> None:
    """1000 ``:status 100`` blocks in one read: closed, and the stream keeps at most 21."""
    pair = link(client_side=True)
    state = pair.engine.open_stream(REQUEST, end_stream=True)
    pair.exchange()
    _flood_informational(pair, 1000)
    pair.send()
    closed_with(pair.engine, ErrorCodes.ENHANCE_YOUR_CALM)
    limit = BudgetLimits().informational_per_stream
    assert len(state.informational) <= limit + 1
    assert isinstance(state.error, TunnelClosed)


def test_default_budget_for_1xx_responses_is_twenty() -> None:
    for count, closed in ((20, False), (21, True)):
        pair = link(client_side=True)
        state = pair.engine.open_stream(REQUEST, end_stream=True)
        pair.exchange()
        _flood_informational(pair, count)
        pair.send()
        assert (pair.engine.closed is not None) is closed
        if closed:
            closed_with(pair.engine, ErrorCodes.ENHANCE_YOUR_CALM)
        else:
            assert len(state.informational) == 20
            assert state.informational[0] == [(b":status", b"100")]


def test_frames_on_a_reset_stream_are_charged_to_a_budget() -> None:
    # h2 answers each frame on a stream we reset with RST_STREAM and reports no event: the
    # silent-frame balance charges them (ARCHITECTURE.md, "Budgets").
    pair = link(client_side=False, limits=LIMITS)
    pair.peer.send_headers(1, REQUEST)
    [state] = opened(pair.send())
    pair.engine.reset(state)
    pair.exchange()
    pair.feed(DataFrame(1).serialize() * 1000)  # empty DATA on the stream we reset
    closed_with(pair.engine, ErrorCodes.ENHANCE_YOUR_CALM)


def test_frames_in_flight_on_a_reset_stream_are_within_the_budget() -> None:
    # What a well-behaved peer still sends on a stream we just reset does not trip it.
    pair = link(client_side=False, limits=LIMITS)
    pair.peer.send_headers(1, REQUEST)
    [state] = opened(pair.send())
    pair.engine.reset(state)
    pair.feed(DataFrame(1, data=b"x").serialize() * 30)
    assert pair.engine.closed is None


def test_requests_after_a_tripped_budget_in_the_same_read_are_not_opened() -> None:
    pair = link(client_side=False, limits=LIMITS)
    _flood_pings(pair, LIMITS.control_frames_per_window + 1)
    pair.peer.send_headers(1, REQUEST, end_stream=True)
    events = pair.send()
    closed_with(pair.engine, ErrorCodes.ENHANCE_YOUR_CALM)
    assert not opened(events), "a request behind the flood must not reach the application"


# -- the frame guard -----------------------------------------------------------------------


def test_oversized_frame_is_refused_from_its_header_alone() -> None:
    pair = link(client_side=True)
    header = (SMALL.max_frame_size + 1).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01"
    events = pair.engine.receive_data(header, 0.0)  # no payload at all: nothing is buffered
    assert any(isinstance(e, ConnectionClosed) for e in events)
    closed_with(pair.engine, ErrorCodes.FRAME_SIZE_ERROR)  # RFC 9113 §4.2
    assert "exceeds" in str(pair.engine.closed)
    _, peer_events = pair.exchange()
    assert goaway_code(peer_events) == ErrorCodes.FRAME_SIZE_ERROR


def test_a_frame_of_exactly_max_frame_size_is_accepted() -> None:
    pair = link(client_side=True)
    [state] = _response(pair)
    frame = DataFrame(state.stream_id)
    frame.data = b"z" * SMALL.max_frame_size
    pair.engine.receive_data(frame.serialize(), 0.0)
    assert pair.engine.closed is None and state.buffered == SMALL.max_frame_size


def test_first_frame_that_is_not_settings_is_refused() -> None:
    engine = Engine(client_side=True, settings=SMALL)
    engine.data_to_send()
    ping = PingFrame(0)
    ping.opaque_data = b"12345678"
    engine.receive_data(ping.serialize(), 0.0)
    closed_with(engine, ErrorCodes.PROTOCOL_ERROR)
    assert "SETTINGS" in str(engine.closed)


def test_http1_response_instead_of_a_preface_is_refused() -> None:
    engine = Engine(client_side=True, settings=SMALL)
    engine.data_to_send()
    engine.receive_data(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", 0.0)
    closed_with(engine, ErrorCodes.PROTOCOL_ERROR)
    assert engine.bytes_received < 100


def test_http1_request_instead_of_a_preface_is_refused() -> None:
    engine = Engine(client_side=False, settings=SMALL)
    engine.data_to_send()
    engine.receive_data(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n", 0.0)
    closed_with(engine, ErrorCodes.PROTOCOL_ERROR)
    assert engine.receive_data(CLIENT_PREFACE, 1.0) == []


# -- keepalive -----------------------------------------------------------------------------

LIVENESS = Liveness(interval=10.0, dead_after=25.0)


def _pings(pair: Link) -> list[h2.events.PingReceived]:
    return [e for e in pair.peer_events if isinstance(e, h2.events.PingReceived)]


def test_ping_after_interval_of_silence_and_rtt_from_the_ack() -> None:
    pair = link(client_side=True, liveness=LIVENESS)
    pair.engine.start(100.0)
    assert pair.engine.next_deadline() == 110.0
    pair.engine.handle_timer(109.9)  # early wake-up: nothing to do
    pair.now = 109.9
    pair.exchange()
    assert not _pings(pair)
    pair.engine.handle_timer(110.0)
    pair.now = 110.25  # the ACK arrives a quarter second later
    pair.exchange()
    assert len(_pings(pair)) == 1
    assert pair.engine.rtt == pytest.approx(0.25)
    assert pair.engine.next_deadline() == pytest.approx(120.25)  # silence counts from the ACK
    assert pair.engine.closed is None


def test_any_frame_from_the_peer_postpones_the_ping() -> None:
    pair = link(client_side=True, liveness=LIVENESS)
    pair.engine.start(0.0)
    pair.peer.increment_flow_control_window(1)
    pair.now = 8.0
    pair.send()
    assert pair.engine.next_deadline() == 18.0
    pair.engine.handle_timer(10.0)
    pair.exchange()
    assert not _pings(pair)


def test_silent_peer_is_pinged_again_then_declared_dead() -> None:
    pair = link(client_side=True, liveness=LIVENESS)
    engine = pair.engine
    engine.start(0.0)
    pings_at = []
    now = 0.0
    while engine.closed is None and now < 100:
        deadline = engine.next_deadline()
        assert deadline is not None and deadline >= now
        now = deadline
        engine.handle_timer(now)
        # The peer reads our bytes but its answers (PING ACKs) never arrive.
        pings = pair.peer.receive_data(engine.data_to_send())
        pings_at += [now for e in pings if isinstance(e, h2.events.PingReceived)]
        pair.peer.clear_outbound_data_buffer()
    assert pings_at == [10.0, 20.0]  # one PING per interval while unanswered
    assert now == 25.0  # then dead_after of silence
    closed_with(engine, ErrorCodes.NO_ERROR)
    assert "no answer" in str(engine.closed)
    assert engine.next_deadline() is None


def test_dead_after_under_two_intervals_is_kept() -> None:
    """interval 10, dead_after 15: dead at 15 (the next PING would be due at 20, too late)."""
    pair = link(client_side=True, liveness=Liveness(interval=10.0, dead_after=15.0))
    engine = pair.engine
    engine.start(0.0)
    engine.handle_timer(engine.next_deadline() or 0.0)
    assert engine.closed is None
    assert engine.next_deadline() == 15.0
    engine.handle_timer(15.0)
    assert engine.closed is not None


def test_dead_after_shorter_than_interval_closes_without_a_ping() -> None:
    pair = link(client_side=True, liveness=Liveness(interval=30.0, dead_after=5.0))
    pair.engine.start(0.0)
    assert pair.engine.next_deadline() == 5.0
    pair.engine.handle_timer(5.0)
    assert pair.engine.closed is not None
    pair.exchange()
    assert not _pings(pair)


# -- property: random and mutated frame streams never break the engine ------------------------

FUZZ_SETTINGS = Settings(
    stream_window=1024,
    max_stream_window=8192,
    window_pool=16384,
    connection_window=65535 * 2,
    max_frame_size=16384,
    max_buffered=4096,
    max_concurrent_streams=4,
)
FUZZ_LIMITS = BudgetLimits(
    control_frames_per_window=30,
    priority_frames_per_window=30,
    unknown_frames_per_window=30,
    resets_per_window=30,
    consecutive_empty_frames=30,
    window_update_allowance=30,
    informational_per_stream=3,
    goaways=3,
)
HEADER_BLOCKS = [
    REQUEST,
    OK,
    [(b":status", b"100")],
    [(b":status", b"103"), (b"link", b"</a>")],
    [(b"grpc-status", b"0")],
    [(b":method", b"GET"), (b":path", b"/")],  # malformed request
    [(b":protocol", b"websocket"), *REQUEST],
]
stream_ids = st.sampled_from([0, 1, 1, 1, 2, 3, 3, 5, 7, 2**31 - 1])
header_blocks = st.sampled_from(HEADER_BLOCKS).map(lambda block: hpack.Encoder().encode(block))
flags = st.frozensets(st.sampled_from(["END_STREAM", "END_HEADERS", "PADDED", "PRIORITY", "ACK"]))


def _with_flags(frame: Frame, chosen: frozenset[str]) -> Frame:
    for flag in chosen & {flag.name for flag in frame.defined_flags}:
        frame.flags.add(flag)
    if "PADDED" in frame.flags:
        frame.pad_length = 3  # type: ignore[attr-defined]
    return frame


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """One frame, mostly well-formed, of any type (unknown types and raw garbage included)."""
    kind = draw(st.integers(0, 13))
    sid = draw(stream_ids)
    frame: Frame
    if kind == 0:
        frame = DataFrame(sid or 1, data=draw(st.binary(max_size=1200)))
    elif kind in (1, 2):
        frame = HeadersFrame(sid or 1, data=draw(header_blocks))
        frame.flags.add("END_HEADERS")
    elif kind == 3:
        frame = ContinuationFrame(sid or 1, data=draw(header_blocks))
    elif kind == 4:
        frame = PriorityFrame(sid or 1, depends_on=draw(stream_ids), stream_weight=7)
    elif kind == 5:
        frame = RstStreamFrame(sid or 1, error_code=draw(st.integers(0, 14)))
    elif kind == 6:
        values = draw(st.dictionaries(st.integers(1, 9), st.integers(0, 2**32 - 1), max_size=3))
        frame = SettingsFrame(0, settings=values)
    elif kind == 7:
        frame = PingFrame(0, opaque_data=draw(st.binary(min_size=8, max_size=8)))
    elif kind == 8:
        last = draw(st.sampled_from([0, 1, 3, 2**31 - 1]))
        frame = GoAwayFrame(0, last_stream_id=last, error_code=draw(st.sampled_from([0, 0, 2])))
    elif kind == 9:
        increment = draw(st.integers(0, 2**31 - 1))
        frame = WindowUpdateFrame(draw(st.sampled_from([0, sid])), window_increment=increment)
    elif kind == 10:
        frame = PushPromiseFrame(sid or 1, promised_stream_id=2, data=draw(header_blocks))
    elif kind == 11:
        return raw_frame(draw(st.integers(10, 255)), draw(st.integers(0, 255)), sid, b"ext")
    elif kind == 12:
        return draw(st.binary(min_size=1, max_size=40))
    else:  # the common request or response, complete in one frame
        frame = HeadersFrame(sid or 1, data=draw(header_blocks))
        frame.flags.add("END_HEADERS")
        frame.flags.add("END_STREAM")
    return bytes(_with_flags(frame, draw(flags)).serialize())


@st.composite
def mutated(draw: st.DrawFn, frame: bytes) -> bytes:
    """Overwrite a frame's length, type, flags or stream id, truncate it, or flip a byte."""
    op = draw(st.integers(0, 9))
    data = bytearray(frame)
    if op == 0 and len(data) >= 9:
        data[0:3] = draw(st.integers(0, 2**24 - 1)).to_bytes(3, "big")
    elif op == 1 and len(data) >= 9:
        data[3] = draw(st.integers(0, 255))
    elif op == 2 and len(data) >= 9:
        data[4] = draw(st.integers(0, 255))
    elif op == 3 and len(data) >= 9:
        data[5:9] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "big")
    elif op == 4 and data:
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif op == 5 and data:
        data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    return bytes(data)


@st.composite
def conversations(draw: st.DrawFn, client_side: bool) -> list[bytes]:
    """What a (mis)behaving peer sends, as the chunks the engine receives."""
    opening = SettingsFrame(0).serialize()
    if not client_side:
        opening = CLIENT_PREFACE + opening
    parts = [opening]
    for frame in draw(st.lists(frames(), max_size=30)):
        if draw(st.integers(0, 9)) == 0:
            frame = draw(mutated(frame))
        parts.append(frame)
    blob = b"".join(parts)
    if draw(st.integers(0, 7)) == 0:
        blob = draw(mutated(blob))  # even the preface and the first SETTINGS
    cuts = sorted(draw(st.lists(st.integers(0, len(blob)), max_size=6)))
    edges = [0, *cuts, len(blob)]
    return [blob[start:end] for start, end in itertools.pairwise(edges)]


def _act(engine: Engine, state: StreamState, answered: set[int]) -> None:
    """A small application: read everything, answer each request once, with a body."""
    try:
        engine.read(state)
        if engine.client_side or state.stream_id in answered or state.headers is None:
            return
        answered.add(state.stream_id)
        engine.send_headers(state, OK, end_stream=False)
        engine.send_data(state, b"r" * 3000, end_stream=True)
    except TunnelError:
        pass  # the stream or the connection failed: a documented outcome


def _run_fuzz(chunks: list[bytes], client_side: bool) -> None:
    engine = Engine(
        client_side=client_side,
        settings=FUZZ_SETTINGS,
        limits=FUZZ_LIMITS,
        liveness=Liveness(interval=1.0, dead_after=3.0),
    )
    if client_side:
        engine.open_stream(REQUEST, end_stream=True)
        engine.send_data(engine.open_stream(REQUEST), b"q" * 5000, end_stream=True)
    engine.data_to_send()
    streams: dict[int, StreamState] = {}
    answered: set[int] = set()
    closed_events = 0
    received = sent = 0
    silent_after_close = False
    now = 0.0
    for chunk in chunks:
        was_closed = engine.closed is not None
        received += len(chunk)
        events = engine.receive_data(chunk, now)
        now += 0.7
        events += engine.handle_timer(now)
        for event in events:
            if isinstance(event, StreamOpened | StreamChanged):
                streams[event.stream.stream_id] = event.stream
        for state in list(streams.values()):
            _act(engine, state, answered)
        out = engine.data_to_send()
        events += engine.take_events()
        closed_events += sum(isinstance(e, ConnectionClosed) for e in events)
        assert all(isinstance(e, Event) for e in events)
        # Bounded output: proportional to what arrived (ACKs, resets) plus our own answers.
        sent += len(out)
        assert sent <= 64 * 1024 + 4 * received + 3100 * len(answered), (sent, received)
        if was_closed:
            assert engine.closed is not None, "a closed engine stays closed"
            assert not [e for e in events if not isinstance(e, StreamChanged)]
            if silent_after_close:
                assert out == b"", "a closed engine sends nothing after its last flush"
            silent_after_close = True
        assert engine.buffered >= 0
    assert closed_events == (engine.closed is not None), "ends open, or with one ConnectionClosed"
    if engine.closed is not None:
        assert engine.open_streams == 0 and engine.draining
        with pytest.raises(TunnelClosed):
            engine.open_stream(REQUEST)


@pytest.mark.parametrize("client_side", [True, False], ids=["client", "server"])
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_and_mutated_frames_never_break_the_engine(
    client_side: bool, data: st.DataObject
) -> None:
    _run_fuzz(data.draw(conversations(client_side)), client_side)


@pytest.mark.parametrize("client_side", [True, False], ids=["client", "server"])
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_closed_engine_ignores_everything(client_side: bool, data: st.DataObject) -> None:
    engine = Engine(client_side=client_side, settings=FUZZ_SETTINGS)
    engine.close(ErrorCodes.NO_ERROR, "done")
    engine.data_to_send()
    for chunk in data.draw(conversations(client_side)):
        assert engine.receive_data(chunk, 1.0) == []
        assert engine.handle_timer(100.0) == []
        assert engine.data_to_send() == b""
    assert engine.closed is not None and str(engine.closed) == "done"
    assert engine.take_events() == []


@pytest.mark.parametrize("count", [19, 20])
def test_unsolicited_ping_acks_are_budgeted(count: int) -> None:
    # The handshake's SETTINGS ACK is the first of the budget's 20.
    pair = link(client_side=False, limits=LIMITS)
    ack = PingFrame(0)
    ack.flags.add("ACK")
    ack.opaque_data = b"12345678"
    pair.feed(ack.serialize() * count)
    if count + 1 > LIMITS.acks_per_window:
        closed_with(pair.engine, ErrorCodes.ENHANCE_YOUR_CALM)
    else:
        assert pair.engine.closed is None


def test_the_silent_frame_balance_starts_again_each_window() -> None:
    # 30 frames on a reset stream fit the first window (20 + 20 for the reset); 19 more fit the
    # next one (20, no reset in it), but 49 in one balance would not (ARCHITECTURE.md, "Budgets").
    pair = link(client_side=False, limits=LIMITS)
    pair.peer.send_headers(1, REQUEST)
    [state] = opened(pair.send())
    pair.engine.reset(state)
    pair.feed(DataFrame(1, data=b"x").serialize() * 30)
    pair.now += LIMITS.window + 1
    pair.feed(DataFrame(1, data=b"x").serialize() * 19)
    assert pair.engine.closed is None


@pytest.mark.parametrize(
    ("module", "version"),
    [("h2", "5.0.0"), ("hyperframe", "7.0.0"), ("hpack", "5.0.0")],
)
def test_adapter_refuses_a_major_version_it_was_not_written_for(
    monkeypatch: pytest.MonkeyPatch, module: str, version: str
) -> None:
    """The h2 adapter patches these libraries; another major version fails loudly at import."""
    import importlib

    from ptth.engine import _h2
    from ptth.errors import ConfigError

    monkeypatch.setattr(importlib.import_module(module), "__version__", version)
    with pytest.raises(ConfigError, match=f"ptth needs {module} .*found {version}"):
        _h2._check()


def test_adapter_refuses_h2_without_a_name_it_touches(monkeypatch: pytest.MonkeyPatch) -> None:
    from ptth.engine import _h2
    from ptth.errors import ConfigError

    monkeypatch.delattr(h2.connection.H2Connection, "_prepare_for_sending")
    with pytest.raises(ConfigError, match="H2Connection lacks _prepare_for_sending"):
        _h2._check()

"""ptth.driver.Connection on asyncio and trio: multiplexing, flow control as backpressure,
reset, graceful GOAWAY and drain with linger, refused streams, keepalive and dead peers, write
deadlines, flood budgets.

The byte stream is an in-memory pipe whose buffer is small (a peer that stops reading blocks the
writer, as a full socket buffer would), or a real TCP connection where closing matters. The far
end is another driver, or a raw python-hyper ``H2Connection`` driven by hand, so the driver is
not only tested against itself. Timers are real and short (tenths of a second) on both loops.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
import sniffio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

import ptth.driver
from ptth.driver import Connection, Stream, StreamHandler
from ptth.engine import BudgetLimits, Liveness, Settings
from ptth.errors import StreamReset, TunnelClosed, TunnelError

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]

SMALL = Settings(stream_window=64 * 1024, connection_window=128 * 1024, max_frame_size=16384)
REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", b"/")]
OK = [(b":status", b"200")]
CHUNK = 64 * 1024  # the pipe's unit: a few of them in flight, like a socket buffer


# -- byte streams --------------------------------------------------------------------------


class MemoryByteStream(anyio.abc.ByteStream):
    """One end of an in-memory byte pipe (anyio has object streams only).

    Sends are cut into ``CHUNK``-sized items and the pipe holds a few items at most, so a peer
    that stops reading blocks the sender. EOF and close behave like a socket's.
    """

    def __init__(
        self, send: MemoryObjectSendStream[bytes], receive: MemoryObjectReceiveStream[bytes]
    ) -> None:
        self._send = send
        self._receive = receive
        self._pending = b""

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if not self._pending:
            self._pending = await self._receive.receive()  # EndOfStream after the peer's EOF
        data, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return data

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        for start in range(0, len(view), CHUNK):
            await self._send.send(bytes(view[start : start + CHUNK]))

    async def send_eof(self) -> None:
        await self._send.aclose()

    async def aclose(self) -> None:
        await self._send.aclose()
        await self._receive.aclose()


def memory_pipe(buffer: int = 4) -> tuple[MemoryByteStream, MemoryByteStream]:
    """Two connected ends; ``buffer`` items of up to ``CHUNK`` bytes each way (0: lockstep)."""
    a_send, b_receive = anyio.create_memory_object_stream[bytes](buffer)
    b_send, a_receive = anyio.create_memory_object_stream[bytes](buffer)
    return MemoryByteStream(a_send, a_receive), MemoryByteStream(b_send, b_receive)


@asynccontextmanager
async def tcp_pair() -> AsyncIterator[tuple[anyio.abc.SocketStream, anyio.abc.SocketStream]]:
    """A real TCP connection over loopback: (dialled end, accepted end)."""
    multi = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with multi:
        [listener] = multi.listeners
        assert isinstance(listener, anyio.abc.SocketListener)
        accepted: list[anyio.abc.SocketStream] = []

        async def accept() -> None:
            accepted.append(await listener.accept())

        async with anyio.create_task_group() as group:
            group.start_soon(accept)
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            dialled = await anyio.connect_tcp("127.0.0.1", port)
        async with dialled, accepted[0]:
            yield dialled, accepted[0]


# -- a raw h2 peer -------------------------------------------------------------------------


class GracefulH2(h2.connection.H2Connection):
    """h2, except that a NO_ERROR GOAWAY leaves the connection open (RFC 9113 §6.8).

    Stock h2 closes its side on any GOAWAY, so it cannot play a peer that finishes its
    in-flight streams, or races a new stream with our GOAWAY.
    """

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Any], list[Any]]:
        if frame.error_code:
            return super()._receive_goaway_frame(frame)  # type: ignore[no-any-return]
        event = h2.events.ConnectionTerminated()
        event.error_code, event.last_stream_id = ErrorCodes.NO_ERROR, frame.last_stream_id
        return [], [event]


class RawPeer:
    """A python-hyper h2 connection on the far end of a byte stream, driven by the test."""

    def __init__(
        self, stream: anyio.abc.ByteStream, *, client_side: bool, graceful: bool = False
    ) -> None:
        self.stream = stream
        config = h2.config.H2Configuration(client_side=client_side, header_encoding=None)
        self.conn = (GracefulH2 if graceful else h2.connection.H2Connection)(config=config)
        self.conn.initiate_connection()
        self.events: list[h2.events.Event] = []
        self.eof = False
        self.broken = False  # the byte stream failed (a TCP reset), not a clean EOF
        self.answer = True  # flush h2's automatic answers (PING and SETTINGS ACKs)

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            try:
                await self.stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                self.eof = True

    async def receive(self) -> list[h2.events.Event]:
        """One read's worth of events ([] at EOF)."""
        try:
            data = await self.stream.receive(1 << 20)
        except anyio.EndOfStream:
            self.eof = True
            return []
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            self.eof = self.broken = True
            return []
        events = self.conn.receive_data(data)
        self.events += events
        if self.answer:
            await self.flush()
        else:
            self.conn.clear_outbound_data_buffer()
        return events

    async def until(
        self, predicate: Callable[[h2.events.Event], bool], *, since: int = 0, timeout: float = 5
    ) -> h2.events.Event:
        """The first event from ``since`` on that matches, reading as needed."""
        with anyio.fail_after(timeout):
            position = since
            while True:
                for event in self.events[position:]:
                    if predicate(event):
                        return event
                position = len(self.events)
                if self.eof:
                    raise AssertionError(f"EOF before a matching event; saw {self.events}")
                await self.receive()

    async def handshake(self) -> None:
        await self.flush()
        await self.until(lambda e: isinstance(e, h2.events.RemoteSettingsChanged))

    async def send_body(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        """Send ``data`` as the windows allow, waiting for WINDOW_UPDATEs in between."""
        view = memoryview(data)
        while view:
            window = min(
                self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size
            )
            if window <= 0:
                await self.receive()
                continue
            self.conn.send_data(stream_id, bytes(view[:window]))
            view = view[window:]
            await self.flush()
        if end_stream:
            self.conn.end_stream(stream_id)
            await self.flush()


# -- connections ---------------------------------------------------------------------------


@asynccontextmanager
async def running(connection: Connection) -> AsyncIterator[Connection]:
    """``connection.run`` in the background; cancelled (sockets closed) on the way out."""
    async with anyio.create_task_group() as group:
        await group.start(connection.run)
        yield connection
        group.cancel_scope.cancel()


@asynccontextmanager
async def connection_pair(
    handler: StreamHandler,
    *,
    settings: Settings = SMALL,
    liveness: Liveness | None = None,
) -> AsyncIterator[tuple[Connection, Connection]]:
    """A client driver and a server driver (``handler`` serves its streams), connected."""
    a, b = memory_pipe(16)
    async with a, b:
        client = Connection(
            a, client_side=True, tunnel_id="c", settings=settings, liveness=liveness
        )
        server = Connection(
            b,
            client_side=False,
            tunnel_id="s",
            settings=settings,
            liveness=liveness,
            on_stream=handler,
        )
        async with running(server), running(client):
            with anyio.fail_after(5):
                await client.wait_remote_settings()
                await server.wait_remote_settings()
            yield client, server


@asynccontextmanager
async def raw_pair(
    *,
    client_side: bool,
    handler: StreamHandler | None = None,
    graceful: bool = False,
    liveness: Liveness | None = None,
    limits: BudgetLimits | None = None,
    settings: Settings = SMALL,
    buffer: int = 4,
) -> AsyncIterator[tuple[Connection, RawPeer]]:
    """A driver (``client_side`` is its role) and a raw h2 peer, handshake done."""
    a, b = memory_pipe(buffer)
    async with a, b:
        connection = Connection(
            a,
            client_side=client_side,
            tunnel_id="t",
            settings=settings,
            liveness=liveness,
            limits=limits,
            on_stream=handler,
        )
        peer = RawPeer(b, client_side=not client_side, graceful=graceful)
        async with running(connection):
            await peer.handshake()
            with anyio.fail_after(5):
                await connection.wait_remote_settings()
            yield connection, peer


async def read_all(stream: Stream) -> bytes:
    parts = []
    while chunk := await stream.receive_data():
        parts.append(chunk)
    return b"".join(parts)


async def echo(stream: Stream) -> None:
    await stream.receive_headers()
    body = await read_all(stream)
    await stream.send_headers(OK)
    await stream.send_data(body, end_stream=True)


async def wait_for(condition: Callable[[], bool], timeout: float = 5) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.005)


# -- the loop ------------------------------------------------------------------------------


async def test_runs_on_the_backend_it_names(anyio_backend: str) -> None:
    """pytest-trio's trio_mode must not take the asyncio half of these tests (conftest.py)."""
    assert sniffio.current_async_library() == anyio_backend


# -- multiplexing, flow control, reset -----------------------------------------------------


async def test_many_streams_multiplex_and_echo() -> None:
    async with connection_pair(echo) as (client, server):
        results: dict[int, bytes] = {}

        async def one(i: int) -> None:
            stream = await client.open_stream(REQUEST)
            await stream.send_data(bytes([i]) * (1000 * i + 1), end_stream=True)
            headers = await stream.receive_headers()
            assert headers[0] == (b":status", b"200")
            results[i] = await read_all(stream)
            await stream.aclose()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as requests:
                for i in range(50):
                    requests.start_soon(one, i)
        assert all(results[i] == bytes([i]) * (1000 * i + 1) for i in range(50))
        assert client.open_streams == 0 and client.streams_opened == 50
        await wait_for(lambda: server.open_streams == 0)


async def test_slow_consumer_stops_the_sender_at_the_window() -> None:
    sent = 0

    async def firehose(stream: Stream) -> None:
        nonlocal sent
        await stream.receive_headers()
        await stream.send_headers(OK)
        chunk = b"x" * 16384
        for _ in range(1000):  # 16 MiB if nothing pushed back
            await stream.send_data(chunk)
            sent += len(chunk)
        await stream.end()

    async with connection_pair(firehose) as (client, _):
        stream = await client.open_stream(REQUEST, end_stream=True)
        await stream.receive_headers()
        await anyio.sleep(0.3)
        # Nothing consumed: the backend is held at the stream window; so is our buffer.
        assert sent <= SMALL.stream_window + 16384
        assert stream.buffered <= SMALL.stream_window
        with anyio.fail_after(10):
            received = len(await read_all(stream))  # consuming reopens the window
        assert received == 1000 * 16384 == sent


async def test_sender_waits_for_a_raw_peer_that_grants_no_credit() -> None:
    async with raw_pair(client_side=True) as (client, peer):
        stream = await client.open_stream(REQUEST)
        body = b"b" * 200_000
        done = anyio.Event()

        async def send() -> None:
            await stream.send_data(body, end_stream=True)
            done.set()

        def data() -> list[h2.events.DataReceived]:
            return [e for e in peer.events if isinstance(e, h2.events.DataReceived)]

        async with anyio.create_task_group() as group:
            group.start_soon(send)
            with anyio.move_on_after(0.3):
                while True:  # read all that arrives; grant nothing
                    await peer.receive()
            got = sum(len(e.data) for e in data())
            assert got == 65535, "exactly the peer's initial window was sent"
            assert not done.is_set(), "send_data returned with no window left"
            assert stream.state.queued == len(body) - got
            # Credit at last: the rest flows, and send_data returns.
            acked = 0
            while not any(isinstance(e, h2.events.StreamEnded) for e in peer.events):
                for event in data()[acked:]:
                    peer.conn.acknowledge_received_data(event.flow_controlled_length, 1)
                acked = len(data())
                await peer.flush()
                await peer.receive()
            with anyio.fail_after(5):
                await done.wait()
        assert sum(len(e.data) for e in data()) == len(body)


async def test_a_stalled_stream_does_not_stall_its_neighbour() -> None:
    """Connection credit comes back on arrival: one unread stream costs only its own window."""
    async with raw_pair(client_side=True) as (client, peer):
        stalled = await client.open_stream(REQUEST, end_stream=True)
        moving = await client.open_stream(REQUEST, end_stream=True)
        await peer.until(lambda e: isinstance(e, h2.events.StreamEnded) and e.stream_id == 3)
        for stream in (stalled, moving):
            peer.conn.send_headers(stream.stream_id, OK)
        await peer.send_body(stalled.stream_id, b"s" * SMALL.stream_window)  # never read
        body = b"m" * (8 * SMALL.connection_window)
        async with anyio.create_task_group() as group:
            group.start_soon(functools.partial(peer.send_body, end_stream=True), 3, body)
            with anyio.fail_after(10):
                received = await read_all(moving)
        assert received == body
        assert stalled.buffered == SMALL.stream_window and not stalled.received_end


async def test_reset_reaches_the_other_side() -> None:
    handler_saw: list[BaseException] = []
    started = anyio.Event()

    async def waits_forever(stream: Stream) -> None:
        await stream.receive_headers()
        started.set()
        try:
            await stream.receive_data()
        except TunnelError as exc:
            handler_saw.append(exc)
            raise

    async with connection_pair(waits_forever) as (client, server):
        stream = await client.open_stream(REQUEST)
        with anyio.fail_after(5):
            await started.wait()
        await stream.reset(ErrorCodes.CANCEL)
        await wait_for(lambda: bool(handler_saw))
        assert isinstance(handler_saw[0], StreamReset)
        assert handler_saw[0].error_code == ErrorCodes.CANCEL
        await wait_for(lambda: server.open_streams == 0)
        assert not client.closed and not server.closed


async def test_a_failing_handler_resets_only_its_own_stream() -> None:
    async def picky(stream: Stream) -> None:
        headers = dict(await stream.receive_headers())
        if headers[b":path"] == b"/boom":
            raise RuntimeError("handler bug")
        await stream.send_headers(OK, end_stream=True)

    async with connection_pair(picky) as (client, _):
        broken = await client.open_stream([*REQUEST[:3], (b":path", b"/boom")], end_stream=True)
        with anyio.fail_after(5), pytest.raises(StreamReset):
            await broken.receive_headers()
        fine = await client.open_stream(REQUEST, end_stream=True)
        with anyio.fail_after(5):
            assert await fine.receive_headers() == OK
        assert not client.closed


# -- GOAWAY, drain, linger -----------------------------------------------------------------


async def test_graceful_goaway_lets_in_flight_streams_finish() -> None:
    release = anyio.Event()

    async def slow(stream: Stream) -> None:
        await stream.receive_headers()
        await release.wait()
        await stream.send_headers(OK)
        await stream.send_data(b"done", end_stream=True)

    async with connection_pair(slow) as (client, server):
        stream = await client.open_stream(REQUEST, end_stream=True)
        await wait_for(lambda: server.open_streams == 1)
        drained = anyio.Event()

        async def drain() -> None:
            await server.drain(timeout=5)
            drained.set()

        async with anyio.create_task_group() as group:
            group.start_soon(drain)
            await wait_for(lambda: client.draining)
            assert not client.closed
            with pytest.raises(TunnelError):
                await client.open_stream(REQUEST, end_stream=True)
            release.set()
            with anyio.fail_after(5):
                await stream.receive_headers()
                assert await read_all(stream) == b"done"
                await drained.wait()
                await client.wait_closed()
        assert server.closed and server.close_reason is not None
        assert server.close_reason.error_code == ErrorCodes.NO_ERROR


async def test_new_stream_after_our_goaway_is_refused() -> None:
    release = anyio.Event()

    async def slow(stream: Stream) -> None:
        await stream.receive_headers()
        await release.wait()
        await stream.send_headers(OK, end_stream=True)

    async with raw_pair(client_side=False, handler=slow, graceful=True) as (server, peer):
        peer.conn.send_headers(1, REQUEST, end_stream=True)
        await peer.flush()
        await wait_for(lambda: server.open_streams == 1)
        await server.goaway()
        goaway = await peer.until(lambda e: isinstance(e, h2.events.ConnectionTerminated))
        assert goaway.error_code == 0 and goaway.last_stream_id == 1
        peer.conn.send_headers(3, REQUEST, end_stream=True)  # too late: must be refused
        await peer.flush()
        reset = await peer.until(lambda e: isinstance(e, h2.events.StreamReset))
        assert (reset.stream_id, reset.error_code) == (3, ErrorCodes.REFUSED_STREAM)
        release.set()  # the in-flight stream still completes
        response = await peer.until(lambda e: isinstance(e, h2.events.ResponseReceived))
        assert response.stream_id == 1
        await wait_for(lambda: server.open_streams == 0)
        assert not server.closed


async def test_streams_above_a_received_goaway_last_id_fail_as_refused() -> None:
    async with raw_pair(client_side=True) as (client, peer):
        kept = await client.open_stream(REQUEST, end_stream=True)
        refused = await client.open_stream(REQUEST, end_stream=True)
        await peer.until(lambda e: isinstance(e, h2.events.StreamEnded) and e.stream_id == 3)
        goaway = GoAwayFrame(0, last_stream_id=kept.stream_id, error_code=0)
        await peer.stream.send(goaway.serialize())  # graceful: stock h2 would close its side
        with anyio.fail_after(5), pytest.raises(StreamReset) as info:
            await refused.receive_headers()
        assert info.value.refused and info.value.error_code == ErrorCodes.REFUSED_STREAM
        assert client.draining and not client.closed
        with pytest.raises(TunnelClosed):
            await client.open_stream(REQUEST)
        peer.conn.send_headers(kept.stream_id, OK, end_stream=True)
        await peer.flush()
        with anyio.fail_after(5):
            assert await kept.receive_headers() == OK


async def test_refused_stream_is_marked_refused() -> None:
    async with raw_pair(client_side=True) as (client, peer):
        stream = await client.open_stream(REQUEST, end_stream=True)
        await peer.until(lambda e: isinstance(e, h2.events.RequestReceived))
        peer.conn.reset_stream(stream.stream_id, ErrorCodes.REFUSED_STREAM)
        await peer.flush()
        with anyio.fail_after(5), pytest.raises(StreamReset) as info:
            await stream.receive_headers()
        assert info.value.refused


async def test_drain_lingers_until_the_peer_has_read_everything() -> None:
    """Over TCP: after the last GOAWAY the server half-closes and reads until the peer closes,
    so bytes the peer sent late cannot turn the close into a reset that loses our GOAWAY."""
    release = anyio.Event()

    async def slow(stream: Stream) -> None:
        await stream.receive_headers()
        await release.wait()
        await stream.send_headers(OK, end_stream=True)

    async with tcp_pair() as (dialled, accepted):
        server = Connection(accepted, client_side=False, settings=SMALL, on_stream=slow)
        peer = RawPeer(dialled, client_side=True, graceful=True)
        async with running(server), anyio.create_task_group() as group:
            await peer.handshake()
            peer.conn.send_headers(1, REQUEST, end_stream=True)
            await peer.flush()
            await wait_for(lambda: server.open_streams == 1)
            group.start_soon(server.drain, 5)
            await peer.until(lambda e: isinstance(e, h2.events.ConnectionTerminated))
            release.set()
            await peer.until(lambda e: isinstance(e, h2.events.StreamEnded))
            await wait_for(lambda: server.closed)
            # Late bytes the server will never parse (a PING, then a request): it lingers.
            peer.conn.ping(b"late1234")
            await peer.flush()
            await dialled.send(b"\x00\x00\x00\x00\x00\x00\x00\x00\x00")
            while not peer.eof:  # everything the server sent, then a clean EOF (no reset)
                with anyio.fail_after(5):
                    await peer.receive()
            assert not peer.broken, "the server's close reset the connection"
            goaways = [e for e in peer.events if isinstance(e, h2.events.ConnectionTerminated)]
            assert goaways[-1].error_code == ErrorCodes.NO_ERROR
            await anyio.sleep(0.2)
            finished = anyio.Event()

            async def closed() -> None:
                await server.wait_closed()
                finished.set()

            group.start_soon(closed)
            await anyio.sleep(0.1)
            assert not finished.is_set(), "the server must linger while the peer is connected"
            await dialled.aclose()
            with anyio.fail_after(ptth.driver.LINGER):
                await finished.wait()


async def test_linger_gives_up_on_a_peer_that_never_closes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ptth.driver, "LINGER", 0.2)
    async with raw_pair(client_side=False, handler=echo) as (server, peer):
        start = anyio.current_time()
        with anyio.fail_after(3):
            await server.drain(timeout=1)
            await server.wait_closed()
        assert anyio.current_time() - start < 2
        goaway = await peer.until(lambda e: isinstance(e, h2.events.ConnectionTerminated))
        assert goaway.error_code == ErrorCodes.NO_ERROR


async def test_drain_gives_in_flight_streams_at_most_its_timeout() -> None:
    cancelled = anyio.Event()

    async def stuck(stream: Stream) -> None:
        await stream.receive_headers()
        try:
            await anyio.sleep(30)
        finally:
            cancelled.set()

    async with connection_pair(stuck) as (client, server):
        stream = await client.open_stream(REQUEST, end_stream=True)
        await wait_for(lambda: server.open_streams == 1)
        start = anyio.current_time()
        with anyio.fail_after(3):
            await server.drain(timeout=0.2)
            await server.wait_closed()
            await cancelled.wait()  # the handler does not outlive its connection
        assert 0.2 <= anyio.current_time() - start < 2
        with anyio.fail_after(3), pytest.raises(TunnelClosed):
            await stream.receive_headers()


async def test_abort_drops_the_byte_stream_without_a_goaway() -> None:
    async with raw_pair(client_side=True) as (client, peer):
        await client.abort()
        with anyio.fail_after(3):
            await client.wait_closed()
            while not peer.eof:
                await peer.receive()
        assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in peer.events)
        assert client.closed and "aborted" in str(client.close_reason)


async def test_close_sends_a_goaway_with_its_code() -> None:
    async with raw_pair(client_side=True) as (client, peer):
        with anyio.fail_after(3):
            await client.close(ErrorCodes.INTERNAL_ERROR, "shutting down")
            await client.wait_closed()
        goaway = await peer.until(lambda e: isinstance(e, h2.events.ConnectionTerminated))
        assert goaway.error_code == ErrorCodes.INTERNAL_ERROR
        with pytest.raises(TunnelClosed):
            await client.open_stream(REQUEST)


# -- keepalive, dead peers, write deadlines ------------------------------------------------


async def test_silent_peer_is_pinged_then_declared_dead() -> None:
    liveness = Liveness(interval=0.1, dead_after=0.3, write_timeout=1)
    async with raw_pair(client_side=True, liveness=liveness) as (client, peer):
        peer.answer = False  # it reads everything and answers nothing
        start = anyio.current_time()

        async def read_on() -> None:
            while not peer.eof:
                await peer.receive()

        async with anyio.create_task_group() as group:
            group.start_soon(read_on)
            with anyio.fail_after(3):
                await client.wait_closed()
        elapsed = anyio.current_time() - start  # silence began at the handshake, just before
        assert 0.25 <= elapsed < 2, elapsed
        assert any(isinstance(e, h2.events.PingReceived) for e in peer.events)
        assert "no answer" in str(client.close_reason)


async def test_a_peer_that_answers_pings_stays_alive() -> None:
    liveness = Liveness(interval=0.05, dead_after=0.2, write_timeout=1)
    async with raw_pair(client_side=True, liveness=liveness) as (client, peer):
        with anyio.move_on_after(0.6):
            while True:
                await peer.receive()  # h2 ACKs every PING; nothing else is ever sent
        assert not client.closed
        assert sum(isinstance(e, h2.events.PingReceived) for e in peer.events) >= 3
        assert client.rtt is not None and 0 <= client.rtt < 0.2


async def test_silent_peer_with_no_handshake_is_declared_dead() -> None:
    a, b = memory_pipe(16)  # nobody ever answers (or reads) on b
    async with a, b:
        client = Connection(
            a, client_side=True, liveness=Liveness(interval=0.1, dead_after=0.3, write_timeout=1)
        )
        async with running(client):
            start = anyio.current_time()
            with anyio.fail_after(3):
                await client.wait_closed()
            assert 0.25 <= anyio.current_time() - start < 2  # the clock started in run()


async def test_peer_that_never_reads_fails_writes() -> None:
    a, b = memory_pipe(0)  # every send waits for a reader that never comes
    async with a, b:
        client = Connection(
            a, client_side=True, liveness=Liveness(interval=100, dead_after=200, write_timeout=0.2)
        )
        async with running(client):
            with anyio.fail_after(3):
                await client.wait_closed()
        assert client.closed and "write timed out" in str(client.close_reason)


async def test_peer_that_stops_reading_mid_body_fails_the_sender() -> None:
    liveness = Liveness(interval=100, dead_after=200, write_timeout=0.2)
    async with raw_pair(client_side=True, liveness=liveness, buffer=2) as (client, peer):
        # Huge windows, then the peer stops reading: only the write deadline can notice.
        mark = len(peer.events)
        peer.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
        peer.conn.increment_flow_control_window(2**31 - 1 - 65535)
        await peer.flush()
        await peer.until(lambda e: isinstance(e, h2.events.SettingsAcknowledged), since=mark)
        stream = await client.open_stream(REQUEST)
        with anyio.fail_after(3), pytest.raises(TunnelClosed):
            for _ in range(200):
                await stream.send_data(b"w" * 65536)
        assert "write timed out" in str(client.close_reason)


# -- floods and garbage --------------------------------------------------------------------


async def test_ping_flood_closes_the_tunnel() -> None:
    async with raw_pair(client_side=True) as (client, peer):
        for i in range(2000):
            peer.conn.ping(i.to_bytes(8, "big"))
        await peer.flush()
        with anyio.fail_after(3):
            await client.wait_closed()
        assert client.close_reason is not None
        assert client.close_reason.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        goaway = await peer.until(lambda e: isinstance(e, h2.events.ConnectionTerminated))
        assert goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        acks = sum(isinstance(e, h2.events.PingAckReceived) for e in peer.events)
        assert acks <= BudgetLimits().control_frames_per_window


async def test_empty_data_flood_closes_the_tunnel() -> None:
    async with raw_pair(client_side=True) as (client, peer):
        stream = await client.open_stream(REQUEST, end_stream=True)
        await peer.until(lambda e: isinstance(e, h2.events.RequestReceived))
        peer.conn.send_headers(stream.stream_id, OK)
        for _ in range(5000):
            peer.conn.send_data(stream.stream_id, b"")
        await peer.flush()
        with anyio.fail_after(3):
            await client.wait_closed()
        assert client.close_reason is not None
        assert client.close_reason.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        with pytest.raises(TunnelError):
            await stream.receive_data()


async def test_informational_flood_closes_the_tunnel() -> None:
    async with raw_pair(client_side=True) as (client, peer):
        stream = await client.open_stream(REQUEST, end_stream=True)
        await peer.until(lambda e: isinstance(e, h2.events.RequestReceived))
        for _ in range(1000):
            peer.conn.send_headers(stream.stream_id, [(b":status", b"100")])
        await peer.flush()
        with anyio.fail_after(3):
            await client.wait_closed()
        assert client.close_reason is not None
        assert client.close_reason.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        assert len(stream.informational) <= BudgetLimits().informational_per_stream + 1


async def test_garbage_instead_of_a_preface_closes_the_tunnel() -> None:
    a, b = memory_pipe(4)
    async with a, b:
        client = Connection(a, client_side=True)
        async with running(client):
            await b.send(b"HTTP/1.1 200 OK\r\n\r\nthis is not http/2")
            with anyio.fail_after(3):
                await client.wait_closed()
            with pytest.raises(TunnelClosed):
                await client.open_stream(REQUEST)
            assert client.close_reason is not None
            assert client.close_reason.error_code == ErrorCodes.PROTOCOL_ERROR


async def test_peer_closing_the_byte_stream_fails_open_streams() -> None:
    async with raw_pair(client_side=True) as (client, peer):
        stream = await client.open_stream(REQUEST, end_stream=True)
        await peer.until(lambda e: isinstance(e, h2.events.RequestReceived))
        await peer.stream.aclose()
        with anyio.fail_after(3), pytest.raises(TunnelClosed):
            await stream.receive_headers()
        with anyio.fail_after(3):
            await client.wait_closed()
        assert "peer closed" in str(client.close_reason)
        assert client.statistics()["closed"] == 1.0

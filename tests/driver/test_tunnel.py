"""TunnelConnection over in-memory streams: multiplexing, flow control, drain, liveness, budgets."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import pytest
import trio
import trio.testing
from h2.errors import ErrorCodes

from ptth._h2 import H2Settings
from ptth._liveness import Liveness
from ptth._stream import TunnelStream
from ptth._tunnel import StreamHandler, TunnelConnection
from ptth.errors import StreamReset, TunnelClosed, TunnelError

SMALL = H2Settings(stream_window=64 * 1024, connection_window=128 * 1024, max_frame_size=16384)
REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", b"/")]


async def echo(stream: TunnelStream) -> None:
    await stream.receive_headers()
    body = b""
    while chunk := await stream.receive_data():
        body += chunk
    await stream.send_headers([(b":status", b"200")])
    await stream.send_data(body, end_stream=True)


async def pair(
    nursery: trio.Nursery,
    handler: StreamHandler,
    settings: H2Settings = SMALL,
    liveness: Liveness | None = None,
) -> tuple[TunnelConnection, TunnelConnection]:
    a, b = trio.testing.memory_stream_pair()
    client = TunnelConnection(
        a, client_side=True, tunnel_id="c", settings=settings, liveness=liveness
    )
    server = TunnelConnection(
        b, client_side=False, tunnel_id="s", settings=settings, on_stream=handler, liveness=liveness
    )
    await nursery.start(server.run)
    await nursery.start(client.run)
    with trio.fail_after(5):
        await client.wait_remote_settings()
    return client, server


async def read_all(stream: TunnelStream) -> bytes:
    body = b""
    while chunk := await stream.receive_data():
        body += chunk
    return body


@pytest.mark.timeout(10)
async def test_many_streams_multiplex_and_echo() -> None:
    async with trio.open_nursery() as nursery:
        client, _ = await pair(nursery, echo)
        results: dict[int, bytes] = {}

        async def one(i: int) -> None:
            stream = await client.open_stream(REQUEST)
            await stream.send_data(bytes([i]) * (1000 * i + 1), end_stream=True)
            headers = await stream.receive_headers()
            assert headers[0] == (b":status", b"200")
            results[i] = await read_all(stream)
            await stream.aclose()

        async with trio.open_nursery() as requests:
            for i in range(50):
                requests.start_soon(one, i)
        assert all(results[i] == bytes([i]) * (1000 * i + 1) for i in range(50))
        assert client.open_streams == 0
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(10)
async def test_slow_consumer_stops_the_sender_at_the_window() -> None:
    sent = 0

    async def firehose(stream: TunnelStream) -> None:
        nonlocal sent
        await stream.receive_headers()
        await stream.send_headers([(b":status", b"200")])
        chunk = b"x" * 16384
        for _ in range(1000):  # 16 MiB if nothing pushed back
            await stream.send_data(chunk)
            sent += len(chunk)
        await stream.end()

    async with trio.open_nursery() as nursery:
        client, _ = await pair(nursery, firehose)
        stream = await client.open_stream(REQUEST, end_stream=True)
        await stream.receive_headers()
        await trio.sleep(0.3)
        # Nothing consumed: the backend is held at the stream window; so is our buffer.
        assert sent <= SMALL.stream_window + 16384
        assert stream.buffered <= SMALL.stream_window
        received = len(await read_all(stream))  # consuming reopens the window
        assert received == 1000 * 16384 == sent
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(10)
async def test_reset_reaches_the_other_side() -> None:
    handler_saw: list[BaseException] = []
    started = trio.Event()

    async def waits_forever(stream: TunnelStream) -> None:
        await stream.receive_headers()
        started.set()
        try:
            await stream.receive_data()
        except TunnelError as exc:
            handler_saw.append(exc)
            raise

    async with trio.open_nursery() as nursery:
        client, server = await pair(nursery, waits_forever)
        stream = await client.open_stream(REQUEST)
        await started.wait()
        await stream.reset(ErrorCodes.CANCEL)
        with trio.fail_after(2):
            while not handler_saw:
                await trio.sleep(0.01)
        assert isinstance(handler_saw[0], StreamReset)
        assert handler_saw[0].error_code == ErrorCodes.CANCEL
        with trio.fail_after(2):
            while server.open_streams:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(10)
async def test_graceful_goaway_lets_in_flight_streams_finish() -> None:
    release = trio.Event()

    async def slow(stream: TunnelStream) -> None:
        await stream.receive_headers()
        await release.wait()
        await stream.send_headers([(b":status", b"200")])
        await stream.send_data(b"done", end_stream=True)

    async with trio.open_nursery() as nursery:
        client, server = await pair(nursery, slow)
        stream = await client.open_stream(REQUEST, end_stream=True)
        await trio.sleep(0.05)
        drained = trio.Event()

        async def drain() -> None:
            await server.drain(timeout=5)
            drained.set()

        nursery.start_soon(drain)
        with trio.fail_after(2):
            while not client.draining:
                await trio.sleep(0.01)
        with pytest.raises(TunnelError):
            await client.open_stream(REQUEST, end_stream=True)
        release.set()
        await stream.receive_headers()
        assert await read_all(stream) == b"done"
        with trio.fail_after(2):
            await drained.wait()
        with trio.fail_after(2):
            await client.wait_closed()
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(10)
async def test_silent_peer_is_declared_dead(autojump_clock: trio.abc.Clock) -> None:
    a, _b = trio.testing.memory_stream_pair()  # nobody ever answers on _b
    client = TunnelConnection(
        a, client_side=True, liveness=Liveness(interval=1, dead_after=3, write_timeout=1)
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        start = trio.current_time()
        await client.wait_closed()
        assert 3 <= trio.current_time() - start <= 5


@pytest.mark.timeout(10)
async def test_peer_that_never_reads_fails_writes(autojump_clock: trio.abc.Clock) -> None:
    a, _b = trio.testing.lockstep_stream_pair()  # every send waits for a reader that never comes
    client = TunnelConnection(
        a, client_side=True, liveness=Liveness(interval=100, dead_after=200, write_timeout=2)
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run)
        with trio.fail_after(5):
            await client.wait_closed()


async def raw_server(
    stream: trio.abc.Stream,
) -> tuple[h2.connection.H2Connection, list[h2.events.Event]]:
    """A plain h2 server peer: completes the preface and returns its connection."""
    conn = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    conn.initiate_connection()
    await stream.send_all(conn.data_to_send())
    events = conn.receive_data(await stream.receive_some(65536))
    await stream.send_all(conn.data_to_send())
    return conn, events


@pytest.mark.timeout(10)
async def test_ping_flood_closes_the_tunnel() -> None:
    a, b = trio.testing.memory_stream_pair()
    client = TunnelConnection(a, client_side=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        conn, _ = await raw_server(b)
        for i in range(2000):
            conn.ping(i.to_bytes(8, "big"))
        try:
            await b.send_all(conn.data_to_send())
        except trio.BrokenResourceError:
            pass
        with trio.fail_after(3):
            await client.wait_closed()
        assert client._closed is not None
        assert client._closed.error_code == ErrorCodes.ENHANCE_YOUR_CALM


@pytest.mark.timeout(10)
async def test_empty_data_flood_closes_the_tunnel() -> None:
    a, b = trio.testing.memory_stream_pair()
    client = TunnelConnection(a, client_side=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        conn, _ = await raw_server(b)
        stream = await client.open_stream(REQUEST, end_stream=True)
        conn.receive_data(await b.receive_some(65536))
        conn.send_headers(stream.stream_id, [(b":status", b"200")])
        for _ in range(5000):
            conn.send_data(stream.stream_id, b"")
        try:
            await b.send_all(conn.data_to_send())
        except trio.BrokenResourceError:
            pass
        with trio.fail_after(3):
            await client.wait_closed()
        assert client._closed is not None
        assert client._closed.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        with pytest.raises(TunnelError):
            await stream.receive_data()


@pytest.mark.timeout(10)
async def test_garbage_instead_of_a_preface_closes_the_tunnel() -> None:
    a, b = trio.testing.memory_stream_pair()
    client = TunnelConnection(a, client_side=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await b.send_all(b"HTTP/1.1 200 OK\r\n\r\nthis is not http/2")
        with trio.fail_after(3):
            await client.wait_closed()
        with pytest.raises(TunnelClosed):
            await client.open_stream(REQUEST)


@pytest.mark.timeout(10)
async def test_refused_stream_is_marked_refused() -> None:
    a, b = trio.testing.memory_stream_pair()
    client = TunnelConnection(a, client_side=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        conn, _ = await raw_server(b)
        stream = await client.open_stream(REQUEST, end_stream=True)
        conn.receive_data(await b.receive_some(65536))
        conn.reset_stream(stream.stream_id, ErrorCodes.REFUSED_STREAM)
        await b.send_all(conn.data_to_send())
        with pytest.raises(StreamReset) as info:
            await stream.receive_headers()
        assert info.value.refused
        nursery.cancel_scope.cancel()

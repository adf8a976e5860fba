"""ptth.transport.ws_stream: a byte stream in WebSocket binary messages.

Two ``WebSocketStream`` ends (client and server, as the helper and the router are) run over a
pipe that re-cuts the frame bytes at boundaries Hypothesis draws: whatever the message sizes and
the transport's chunking, bytes arrive whole and in order, a close is EOF, an abnormal end is a
``BrokenResourceError``, pings are answered, and limits hold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from ptth.transport.ws_stream import WebSocketStream


class Pipe(anyio.abc.ByteStream):
    """One direction pair of a byte pipe; reads are cut at the drawn sizes (cycled)."""

    def __init__(
        self,
        send: anyio.abc.ObjectSendStream[bytes],
        receive: anyio.abc.ObjectReceiveStream[bytes],
        cuts: list[int],
    ) -> None:
        self._send = send
        self._receive = receive
        self._cuts = cuts or [65536]
        self._index = 0
        self._pending = b""
        self.closed = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if not self._pending:
            try:
                self._pending = await self._receive.receive()
            except anyio.EndOfStream:
                raise anyio.EndOfStream from None
        cut = min(max_bytes, self._cuts[self._index % len(self._cuts)])
        self._index += 1
        data, self._pending = self._pending[:cut], self._pending[cut:]
        return data

    async def send(self, item: bytes) -> None:
        if self.closed:
            raise anyio.ClosedResourceError
        try:
            await self._send.send(item)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise anyio.BrokenResourceError from None

    async def send_eof(self) -> None:
        await self._send.aclose()

    async def aclose(self) -> None:
        self.closed = True
        await self._send.aclose()
        await self._receive.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {}


def pipe_pair(cuts_a: list[int], cuts_b: list[int]) -> tuple[Pipe, Pipe]:
    a_send, b_receive = anyio.create_memory_object_stream[bytes](1000)
    b_send, a_receive = anyio.create_memory_object_stream[bytes](1000)
    return Pipe(a_send, a_receive, cuts_a), Pipe(b_send, b_receive, cuts_b)


async def read_all(stream: anyio.abc.ByteStream, sizes: list[int]) -> bytes:
    out = bytearray()
    index = 0
    while True:
        try:
            out += await stream.receive(sizes[index % len(sizes)] if sizes else 65536)
        except anyio.EndOfStream:
            return bytes(out)
        index += 1


cuts = st.lists(st.integers(1, 70_000), min_size=1, max_size=8)
writes = st.lists(st.binary(min_size=0, max_size=5000), max_size=20)


@pytest.mark.timeout(60)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    writes_a=writes,
    writes_b=writes,
    cuts_a=cuts,
    cuts_b=cuts,
    message=st.integers(1, 3000),
    reads=st.lists(st.integers(1, 9000), min_size=1, max_size=5),
    closer=st.sampled_from(["client", "server"]),
)
def test_bytes_cross_whole_in_order_whatever_the_boundaries(
    writes_a: list[bytes],
    writes_b: list[bytes],
    cuts_a: list[int],
    cuts_b: list[int],
    message: int,
    reads: list[int],
    closer: str,
) -> None:
    """Both directions at once; then one side's send_eof (its close frame) is the other's EOF,
    and the other's answer (RFC 6455 §5.5.1: at once, so nothing may follow it) is the first's.
    """

    async def main() -> None:
        pa, pb = pipe_pair(cuts_a, cuts_b)
        client = WebSocketStream(pa, client=True, send_message=message)
        server = WebSocketStream(pb, client=False, send_message=message)
        got: dict[str, bytes] = {}
        written = {"client": anyio.Event(), "server": anyio.Event()}

        async def write(name: str, stream: WebSocketStream, items: list[bytes]) -> None:
            for item in items:
                await stream.send(item)
            written[name].set()
            if name == closer:
                for event in written.values():
                    await event.wait()
                await stream.send_eof()

        async def read(name: str, stream: WebSocketStream) -> None:
            got[name] = await read_all(stream, reads)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(write, "client", client, writes_a)
                tg.start_soon(write, "server", server, writes_b)
                tg.start_soon(read, "server", server)
                tg.start_soon(read, "client", client)
        assert got["server"] == b"".join(writes_a)
        assert got["client"] == b"".join(writes_b)
        assert client.close_code == 1000 and server.close_code == 1000
        await client.aclose()
        await server.aclose()

    anyio.run(main)


def run(fn: Callable[[], Any]) -> None:
    anyio.run(fn)


@pytest.mark.timeout(10)
def test_abnormal_end_is_broken_and_clean_close_is_eof() -> None:
    async def main() -> None:
        pa, pb = pipe_pair([65536], [65536])
        server = WebSocketStream(pb, client=False)
        peer = Connection(ConnectionType.CLIENT)
        await pa.send(peer.send(BytesMessage(data=b"abc")))
        await pa.send_eof()  # the transport ends without a close frame
        assert await server.receive() == b"abc"
        with pytest.raises(anyio.BrokenResourceError):
            await server.receive()
        assert server.close_code == 1006
        await server.aclose()
        await pa.aclose()

        for code, error in ((1000, None), (1001, None), (1011, anyio.BrokenResourceError)):
            pa, pb = pipe_pair([65536], [65536])
            server = WebSocketStream(pb, client=False)
            peer = Connection(ConnectionType.CLIENT)
            await pa.send(peer.send(BytesMessage(data=b"x")) + peer.send(CloseConnection(code)))
            assert await server.receive() == b"x"
            if error is None:
                with pytest.raises(anyio.EndOfStream):
                    await server.receive()
            else:
                with pytest.raises(error):
                    await server.receive()
            # Our answer to the close went out, and nothing more may be sent.
            answer = await pa.receive()
            peer.receive_data(answer)
            assert any(isinstance(e, CloseConnection) for e in peer.events())
            with pytest.raises(anyio.BrokenResourceError):
                await server.send(b"late")
            await server.aclose()
            await pa.aclose()

    run(main)


@pytest.mark.timeout(10)
def test_pings_are_answered_and_text_or_oversized_messages_break_the_stream() -> None:
    async def main() -> None:
        pa, pb = pipe_pair([65536], [65536])
        server = WebSocketStream(pb, client=False, max_message=1000)
        peer = Connection(ConnectionType.CLIENT)
        await pa.send(peer.send(Ping(payload=b"p")) + peer.send(BytesMessage(data=b"ok")))
        assert await server.receive() == b"ok"
        peer.receive_data(await pa.receive())
        assert [type(e) for e in peer.events()] == [Pong]

        await pa.send(peer.send(TextMessage(data="no")))
        with pytest.raises(anyio.BrokenResourceError):
            await server.receive()
        assert server.close_code == 1003
        await server.aclose()
        await pa.aclose()

        pa, pb = pipe_pair([65536], [65536])
        server = WebSocketStream(pb, client=False, max_message=1000)
        peer = Connection(ConnectionType.CLIENT)
        await pa.send(peer.send(BytesMessage(data=b"z" * 1001)))
        with pytest.raises(anyio.BrokenResourceError):
            await server.receive()
        assert server.close_code == 1009
        peer.receive_data(await pa.receive())
        (closed,) = peer.events()
        assert isinstance(closed, CloseConnection) and closed.code == 1009
        await server.aclose()
        await pa.aclose()

    run(main)


@pytest.mark.timeout(10)
def test_sends_are_cut_into_bounded_messages_and_aclose_sends_a_close() -> None:
    async def main() -> None:
        pa, pb = pipe_pair([65536], [65536])
        client = WebSocketStream(pa, client=True, send_message=1000)
        peer = Connection(ConnectionType.SERVER)
        await client.send(b"q" * 2500)
        await client.aclose()
        data = b""
        while True:
            try:
                data += await pb.receive()
            except anyio.EndOfStream:
                break
        peer.receive_data(data)
        events = list(peer.events())
        sizes = [len(e.data) for e in events if isinstance(e, BytesMessage)]
        assert sizes == [1000, 1000, 500]
        assert isinstance(events[-1], CloseConnection) and events[-1].code == 1000
        assert pa.closed
        with pytest.raises(anyio.ClosedResourceError):
            await client.send(b"after close")
        await pb.aclose()

    run(main)


@pytest.mark.timeout(10)
def test_send_waits_for_the_transport_and_receive_reads_only_when_empty() -> None:
    """Backpressure is the transport's: a send returns once the transport took its frames."""

    async def main() -> None:
        a_send, b_receive = anyio.create_memory_object_stream[bytes](0)  # no buffer at all
        b_send, a_receive = anyio.create_memory_object_stream[bytes](0)
        pa, pb = Pipe(a_send, a_receive, [1 << 20]), Pipe(b_send, b_receive, [1 << 20])
        client = WebSocketStream(pa, client=True)
        server = WebSocketStream(pb, client=False)
        sent = anyio.Event()

        async def send() -> None:
            await client.send(b"w" * 300_000)
            sent.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            await anyio.sleep(0.05)
            assert not sent.is_set()  # nobody read the transport yet
            received = b""
            while len(received) < 300_000:
                received += await server.receive(1 << 20)
            await sent.wait()
        assert received == b"w" * 300_000
        for stream in (client, server):
            await stream.aclose()

    run(main)

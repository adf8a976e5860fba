"""A response the app abandons mid-body must reach the user as *aborted*, never as a short body
that looks complete: through the router's native front end, with the app served by the helper.

* HTTP/1.1: the front end closes the connection before the declared Content-Length / before the
  terminating zero-length chunk.
* HTTP/2 (h2c prior knowledge): the stream is reset with INTERNAL_ERROR, normal responses are
  never reset, and a client's RST_STREAM reaches the app as ``http.disconnect``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx
import pytest
import trio

from tests.support import start_backend, start_router

SENT = b"x" * 50
OK_SIZES = {"/ok/0": 0, "/ok/1": 1, "/ok/16k": 16384, "/ok/100k": 100_000}

# Set by the app when the client's reset of /hold reached it as http.disconnect.
disconnects: dict[str, trio.Event] = {}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    path = scope["path"]
    if path in OK_SIZES:
        body = b"o" * OK_SIZES[path]
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    if path == "/early":
        raise RuntimeError("backend unreachable")  # before start: hypercorn answers 500
    if path == "/hold":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": SENT, "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
        disconnects.setdefault(scope["query_string"].decode(), trio.Event()).set()
        return
    headers = [(b"content-length", b"100")] if path == "/cl" else []
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": SENT, "more_body": True})
    raise RuntimeError("backend died mid-body")


@asynccontextmanager
async def serving() -> AsyncIterator[int]:
    """A router and one backend serving ``app``; yields the router's front-end port."""
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        await start_backend(nursery, app, router.tunnel)
        await router.wait_tunnels(1)
        try:
            yield router.addresses.http[1]
        finally:
            nursery.cancel_scope.cancel()


async def read_until_eof(stream: trio.SocketStream, seconds: float = 5) -> bytes:
    data = b""
    with trio.fail_after(seconds):  # TooSlowError = the server left the connection open
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


# --- HTTP/1.1 ---------------------------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_h11_content_length_connection_closed_short() -> None:
    async with serving() as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /cl HTTP/1.1\r\nHost: t\r\n\r\n")
            data = await read_until_eof(stream)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-length: 100" in head.lower()
    assert body == SENT  # 50 of the declared 100, then EOF


@pytest.mark.timeout(20)
async def test_h11_chunked_connection_closed_without_last_chunk() -> None:
    async with serving() as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /chunked HTTP/1.1\r\nHost: t\r\n\r\n")
            data = await read_until_eof(stream)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding: chunked" in head.lower()
    assert body == b"32\r\n" + SENT + b"\r\n"  # no terminating b"0\r\n\r\n"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("path", ["/cl", "/chunked"])
async def test_h11_httpx_raises(path: str) -> None:
    async with serving() as port, httpx.AsyncClient(timeout=5) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"http://127.0.0.1:{port}{path}")


# --- HTTP/2 -----------------------------------------------------------------------------------


class H2Client:
    """Just enough of an h2c prior-knowledge client to see frames the way a user agent does."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.events: list[h2.events.Event] = []

    async def start(self) -> None:
        self.conn.initiate_connection()
        await self.flush()

    async def flush(self) -> None:
        await self.stream.send_all(self.conn.data_to_send())

    async def request(self, path: str) -> int:
        stream_id: int = self.conn.get_next_available_stream_id()
        headers = [(":method", "GET"), (":scheme", "http"), (":authority", "t"), (":path", path)]
        self.conn.send_headers(stream_id, headers, end_stream=True)
        await self.flush()
        return stream_id

    async def until(self, stream_id: int, *kinds: type[h2.events.Event]) -> h2.events.Event:
        """Read until an event of one of ``kinds`` arrives for ``stream_id``; return it."""
        while True:
            for event in self.events:
                if isinstance(event, kinds) and getattr(event, "stream_id", None) == stream_id:
                    return event
            data = await self.stream.receive_some(65536)
            assert data, "server closed the connection"
            for event in self.conn.receive_data(data):
                self.events.append(event)
                if isinstance(event, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
            await self.flush()

    def body(self, stream_id: int) -> bytes:
        return b"".join(
            e.data
            for e in self.events
            if isinstance(e, h2.events.DataReceived) and e.stream_id == stream_id
        )

    def ended(self, stream_id: int) -> bool:
        return any(
            isinstance(e, h2.events.StreamEnded) and e.stream_id == stream_id for e in self.events
        )


@asynccontextmanager
async def h2_client(port: int) -> AsyncIterator[H2Client]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        client = H2Client(stream)
        await client.start()
        yield client


@pytest.mark.timeout(20)
@pytest.mark.parametrize("path", ["/cl", "/chunked"])
async def test_h2_abandoned_response_is_reset(path: str) -> None:
    async with serving() as port, h2_client(port) as client:
        stream_id = await client.request(path)
        with trio.fail_after(2):
            event = await client.until(stream_id, h2.events.StreamReset, h2.events.StreamEnded)
        assert isinstance(event, h2.events.StreamReset)
        assert event.error_code == h2.errors.ErrorCodes.INTERNAL_ERROR
        assert not client.ended(stream_id)
        # Body the send task had not written yet is dropped with the reset (here usually all
        # of it, as the app raises without yielding); the client discards it anyway.
        assert SENT.startswith(client.body(stream_id))

        # Only that stream was aborted: the connection keeps serving.
        stream_id = await client.request("/ok/16k")
        with trio.fail_after(2):
            await client.until(stream_id, h2.events.StreamEnded)
        assert client.body(stream_id) == b"o" * 16384


@pytest.mark.timeout(20)
@pytest.mark.parametrize("path", ["/cl", "/chunked"])
async def test_h2_httpx_raises(path: str) -> None:
    # httpx speaks h2c with prior knowledge when HTTP/1.1 is switched off.
    async with serving() as port, httpx.AsyncClient(http1=False, http2=True, timeout=5) as client:
        ok = await client.get(f"http://127.0.0.1:{port}/ok/1")
        assert ok.http_version == "HTTP/2"
        with trio.fail_after(2), pytest.raises(httpx.RemoteProtocolError, match="StreamReset"):
            await client.get(f"http://127.0.0.1:{port}{path}")


@pytest.mark.timeout(20)
async def test_h2_complete_responses_are_never_reset() -> None:
    # EndBody returns once the buffer drains, possibly before END_STREAM is on the wire; the
    # patch must not mistake that window for an abandoned response. Sizes cover empty bodies,
    # one frame, and more than the initial 65535-byte flow-control window.
    async with serving() as port, httpx.AsyncClient(http1=False, http2=True, timeout=5) as client:
        results: dict[tuple[str, int], bytes] = {}

        async def fetch(path: str, i: int) -> None:
            response = await client.get(f"http://127.0.0.1:{port}{path}")
            assert response.status_code == 200
            results[path, i] = response.content

        async with trio.open_nursery() as nursery:
            for i in range(10):
                for path in OK_SIZES:
                    nursery.start_soon(fetch, path, i)
        assert len(results) == 10 * len(OK_SIZES)
        for (path, _), content in results.items():
            assert content == b"o" * OK_SIZES[path]


@pytest.mark.timeout(20)
async def test_h2_app_failing_before_start_still_gets_500() -> None:
    async with serving() as port, httpx.AsyncClient(http1=False, http2=True, timeout=5) as client:
        response = await client.get(f"http://127.0.0.1:{port}/early")
    assert response.status_code == 500
    assert response.http_version == "HTTP/2"


@pytest.mark.timeout(20)
async def test_h2_client_reset_reaches_app_as_disconnect() -> None:
    disconnects["reset"] = trio.Event()
    async with serving() as port, h2_client(port) as client:
        stream_id = await client.request("/hold?reset")
        with trio.fail_after(2):
            await client.until(stream_id, h2.events.DataReceived)
        client.conn.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.CANCEL)
        await client.flush()
        with trio.fail_after(2):
            await disconnects["reset"].wait()

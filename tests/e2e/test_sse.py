"""Streaming without buffering (issue 3, item 2): SSE and chunked bodies flush chunk by chunk.

* every server-sent event reaches the user within 100 ms of the app sending it;
* a stream that lasts longer than ``response_timeout`` keeps flowing (that timeout only bounds
  the wait for response headers);
* ``response_idle_timeout`` bounds *silence*: a stream that goes quiet is aborted (the user sees
  an incomplete response and the app a disconnect), one that keeps talking is not.

Every test runs the helper on both loops (``helper_loop``): the app uses anyio, and the send
timestamps it puts in each event and the arrival times the client records both come from
``time.monotonic``, one clock whichever thread the app runs in.
"""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import httpx
import pytest
import trio

from ptth.types import Receive, Scope, Send
from tests.support import serve_lifespan, start_backend, start_router

VERSIONS = ["http1", "http2"]


class SSEApp:
    """``/events?n=N&every=S`` streams N events; ``/quiet`` sends one event then goes silent."""

    def __init__(self) -> None:
        self.disconnected_at: float | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        query = dict(p.split("=") for p in scope["query_string"].decode().split("&") if p)
        await receive()  # the (empty) request body
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        if scope["path"] == "/quiet":
            await self._event(send, 0)
            message = await receive()  # only a disconnect can come now
            assert message["type"] == "http.disconnect"
            self.disconnected_at = time.monotonic()
            return
        for i in range(int(query.get("n", "5"))):
            await self._event(send, i)
            await anyio.sleep(float(query.get("every", "0.2")))
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _event(send: Send, i: int) -> None:
        data = json.dumps({"i": i, "sent": time.monotonic()})
        body = f"id: {i}\nevent: tick\ndata: {data}\n\n".encode()
        await send({"type": "http.response.body", "body": body, "more_body": True})


def _client(url: str, version: str) -> httpx.AsyncClient:
    http2 = version == "http2"
    return httpx.AsyncClient(base_url=url, http1=not http2, http2=http2, timeout=20)


async def _read_events(response: httpx.Response) -> list[tuple[dict[str, Any], float]]:
    events: list[tuple[dict[str, Any], float]] = []
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            events.append((json.loads(line[6:]), time.monotonic()))
    return events


@pytest.mark.timeout(30)
@pytest.mark.parametrize("version", VERSIONS)
async def test_each_event_arrives_within_100ms_and_outlives_the_response_timeout(
    version: str, helper_loop: str
) -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, response_timeout=0.5)
        await start_backend(nursery, SSEApp(), router.tunnel, loop=helper_loop)
        await router.wait_tunnels(1)
        started = time.monotonic()
        async with (
            _client(router.url, version) as client,
            client.stream("GET", "/events", params={"n": "8", "every": "0.2"}) as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream"
            events = await _read_events(response)
        elapsed = time.monotonic() - started
        latencies = [arrived - event["sent"] for event, arrived in events]
        print(f"SSE {version}: latency max {max(latencies) * 1000:.1f} ms, {latencies=}")
        assert [event["i"] for event, _ in events] == list(range(8))
        assert max(latencies) < 0.1, latencies
        assert elapsed > 1.5  # three times the response timeout, and never cut
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("version", VERSIONS)
async def test_silent_stream_is_aborted_by_the_idle_timeout(version: str, helper_loop: str) -> None:
    app = SSEApp()
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, response_idle_timeout=0.5)
        await start_backend(nursery, app, router.tunnel, loop=helper_loop)
        await router.wait_tunnels(1)
        async with _client(router.url, version) as client:
            started = time.monotonic()
            events: list[str] = []
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                async with client.stream("GET", "/quiet") as response:
                    assert response.status_code == 200
                    async for line in response.aiter_lines():
                        events.append(line)
            aborted_after = time.monotonic() - started
        assert any(line.startswith("data: ") for line in events)  # the first event came through
        assert 0.45 < aborted_after < 3, aborted_after
        # The tunnel stream was reset, so the app learns the user is gone.
        with trio.fail_after(5):
            while app.disconnected_at is None:
                await trio.sleep(0.01)
        assert app.disconnected_at - started < 3
        # The router is still healthy for the next request.
        async with _client(router.url, version) as client:
            response = await client.get("/events", params={"n": "1", "every": "0"})
            assert response.status_code == 200
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_a_stream_that_keeps_talking_is_not_cut_by_the_idle_timeout(helper_loop: str) -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, response_timeout=0.5, response_idle_timeout=0.5)
        await start_backend(nursery, SSEApp(), router.tunnel, loop=helper_loop)
        await router.wait_tunnels(1)
        async with (
            _client(router.url, "http1") as client,
            client.stream("GET", "/events", params={"n": "6", "every": "0.3"}) as response,
        ):
            events = await _read_events(response)
        assert len(events) == 6  # 1.8 s in all, never 0.5 s of silence
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_plain_chunked_body_is_flushed_chunk_by_chunk(helper_loop: str) -> None:
    """Not just SSE: any streamed body reaches the user piece by piece (HTTP/1.1 chunked)."""
    sent: list[float] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(5):
            sent.append(time.monotonic())
            await send({"type": "http.response.body", "body": b"%d" % i, "more_body": True})
            await anyio.sleep(0.15)
        await send({"type": "http.response.body", "body": b""})

    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        await start_backend(nursery, app, router.tunnel, loop=helper_loop)
        await router.wait_tunnels(1)
        arrived: list[float] = []
        async with (
            _client(router.url, "http1") as client,
            client.stream("GET", "/chunks") as response,
        ):
            assert response.headers.get("transfer-encoding") == "chunked"
            async for piece in response.aiter_raw():
                arrived.extend(time.monotonic() for _ in piece)
        assert len(arrived) == 5
        assert max(a - s for a, s in zip(arrived, sent, strict=True)) < 0.1
        nursery.cancel_scope.cancel()

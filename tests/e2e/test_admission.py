"""Load shedding before any work: rate limit (429), in-flight cap (503), stalled bodies (408)."""

from __future__ import annotations

import httpx
import pytest
import trio

from ptth.types import Receive, Scope, Send
from tests.support import ThreadSafeEvent, make_hello_app, start_backend, start_router


@pytest.mark.timeout(20)
async def test_rate_limit_answers_429_with_retry_after() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, rate_limit=2.0, rate_burst=3.0)
        await start_backend(nursery, make_hello_app("b"), router.tunnel)
        await router.wait_tunnels(1)
        async with httpx.AsyncClient(base_url=router.url) as client:
            statuses = [(await client.get("/foo")).status_code for _ in range(6)]
            assert statuses[:3] == [200, 200, 200]
            assert 429 in statuses[3:]
            limited = await client.get("/foo")
            assert limited.status_code == 429
            assert int(limited.headers["retry-after"]) >= 1
            await trio.sleep(1.1)  # the bucket refills at 2/s
            assert (await client.get("/foo")).status_code == 200
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(20)
async def test_in_flight_cap_sheds_at_once() -> None:
    release = trio.Event()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan")
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, max_in_flight=2)
        await start_backend(nursery, slow, router.tunnel)
        await router.wait_tunnels(1)
        async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
            done: list[int] = []

            async def held() -> None:
                done.append((await client.get("/")).status_code)

            nursery.start_soon(held)
            nursery.start_soon(held)
            with trio.fail_after(5):
                while router.router.context.in_flight < 2:
                    await trio.sleep(0.01)
            start = trio.current_time()
            shed = await client.get("/")
            assert shed.status_code == 503
            assert "retry-after" in shed.headers
            assert trio.current_time() - start < 0.5  # no queueing
            release.set()
            with trio.fail_after(5):
                while len(done) < 2:
                    await trio.sleep(0.01)
            assert done == [200, 200]
            assert (await client.get("/")).status_code == 200  # recovered
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(20)
async def test_stalled_request_body_gets_408_and_frees_the_backend(helper_loop: str) -> None:
    disconnected = ThreadSafeEvent()

    async def reader(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan")
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected.set()
                return
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"got it"})

    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, request_body_timeout=0.5)
        await start_backend(nursery, reader, router.tunnel, loop=helper_loop)
        await router.wait_tunnels(1)
        host, port = router.addresses.http
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"a" * 10
        )
        start = trio.current_time()
        received = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in received:
                received += await stream.receive_some(4096)
        assert received.startswith(b"HTTP/1.1 408")
        assert 0.4 < trio.current_time() - start < 2
        with trio.fail_after(2):
            await disconnected.wait()  # the backend's stream was reset, not left hanging
        await stream.aclose()
        nursery.cancel_scope.cancel()

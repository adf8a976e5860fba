"""Long-lived streams never starve a tunnel (issue 6 item 4).

WebSockets hold a stream slot for as long as they live. The default stream limit per tunnel is
large, the router follows the backend's SETTINGS_MAX_CONCURRENT_STREAMS up to its own cap (and
says so when it caps), and the helper opens extra tunnels when every tunnel is over 80 % full,
closing them again once idle.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
import pytest
import trio

from ptth import BackendOptions
from tests.support import (
    RunningRouter,
    make_hello_app,
    require_module,
    serve_lifespan,
    start_backend,
    start_router,
)

require_module("websockets", reason="the websockets client is not installed")
from websockets.asyncio.client import connect as async_connect  # noqa: E402 (after the check)

from ptth.types import Receive, Scope, Send  # noqa: E402


async def ws_and_http_app(scope: Scope, receive: Receive, send: Send) -> None:
    """WebSocket echo on any path; plain HTTP answers 200 "ok"."""
    if scope["type"] == "lifespan":
        await serve_lifespan(receive, send)
        return
    if scope["type"] == "http":
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": message.get("text") or ""})


def hold_sessions(
    url: str, count: int, opened: trio.MemorySendChannel[int] | Any, hold: Any
) -> int:
    """Open ``count`` WebSockets at once (asyncio client, in a thread), echo once on each, hold
    them until ``hold`` (a threading.Event) is set, then close them all. Returns echoes checked."""

    async def main() -> int:
        checked = 0
        connecting = asyncio.Semaphore(50)
        all_open = asyncio.Event()
        sockets: list[Any] = []

        async def one(index: int) -> None:
            nonlocal checked
            async with connecting:
                ws = await async_connect(url, proxy=None, open_timeout=30, compression=None)
            sockets.append(ws)
            await ws.send(f"hello {index}")
            assert await ws.recv() == f"hello {index}"
            checked += 1
            if len(sockets) == count:
                all_open.set()

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), 60)
        await all_open.wait()
        opened(len(sockets))
        while not hold.is_set():
            await asyncio.sleep(0.02)
        for ws in sockets:
            await ws.close()
        return checked

    return asyncio.run(main())


async def plain_requests_while(router: RunningRouter, stop: trio.Event) -> list[int]:
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
        while not stop.is_set():
            statuses.append((await client.get("/plain")).status_code)
            await trio.sleep(0.02)
    return statuses


async def run_sessions(router: RunningRouter, count: int, check: Any) -> tuple[int, list[int]]:
    """Hold ``count`` WebSockets open; while they are all open, call ``check()`` and make plain
    requests; returns (echoes checked, plain statuses)."""
    import threading

    url = router.url.replace("http://", "ws://", 1) + "/ws"
    hold = threading.Event()
    all_open = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def opened(n: int) -> None:
        token.run_sync_soon(all_open.set)

    result: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:

        async def sessions() -> None:
            result["checked"] = await trio.to_thread.run_sync(
                hold_sessions, url, count, opened, hold
            )

        nursery.start_soon(sessions)
        try:
            with trio.fail_after(60):
                await all_open.wait()
            stop = trio.Event()

            async def plain() -> None:
                result["statuses"] = await plain_requests_while(router, stop)

            nursery.start_soon(plain)
            await trio.sleep(0.5)
            await check()
            stop.set()
        finally:
            hold.set()
    return result["checked"], result["statuses"]


@pytest.mark.timeout(90)
async def test_250_websockets_on_one_backend_with_default_settings() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        backend = await start_backend(nursery, ws_and_http_app, router.tunnel)
        await router.wait_tunnels(1)

        async def check() -> None:
            assert sum(t.in_flight for t in router.router.registry.tunnels()) >= 250

        started = time.monotonic()
        checked, statuses = await run_sessions(router, 250, check)
        assert checked == 250
        assert statuses and set(statuses) == {200}, statuses
        print(
            f"\n[streams] 250 WebSockets + {len(statuses)} plain requests in "
            f"{time.monotonic() - started:.1f} s, {router.tunnel_count()} tunnel(s)"
        )
        await backend.stop()
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(90)
async def test_full_tunnels_make_the_helper_open_extra_ones_and_close_them_when_idle(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        options = BackendOptions(
            max_concurrent_streams=100, max_connections=4, extra_idle_timeout=0.5
        )
        backend = await start_backend(nursery, ws_and_http_app, router.tunnel, options=options)
        await router.wait_tunnels(1)

        async def check() -> None:
            # 250 sessions need three tunnels of 100; the fourth (opened once three are over
            # 80 % full) may or may not have come, but never a fifth.
            assert 3 <= router.tunnel_count() <= 4, router.tunnel_count()

        checked, statuses = await run_sessions(router, 250, check)
        assert checked == 250
        assert statuses and set(statuses) == {200}, statuses
        assert any("opening another" in r.getMessage() for r in caplog.records)
        # The extra tunnels close again once idle; the base one stays.
        with trio.fail_after(15):
            while router.tunnel_count() > 1:
                await trio.sleep(0.05)
        assert any("extra tunnel idle" in r.getMessage() for r in caplog.records)
        async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
            assert (await client.get("/after")).status_code == 200
        await backend.stop()
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_router_follows_the_backend_limit_up_to_its_cap_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, max_streams_per_tunnel=300)
        low = await start_backend(
            nursery, make_hello_app("low"), router.tunnel, service="low", max_concurrent_streams=50
        )
        high = await start_backend(
            nursery,
            make_hello_app("high"),
            router.tunnel,
            service="high",
            max_concurrent_streams=5000,
        )
        await router.wait_tunnels(2)
        limits = {t.service: t.max_streams for t in router.router.registry.tunnels()}
        assert limits == {"low": 50, "high": 300}
        capped = [r.getMessage() for r in caplog.records if "capped at" in r.getMessage()]
        assert len(capped) == 1 and "5000" in capped[0] and "300" in capped[0], capped
        await low.stop()
        await high.stop()
        nursery.cancel_scope.cancel()

"""ASGI adapter edge cases that must fail one stream, never the tunnel it shares."""

from __future__ import annotations

import anyio
import httpx
import pytest
import trio

from ptth.types import Receive, Scope, Send
from tests.support import start_backend, start_router


async def lying_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        raise RuntimeError("no lifespan here")
    if scope["path"] == "/short":
        headers = [(b"content-length", b"100")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"x" * 10})
        return
    if scope["path"] == "/long":
        headers = [(b"content-length", b"5")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"x" * 50})
        return
    if scope["path"] == "/slow":
        await anyio.sleep(0.5)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.timeout(20)
async def test_content_length_lies_fail_only_their_own_stream(helper_loop: str) -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        await start_backend(nursery, lying_app, router.tunnel, loop=helper_loop)
        await router.wait_tunnels(1)
        async with httpx.AsyncClient(base_url=router.url, timeout=5) as client:
            slow = nursery.start_soon
            results: list[str] = []

            async def bystander() -> None:
                response = await client.get("/slow")
                results.append(response.text)

            slow(bystander)
            await trio.sleep(0.1)
            for path in ("/short", "/long"):
                with pytest.raises(httpx.HTTPError):
                    response = await client.get(path)
                    response.raise_for_status()
            with trio.fail_after(5):
                while not results:
                    await trio.sleep(0.02)
            assert results == ["ok"]  # the stream beside the broken ones completed
            assert router.tunnel_count() == 1  # and the tunnel survived
            assert (await client.get("/")).text == "ok"
        nursery.cancel_scope.cancel()

"""The shortest end-to-end path: router + one backend + httpx, both HTTP versions."""

from __future__ import annotations

import httpx
import pytest
import trio

from tests.support import make_hello_app, start_backend, start_router


@pytest.mark.timeout(20)
async def test_get_and_post_through_the_tunnel(helper_loop: str) -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        backend = await start_backend(
            nursery, make_hello_app("b1"), router.tunnel, loop=helper_loop
        )
        await router.wait_tunnels(1)
        async with httpx.AsyncClient(base_url=router.url) as client:
            response = await client.get("/foo")
            assert (response.status_code, response.text) == (200, "bar")
            assert response.headers["x-backend"] == "b1"
            response = await client.post("/echo", content=b"hello")
            assert response.text == "hello"
        async with httpx.AsyncClient(base_url=router.url, http1=False, http2=True) as client:
            response = await client.get("/foo")
            assert response.http_version == "HTTP/2"
            assert response.text == "bar"
        await backend.stop()
        assert backend.error is None
        nursery.cancel_scope.cancel()

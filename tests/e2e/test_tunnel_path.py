"""A router whose ``--tunnel-path`` moved the plain handshake, and a helper given that path."""

from __future__ import annotations

import logging

import pytest
import trio

from tests.support import make_hello_app, start_backend, start_router


@pytest.mark.timeout(30)
async def test_helper_dials_a_moved_tunnel_path(
    helper_loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``tcp://HOST:PORT/custom/ptth`` registers on the front end of a router with
    ``--tunnel-path /custom/ptth``; the default target there is refused, with the path named."""
    import httpx

    caplog.set_level(logging.INFO)
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, tunnel_path="/custom/ptth", tunnel="none")
        front = router.addresses.http[1]
        await start_backend(
            nursery,
            make_hello_app("moved"),
            f"tcp://127.0.0.1:{front}/custom/ptth",
            loop=helper_loop,
        )
        await router.wait_tunnels(1)
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(router.url + "/x")
        assert response.status_code == 200, response.text
        assert response.headers["x-backend"] == "moved"

        wrong = await start_backend(
            nursery, make_hello_app("lost"), f"127.0.0.1:{front}", loop=helper_loop
        )
        with trio.fail_after(10):
            await wrong.done.wait()
        assert wrong.error is not None
        assert "/custom/ptth" in str(wrong.error)
        nursery.cancel_scope.cancel()

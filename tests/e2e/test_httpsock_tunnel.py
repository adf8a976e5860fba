"""Tunnels over httpsock (issue 9, items 1 and 3): a helper given ``http://HOST:PORT`` dials the
router's front end at ``/.well-known/ptth/socket`` and serves requests through it, on both helper
loops, WebSockets included; ``python -m ptth --router http://...``; ``--no-front-end-tunnels``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
import ssl
from pathlib import Path

import httpx
import pytest
import trio
import trustme

from ptth.errors import HandshakeRefused
from router.config import RouterConfig
from router.server import Router
from tests.e2e.apps_websocket import make_app as make_ws_app
from tests.support import (
    child,
    make_hello_app,
    require_module,
    start_backend,
    start_router,
)

require_module("websockets", reason="the websockets client is not installed")
from websockets.sync.client import connect as sync_connect  # noqa: E402 (after the availability check)


async def test_requests_through_an_httpsock_tunnel(helper_loop: str) -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, tunnel="none")
        backend = await start_backend(
            nursery,
            make_hello_app("hs"),
            router.url,  # http://: the scheme picks httpsock, loop=helper_loop
        )
        await router.wait_tunnels(1)
        body = hashlib.sha256(b"x").digest() * (2 * 1024 * 1024 // 32)  # 2 MiB, echoed
        async with httpx.AsyncClient(base_url=router.url, timeout=20) as client:
            for _ in range(20):
                answer = await client.get("/anything")
                assert answer.status_code == 200 and answer.text == "bar"
                assert answer.headers["x-backend"] == "hs"
            echoed = await client.post("/echo", content=body)
            assert echoed.status_code == 200 and echoed.content == body
            # Concurrent requests share the one tunnel (HTTP/2 streams over the session).
            async with trio.open_nursery() as many:
                results: list[int] = []

                async def one() -> None:
                    results.append((await client.get("/c")).status_code)

                for _ in range(30):
                    many.start_soon(one)
            assert results == [200] * 30
        assert router.tunnel_count() == 1
        assert len(router.router.httpsock.listener.table) == 1
        await backend.stop()
        assert backend.error is None
        with trio.fail_after(10):  # the drained helper DELETEs its session
            while len(router.router.httpsock.listener.table) or router.tunnel_count():
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


async def test_websocket_through_an_httpsock_tunnel(helper_loop: str) -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        await start_backend(nursery, make_ws_app("b1"), router.url, loop=helper_loop)
        await router.wait_tunnels(1)

        def client() -> None:
            url = router.url.replace("http://", "ws://", 1) + "/echo"
            with sync_connect(url, proxy=None, open_timeout=10, close_timeout=5) as ws:
                for message in ("hello", b"\x00\xff" * 5000, "over http requests"):
                    ws.send(message)
                    assert ws.recv(timeout=10) == message

        assert len(router.router.httpsock.listener.table) == 1  # the tunnel is httpsock
        await trio.to_thread.run_sync(client)
        nursery.cancel_scope.cancel()


async def test_front_end_tunnels_off_refuses_httpsock() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, front_end_tunnels=False)
        backend = await start_backend(nursery, make_hello_app("x"), router.url)
        with trio.fail_after(10):
            await backend.done.wait()
        assert isinstance(backend.error, HandshakeRefused) and backend.error.status == 403
        async with httpx.AsyncClient() as http:
            answer = await http.post(router.url + "/.well-known/ptth/socket")
        assert answer.status_code == 403 and answer.headers["cache-control"] == "no-store"
        assert router.tunnel_count() == 0
        nursery.cancel_scope.cancel()


async def test_httpsock_path_is_configurable_and_answers_no_store() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, httpsock_path="/hidden/sock")
        url = router.url + "/hidden/sock"
        await start_backend(nursery, make_hello_app("p"), url)
        await router.wait_tunnels(1)
        async with httpx.AsyncClient() as http:
            assert (await http.get(router.url + "/x")).text == "bar"
            forged = await http.get(url + "/" + "A" * 43, headers={"x-ack": "0"})
            assert forged.status_code == 404 and forged.headers["cache-control"] == "no-store"
            # The default path is now just an app's path (routed to the backend).
            assert (await http.get(router.url + "/.well-known/ptth/socket")).text == "bar"
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(60)
async def test_cli_child_over_httpsock() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        async with child(
            nursery,
            "-m",
            "ptth",
            "tests.e2e.apps_identities:app",
            "--router",
            router.url,
            "--loop",
            "asyncio",
            PTTH_TEST_NAME="cli",
        ) as helper:
            await helper.wait_for(re.compile(rb"registered"), timeout=20)
            await router.wait_tunnels(1)
            get = functools.partial(httpx.get, timeout=10)
            answer = await trio.to_thread.run_sync(get, router.url + "/plain")
            assert answer.status_code == 200 and answer.headers["x-backend"] == "cli"
            assert len(router.router.httpsock.listener.table) == 1  # the tunnel is httpsock
        nursery.cancel_scope.cancel()


async def test_https_tunnel_verifies_the_router(tmp_path: Path, helper_loop: str) -> None:
    """https://: httpsock over TLS to a TLS front end, the router's certificate checked
    against ``ca_file``; without that CA the helper never registers."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    async with trio.open_nursery() as nursery:
        router = await start_router(
            nursery, tls_cert=str(tmp_path / "cert.pem"), tls_key=str(tmp_path / "key.pem")
        )
        assert router.url.startswith("https://")
        untrusting = await start_backend(nursery, make_hello_app("no"), router.url)
        await start_backend(
            nursery,
            make_hello_app("tls"),
            router.url,
            loop=helper_loop,
            ca_file=str(tmp_path / "ca.pem"),
        )
        await router.wait_tunnels(1)
        context = ssl.create_default_context()
        ca.configure_trust(context)
        async with httpx.AsyncClient(verify=context) as http:
            answer = await http.get(router.url + "/x")
        assert answer.headers["x-backend"] == "tls"
        await trio.sleep(0.5)
        assert router.tunnel_count() == 1 and untrusting.error is None  # still retrying
        nursery.cancel_scope.cancel()


async def test_router_shutdown_with_an_httpsock_tunnel_is_prompt(helper_loop: str) -> None:
    """A held GET does not keep the router's drain waiting: the tunnel is drained with the
    others and ``serve`` returns well within the poll timeout (25 s)."""
    config = dataclasses.replace(
        RouterConfig(), http="127.0.0.1:0", tunnel="none", access_log=False, drain_timeout=5
    )
    router = Router(config)
    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as running:
            addresses = await running.start(router.serve)
            url = addresses.http_url
            backend = await start_backend(nursery, make_hello_app("d"), url, loop=helper_loop)
            with trio.fail_after(10):
                while not router.registry.tunnels():
                    await trio.sleep(0.02)
            async with httpx.AsyncClient() as http:
                assert (await http.get(url + "/x")).text == "bar"
            await trio.sleep(0.3)  # the helper's GET is now held by the router
            started = trio.current_time()
            router.shutdown()  # ``running`` ends when ``serve`` has returned
        took = trio.current_time() - started
        print(f"router stopped {took:.2f} s after shutdown()")
        assert took < 6, f"the router took {took:.1f} s to stop"
        await backend.stop()
        nursery.cancel_scope.cancel()


async def test_several_workers_refuse_httpsock() -> None:
    """A session lives in one process: a router of several workers says so (403, final)."""
    if "workers" not in {f.name for f in dataclasses.fields(RouterConfig)}:
        pytest.skip("this tree's RouterConfig has no workers field yet")
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, workers="2")
        backend = await start_backend(nursery, make_hello_app("w"), router.url)
        with trio.fail_after(10):
            await backend.done.wait()
        assert isinstance(backend.error, HandshakeRefused) and backend.error.status == 403
        assert "one worker" in backend.error.reason
        nursery.cancel_scope.cancel()


async def test_session_is_bound_to_the_tunnels_token() -> None:
    """A helper with a token sends it as Authorization on every httpsock request, so the
    session is bound to the tunnel's credentials: the session token and key seen on the wire,
    replayed without that Authorization, open nothing (404, as a forged token)."""
    seen = bytearray()

    async def relay(target: int, task_status: trio.TaskStatus[int]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])

        async def handle(user: trio.SocketStream) -> None:
            async with user, await trio.open_tcp_stream("127.0.0.1", target) as server:

                async def pipe(a: trio.SocketStream, b: trio.SocketStream) -> None:
                    try:
                        async for data in a:
                            seen.extend(data)
                            await b.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                    finally:
                        with trio.CancelScope(shield=True):
                            await trio.aclose_forcefully(b)

                async with trio.open_nursery() as both:
                    both.start_soon(pipe, user, server)
                    both.start_soon(pipe, server, user)

        await trio.serve_listeners(handle, listeners)

    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, tunnel="none", token="s3cret")
        port = await nursery.start(relay, router.addresses.http[1])
        await start_backend(
            nursery, make_hello_app("hs"), f"http://127.0.0.1:{port}", token="s3cret"
        )
        await router.wait_tunnels(1)
        requests = [r for r in bytes(seen).split(b"\r\n\r\n") if b"/.well-known/ptth/socket" in r]
        assert requests and all(
            b"authorization: Bearer s3cret" in r.lower().replace(b"bearer", b"Bearer")
            for r in requests
            if r.startswith((b"GET", b"PUT", b"POST"))
        )
        session = re.search(rb"x-session: ([A-Za-z0-9_-]+)", bytes(seen), re.IGNORECASE)
        key = re.search(rb"x-session-key: ([A-Za-z0-9_-]+)", bytes(seen), re.IGNORECASE)
        assert session is not None and key is not None
        url = f"{router.url}/.well-known/ptth/socket/{session.group(1).decode()}"
        headers = {"x-session-key": key.group(1).decode(), "x-content-length": "0"}
        async with httpx.AsyncClient(timeout=10) as client:
            stolen = await client.get(url, headers=headers)
            assert stolen.status_code == 404, stolen.text
        nursery.cancel_scope.cancel()

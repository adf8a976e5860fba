"""Tunnels on the front end's port (issue 9, items 1 and 2): the plain ReverseHTTP handshake and
WebSocket tunnels (``ws://``, ``wss://``), ``--tunnel none``, ``--no-front-end-tunnels``, the
tunnel port's admission caps, garbage from a real WebSocket client, and the CLI.

Real sockets on 127.0.0.1; users are httpx and the ``websockets`` client; certificates come
from ``trustme``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import re
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
import httpx
import pytest
import trio
import trustme

import ptth
from ptth.driver import Connection, Stream
from ptth.errors import HandshakeRefused, TunnelError
from ptth.proto.handshake import ClientHandshake, Registration
from ptth.transport.ws_stream import WebSocketStream
from ptth.types import Receive, Scope, Send
from router.config import RouterConfig, load_config
from router.server import Router, RouterAddresses
from tests.e2e.apps_websocket import make_app as make_ws_app
from tests.support import (
    RunningRouter,
    child,
    make_hello_app,
    read_body,
    require_module,
    serve_lifespan,
    start_backend,
    start_router,
)

T = TypeVar("T")
MiB = 1024 * 1024
FAST = {"backoff_base": 0.05, "backoff_cap": 0.2}


def fast(**kwargs: Any) -> ptth.BackendOptions:
    """Options with quick retries, so a test sees several attempts in a second."""
    return ptth.BackendOptions(**FAST, **kwargs)


def front(router: RunningRouter, scheme: str = "tcp", path: str = "") -> str:
    host, port = router.addresses.http
    return f"{scheme}://{host}:{port}{path}"


async def get(router: RunningRouter, path: str = "/", **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10, **kwargs) as client:
        return await client.get(router.url + path)


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


def recording_app(seen: list[str]) -> Any:
    """A catch-all app that records every request it gets (a handshake must never be one)."""
    hello = make_hello_app("recorder")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            seen.append(f"{scope['method']} {scope['path']}")
        await hello(scope, receive, send)

    return app


# -- the plain handshake on the front end ---------------------------------------------------


@pytest.mark.timeout(30)
async def test_backend_given_the_front_end_registers_and_serves(helper_loop: str) -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        await start_backend(nursery, make_hello_app("fe"), front(router), loop=helper_loop)
        await router.wait_tunnels(1)
        (tunnel,) = router.router.registry.tunnels()
        assert "(front end)" in tunnel.peer
        response = await get(router, "/x")
        assert (response.status_code, response.text) == (200, "bar")
        assert response.headers["x-backend"] == "fe"
        async with httpx.AsyncClient(timeout=10) as client:
            body = b"e" * (3 * MiB)
            echoed = await client.post(router.url + "/echo", content=body)
        assert echoed.content == body
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_a_handshake_on_the_front_end_never_reaches_an_app() -> None:
    """The regression: a backend given the front end's address had its handshake proxied to the
    catch-all app (404 logged forever). Now it registers, and the app sees no request."""
    seen: list[str] = []
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        await start_backend(nursery, recording_app(seen), router.tunnel)
        await router.wait_tunnels(1)
        await start_backend(nursery, make_hello_app("second"), front(router), service="other")
        await router.wait_tunnels(1, service="other")
        # Also a raw handshake, read back by the helper's own parser.
        host, port = router.addresses.http
        sock = await anyio.connect_tcp(host, port)
        async with sock:
            handshake = ClientHandshake(Registration(service="raw"), f"{host}:{port}")
            await sock.send(handshake.request_bytes())
            accepted = None
            with trio.fail_after(5):
                while accepted is None:
                    accepted = handshake.receive(await sock.receive())
            assert accepted.tunnel_id
        assert seen == []
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_no_front_end_tunnels_refuses_with_a_reason(
    helper_loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, front_end_tunnels=False)
        for address in (front(router), front(router, "ws")):
            backend = await start_backend(
                nursery, make_hello_app("x"), address, loop=helper_loop, options=fast()
            )
            with trio.fail_after(10):
                await backend.done.wait()
            assert isinstance(backend.error, HandshakeRefused), backend.error
            assert backend.error.status == 403
            assert "--no-front-end-tunnels" in backend.error.reason
        lines = [r.getMessage() for r in caplog.records if "not retrying" in r.getMessage()]
        assert len(lines) == 2, lines  # one line each, then the helper stops
        assert router.tunnel_count() == 0
        # The tunnel port still takes them.
        await start_backend(nursery, make_hello_app("x"), router.tunnel, loop=helper_loop)
        await router.wait_tunnels(1)
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_tunnel_none_closes_the_tunnel_port(helper_loop: str) -> None:
    assert load_config(["--tunnel", "none"]).tunnel == "none"
    assert not load_config(["--no-front-end-tunnels"]).front_end_tunnels
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, tunnel="none")
        assert router.addresses.tunnel is None
        with pytest.raises(LookupError):
            router.addresses.tunnel_addr  # noqa: B018
        await start_backend(nursery, make_hello_app("only"), front(router), loop=helper_loop)
        await start_backend(nursery, make_hello_app("only"), front(router, "ws"), loop=helper_loop)
        await router.wait_tunnels(2)
        assert (await get(router)).headers["x-backend"] == "only"
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_admission_caps_apply_to_front_end_tunnels() -> None:
    """Handshakes that never finish (a declared body that never comes) hold pending slots; past
    --max-pending-per-address the front end's tunnels get the tunnel port's 503 at once, then
    408 at the deadline, whether plain or over WebSocket."""
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, max_pending_per_address=2, handshake_timeout=2.0)
        host, port = router.addresses.http
        stuck = (
            f"POST /.well-known/ptth HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\n"
            "Upgrade: reverse\r\nALPN: h2\r\nContent-Length: 5\r\n\r\n"
        ).encode()
        held = [await anyio.connect_tcp(host, port) for _ in range(2)]
        try:
            for sock in held:
                await sock.send(stuck)
            with trio.fail_after(5):
                while router.router.listener.admission.pending < 2:
                    await trio.sleep(0.01)
            third = await anyio.connect_tcp(host, port)
            async with third:
                await third.send(stuck)
                with trio.fail_after(2):
                    answer = await third.receive()
            assert answer.startswith(b"HTTP/1.1 503"), answer
            assert b"Retry-After" in answer and b"from your address" in answer
            # The same cap turns a ws:// backend away: it logs and retries, never registers.
            backend = await start_backend(nursery, make_hello_app("x"), front(router, "ws"))
            await trio.sleep(0.5)
            assert router.tunnel_count() == 0 and backend.error is None
            with trio.fail_after(5):
                late = await held[0].receive()
            assert late.startswith(b"HTTP/1.1 408"), late
            await router.wait_tunnels(1, timeout=15)  # once the slots are free
        finally:
            for sock in held:
                await sock.aclose()
        nursery.cancel_scope.cancel()


# -- ws:// and wss:// -------------------------------------------------------------------------


CHUNK = bytes(range(256)) * 256


def stream_of(size: int) -> Any:
    """``size`` deterministic bytes in 64 KiB pieces."""
    sent = 0
    while sent < size:
        piece = CHUNK[: min(len(CHUNK), size - sent)]
        sent += len(piece)
        yield piece


def echo_app() -> Any:
    """POST answers the SHA-256 and length of its body; GET /big?N streams N bytes; /echo etc.
    are the WebSocket test app."""
    ws_app = make_ws_app("ws-tunnel")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] == "websocket":
            await ws_app(scope, receive, send)
            return
        if scope["method"] == "POST":
            digest, count, more = hashlib.sha256(), 0, True
            while more:
                message = await receive()
                digest.update(message.get("body", b""))
                count += len(message.get("body", b""))
                more = message.get("more_body", False)
            answer = f"{count} {digest.hexdigest()}".encode()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": answer})
            return
        await read_body(receive)
        size = int(scope["query_string"] or b"0")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for piece in stream_of(size):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"ws:"})

    return app


def ws_roundtrip(url: str, **kwargs: Any) -> tuple[str, bytes]:
    from websockets.sync.client import connect

    with connect(url, proxy=None, open_timeout=10, close_timeout=5, **kwargs) as ws:
        ws.send("hello")
        text = ws.recv(timeout=10)
        ws.send(b"\x00" * 100_000)
        data = ws.recv(timeout=10)
    assert isinstance(text, str) and isinstance(data, bytes)
    return text, data


async def large_both_ways(url: str, size: int, **kwargs: Any) -> None:
    """``size`` bytes up (the app answers their digest) and down (streamed by the app)."""
    expected = hashlib.sha256(b"".join(stream_of(size))).hexdigest()

    async def body() -> Any:
        for piece in stream_of(size):
            yield piece

    async with httpx.AsyncClient(timeout=30, **kwargs) as client:
        response = await client.post(url, content=body())
        assert response.text == f"{size} {expected}"
        received, count = hashlib.sha256(), 0
        async with client.stream("GET", f"{url}?{size}") as streamed:
            async for data in streamed.aiter_raw():
                received.update(data)
                count += len(data)
    assert count == size + 3


@pytest.mark.timeout(60)
async def test_ws_tunnel_end_to_end(helper_loop: str) -> None:
    require_module("websockets", reason="the websockets client is not installed")
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        await start_backend(nursery, echo_app(), front(router, "ws"), loop=helper_loop)
        await router.wait_tunnels(1)
        (tunnel,) = router.router.registry.tunnels()
        assert "(ws)" in tunnel.peer
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(router.url + "/")
        assert response.content == b"ws:"
        await large_both_ways(router.url + "/big", 24 * MiB)
        ws_url = router.url.replace("http://", "ws://") + "/echo"
        text, data = await in_thread(ws_roundtrip, ws_url)
        assert text == "hello" and data == b"\x00" * 100_000
        nursery.cancel_scope.cancel()


@pytest.fixture
def ca(tmp_path: Path) -> tuple[trustme.CA, Path, Path, Path]:
    authority = trustme.CA()
    ca_pem = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_pem))
    issued = authority.issue_cert("localhost", "127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    return authority, ca_pem, cert, key


@pytest.mark.timeout(60)
async def test_wss_and_tls_tunnels_on_a_tls_front_end(
    helper_loop: str, ca: tuple[trustme.CA, Path, Path, Path]
) -> None:
    require_module("websockets", reason="the websockets client is not installed")
    _authority, ca_pem, cert, key = ca
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, tls_cert=str(cert), tls_key=str(key), tunnel="none")
        port = router.addresses.http[1]
        await start_backend(
            nursery, echo_app(), f"wss://localhost:{port}", loop=helper_loop, ca_file=ca_pem
        )
        await router.wait_tunnels(1)
        # A wss:// helper that does not trust the certificate is refused by its own check.
        untrusted = await start_backend(
            nursery, echo_app(), f"wss://localhost:{port}", options=fast(service="nope")
        )
        context = ssl.create_default_context(cafile=str(ca_pem))
        url = f"https://localhost:{port}"
        await large_both_ways(url + "/big", 8 * MiB, verify=context)
        text, data = await in_thread(ws_roundtrip, f"wss://localhost:{port}/echo", ssl=context)
        assert text == "hello" and len(data) == 100_000
        await start_backend(
            nursery, echo_app(), f"tls://localhost:{port}", service="tls", ca_file=ca_pem
        )
        await router.wait_tunnels(1, service="tls")
        assert router.tunnel_count("nope") == 0 and untrusted.error is None
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_garbage_from_a_real_websocket_client_is_closed_cleanly() -> None:
    """``websockets`` opens a WebSocket to the tunnel path and sends nonsense: it reads the
    router's 400 in a binary message, then a clean close; the router serves on."""
    require_module("websockets", reason="the websockets client is not installed")
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    def talk(url: str, payload: str | bytes) -> tuple[bytes, int | None]:
        with connect(url, proxy=None, open_timeout=10, close_timeout=5) as ws:
            ws.send(payload)
            answer = b""
            try:
                while True:
                    message = ws.recv(timeout=10)
                    answer += message if isinstance(message, bytes) else message.encode()
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd is not None else None
        return answer, code

    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        await start_backend(nursery, make_hello_app("alive"), router.tunnel)
        await router.wait_tunnels(1)
        url = router.url.replace("http://", "ws://") + "/.well-known/ptth/ws"
        answer, code = await in_thread(talk, url, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 4"), answer  # 426: not the ReverseHTTP upgrade
        assert code == 1000
        answer, code = await in_thread(talk, url, b"\xff" * 5000 + b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400") and code == 1000
        answer, code = await in_thread(talk, url, "text is not a tunnel")
        assert code == 1003
        # Not a WebSocket at all: a readable 426.
        response = await get(router, "/.well-known/ptth/ws")
        assert response.status_code == 426
        assert (await get(router)).headers["x-backend"] == "alive"
        assert router.tunnel_count() == 1
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(40)
async def test_cli_backend_over_ws() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        async with child(
            nursery,
            "-m",
            "ptth",
            "tests.e2e.apps_drain:app",
            "--router",
            front(router, "ws", "/.well-known/ptth/ws"),
            PTTH_TEST_BACKEND="cli-ws",
        ) as helper:
            await helper.wait_for(re.compile(rb"registered"), timeout=20)
            await router.wait_tunnels(1)
            (tunnel,) = router.router.registry.tunnels()
            assert "(ws)" in tunnel.peer
            response = await get(router, "/")
            assert response.status_code == 200, response.text
        nursery.cancel_scope.cancel()


# -- RFC 8441: a WebSocket tunnel over the HTTP/2 front end ------------------------------------


class H2StreamBytes(anyio.abc.ByteStream):
    """One HTTP/2 stream's DATA as a byte stream (the WebSocket's frames, RFC 8441 §5)."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            data = await self.stream.receive_data()
        except TunnelError:
            raise anyio.BrokenResourceError from None
        if not data:
            raise anyio.EndOfStream
        return data

    async def send(self, item: bytes) -> None:
        try:
            await self.stream.send_data(item)
        except TunnelError:
            raise anyio.BrokenResourceError from None

    async def send_eof(self) -> None:
        try:
            await self.stream.end()
        except TunnelError:
            raise anyio.BrokenResourceError from None

    async def aclose(self) -> None:
        await self.stream.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {}


@pytest.mark.timeout(30)
async def test_ws_tunnel_over_the_http2_front_end() -> None:
    """A backend built by hand from the project's parts: h2c to the front end, an extended
    CONNECT (:protocol websocket) to the tunnel path, the ReverseHTTP handshake in WebSocket
    messages on that stream, then the backend's HTTP/2 server inside; a user request is served."""

    async def serve(stream: Stream) -> None:
        await stream.send_headers([(b":status", b"200")])
        await stream.send_data(b"over h2 and ws", end_stream=True)

    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        host, port = router.addresses.http
        user = Connection(await anyio.connect_tcp(host, port), client_side=True)
        await nursery.start(user.run)
        await user.wait_remote_settings()
        connect = await user.open_stream(
            [
                (b":method", b"CONNECT"),
                (b":protocol", b"websocket"),
                (b":scheme", b"http"),
                (b":authority", f"{host}:{port}".encode()),
                (b":path", b"/.well-known/ptth/ws"),
                (b"sec-websocket-version", b"13"),
                (b"sec-websocket-protocol", b"ptth"),
            ]
        )
        answer = dict(await connect.receive_headers())
        assert answer[b":status"] == b"200" and answer[b"sec-websocket-protocol"] == b"ptth"
        ws = WebSocketStream(H2StreamBytes(connect), client=True)
        handshake = ClientHandshake(Registration(), f"{host}:{port}")
        await ws.send(handshake.request_bytes())
        accepted = None
        with trio.fail_after(5):
            while accepted is None:
                accepted = handshake.receive(await ws.receive())
        backend = Connection(
            ws,
            client_side=False,
            tunnel_id=accepted.tunnel_id,
            on_stream=serve,
            initial_data=accepted.trailing,
        )
        await nursery.start(backend.run)
        await router.wait_tunnels(1)
        (tunnel,) = router.router.registry.tunnels()
        assert "(ws)" in tunnel.peer
        response = await get(router, "/")
        assert response.text == "over h2 and ws"
        await backend.aclose()
        await user.aclose()
        with trio.fail_after(5):
            while router.tunnel_count():
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_shutdown_drains_front_end_tunnels_without_waiting_for_them() -> None:
    """Tunnels on the front end's port do not count as users: the router's drain GOAWAYs them
    with the others at once instead of waiting out --drain-timeout for them to close."""
    config = dataclasses.replace(
        RouterConfig(), http="127.0.0.1:0", tunnel="127.0.0.1:0", drain_timeout=10.0
    )
    router = Router(config)
    done = trio.Event()
    async with trio.open_nursery() as nursery:

        async def run(task_status: trio.TaskStatus[RouterAddresses]) -> None:
            try:
                await router.serve(task_status=task_status)
            finally:
                done.set()

        addresses = await nursery.start(run)
        host, port = addresses.http
        for address in (f"tcp://{host}:{port}", f"ws://{host}:{port}"):
            await start_backend(nursery, make_hello_app("x"), address)
        with trio.fail_after(10):
            while len(router.registry.tunnels()) < 2:
                await trio.sleep(0.01)
        started = trio.current_time()
        router.shutdown()
        with trio.fail_after(8):
            await done.wait()
        assert trio.current_time() - started < 5
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(20)
async def test_tunnel_path_is_the_only_target_the_front_end_accepts() -> None:
    """--tunnel-path moves the plain handshake; a handshake elsewhere is a 400 naming the path
    (never proxied, since Upgrade: reverse is never a user's request)."""

    async def handshake(port: int, path: bytes) -> bytes:
        request = ClientHandshake(Registration(), f"127.0.0.1:{port}").request_bytes()
        request = request.replace(b"POST /.well-known/ptth ", b"POST " + path + b" ", 1)
        sock = await anyio.connect_tcp("127.0.0.1", port)
        async with sock:
            await sock.send(request)
            with trio.fail_after(5):
                return await sock.receive()

    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, tunnel_path="/custom/ptth")
        port = router.addresses.http[1]
        refused = await handshake(port, b"/.well-known/ptth")
        assert refused.startswith(b"HTTP/1.1 400") and b"expected POST /custom/ptth" in refused
        assert (await handshake(port, b"/custom/ptth")).startswith(b"HTTP/1.1 101")
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(60)
async def test_agent_mode_over_ws() -> None:
    """``python -m ptth --to URL --router ws://...``: agent mode dials the same transports."""
    from tests.e2e.agent_support import REGISTERED, hypercorn_upstream

    async with (
        trio.open_nursery() as nursery,
        hypercorn_upstream(nursery, "tests.e2e.apps_agent:app") as upstream,
    ):
        router = await start_router(nursery)
        args = ("-m", "ptth", "--to", f"http://{upstream}", "--router", front(router, "ws"))
        async with child(nursery, *args) as agent:
            await agent.wait_for(REGISTERED, timeout=20)
            await router.wait_tunnels(1)  # the router registers once the agent's SETTINGS came
            (tunnel,) = router.router.registry.tunnels()
            assert "(ws)" in tunnel.peer
            response = await get(router, "/hello")
            assert response.status_code == 200 and response.headers["x-upstream"] == "yes"
        nursery.cancel_scope.cancel()

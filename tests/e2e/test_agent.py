"""Agent mode: ``--to URL`` forwards tunnel streams to an existing local server.

The upstream is a real separate process: hypercorn serving ``tests/e2e/apps_agent.py`` (it speaks
HTTP/1.1 and h2c with prior knowledge on the same port), or ``python -m http.server``. Most tests
run the agent in-process (``ptth.serve_upstream``); the CLI tests run ``python -m ptth --to``.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from ptth.driver import Connection
from ptth.proto.address import parse_address
from tests.e2e.agent_support import (
    agent_process,
    child,
    hypercorn_upstream,
    start_agent,
)
from tests.e2e.apps_agent import big_body
from tests.support import ROOT, free_port, start_router

APP = "tests.e2e.apps_agent:app"
SERVING = re.compile(rb"Serving HTTP on \S+ port (\d+)")
SCHEMES = ["http", "h2c"]
MiB = 1024 * 1024


async def _setup(nursery: trio.Nursery, upstream: str, scheme: str, **router: Any) -> str:
    """Router in-process plus an in-process agent to ``scheme://upstream``; the router's URL."""
    running = await start_router(nursery, **router)
    await start_agent(nursery, f"{scheme}://{upstream}", running.tunnel)
    await running.wait_tunnels(1)
    return running.url


# -- requests, bodies, statuses ------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheme", SCHEMES)
async def test_requests_and_bodies_reach_the_upstream(scheme: str) -> None:
    async with trio.open_nursery() as nursery, hypercorn_upstream(nursery, APP) as upstream:
        url = await _setup(nursery, upstream, scheme)
        host = url.removeprefix("http://")
        async with httpx.AsyncClient(base_url=url, timeout=20) as client:
            response = await client.get("/hello?a=1&b=%2F")
            assert response.status_code == 200
            assert response.headers["x-upstream"] == "yes"
            seen = response.json()
            headers = dict((n, v) for n, v in seen["headers"])
            # The upstream sees the user's host and the router's forwarding fields.
            assert headers["host"] == host
            assert headers["x-forwarded-for"] == "127.0.0.1"
            assert headers["x-forwarded-host"] == host
            assert seen["http_version"] == ("2" if scheme == "h2c" else "1.1")
            assert seen["query"] == "a=1&b=%2F"

            body = big_body(8 * MiB)
            response = await client.post("/upload", content=body)
            assert response.json() == {
                "size": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
            }
            # Full duplex (the upstream answers while still reading) needs HTTP/2: httpx sends
            # an HTTP/1.1 request body before it reads the response, so only what the socket
            # buffers hold can be echoed early.
            body = big_body(4 * MiB if scheme == "h2c" else 256 * 1024)
            response = await client.post("/echo", content=body)
            assert response.status_code == 200
            assert hashlib.sha256(response.content).digest() == hashlib.sha256(body).digest()

            response = await client.get("/status/404")
            assert (response.status_code, response.text) == (404, "status 404")
            response = await client.get("/status/503")
            assert response.status_code == 503

            response = await client.get("/big", params={"size": str(3 * MiB + 7)})
            assert response.headers["content-length"] == str(3 * MiB + 7)
            assert response.content == big_body(3 * MiB + 7)
            response = await client.head("/big", params={"size": "1234"})
            assert response.headers["content-length"] == "1234"
            assert response.content == b""

        async with httpx.AsyncClient(base_url=url, http1=False, http2=True, timeout=20) as client:

            async def upload() -> Any:
                yield b"streamed "
                await trio.sleep(0.05)
                yield b"without length"

            response = await client.post("/echo", content=upload())
            assert response.http_version == "HTTP/2"
            assert response.content == b"streamed without length"
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheme", SCHEMES)
async def test_concurrent_requests_share_the_upstream(scheme: str) -> None:
    async with trio.open_nursery() as nursery, hypercorn_upstream(nursery, APP) as upstream:
        url = await _setup(nursery, upstream, scheme)
        results: list[bytes] = []
        async with httpx.AsyncClient(base_url=url, timeout=20, http2=True, http1=False) as client:

            async def one(i: int) -> None:
                payload = f"request {i} ".encode() * 1000
                response = await client.post("/echo", content=payload)
                assert response.content == payload
                results.append(response.content)

            async with trio.open_nursery() as requests:
                for i in range(50):
                    requests.start_soon(one, i)
        assert len(results) == 50
        nursery.cancel_scope.cancel()


# -- streaming -----------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheme", SCHEMES)
async def test_sse_through_the_agent_is_not_buffered(scheme: str) -> None:
    """Each event reaches the user within 100 ms, and the stream outlives the response timeout."""
    async with trio.open_nursery() as nursery, hypercorn_upstream(nursery, APP) as upstream:
        url = await _setup(nursery, upstream, scheme, response_timeout=0.5)
        latencies: list[float] = []
        started = time.monotonic()
        async with (
            httpx.AsyncClient(base_url=url, timeout=20) as client,
            client.stream("GET", "/sse", params={"n": "8", "every": "0.2"}) as response,
        ):
            assert response.headers["content-type"] == "text/event-stream"
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    latencies.append(time.time() - event["sent"])
        print(f"SSE via agent ({scheme}): max latency {max(latencies) * 1000:.1f} ms")
        assert len(latencies) == 8
        assert time.monotonic() - started > 1.4  # well past response_timeout=0.5
        assert max(latencies) < 0.1, latencies
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheme", SCHEMES)
async def test_user_going_away_stops_the_upstream_stream(scheme: str) -> None:
    """A user who disconnects mid-stream must not leave work running upstream."""
    async with trio.open_nursery() as nursery, hypercorn_upstream(nursery, APP) as upstream:
        url = await _setup(nursery, upstream, scheme)
        params = {"n": "1000", "every": "0.05"}
        async with (
            httpx.AsyncClient(base_url=url, timeout=20) as client,
            client.stream("GET", "/sse", params=params) as response,
        ):
            lines = response.aiter_lines()
            while not (await lines.__anext__()).startswith("data: "):
                pass
            assert (await client.get("/active")).text == "1"
        # The streaming client is closed (its connection too): the upstream app stops.
        async with httpx.AsyncClient(base_url=url, timeout=20) as client:
            with trio.fail_after(5):
                while (await client.get("/active")).text != "0":
                    await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheme", SCHEMES)
async def test_upstream_crash_mid_body_aborts_the_user_response(scheme: str) -> None:
    async with trio.open_nursery() as nursery, hypercorn_upstream(nursery, APP) as upstream:
        url = await _setup(nursery, upstream, scheme)
        async with httpx.AsyncClient(base_url=url, timeout=20) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get("/crash")
            # The agent (and its upstream pool) keep serving.
            response = await client.get("/hello")
            assert response.status_code == 200
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheme", SCHEMES)
async def test_silent_upstream_stream_is_cut_by_the_idle_timeout(scheme: str) -> None:
    async with trio.open_nursery() as nursery, hypercorn_upstream(nursery, APP) as upstream:
        url = await _setup(nursery, upstream, scheme, response_idle_timeout=0.5)
        async with httpx.AsyncClient(base_url=url, timeout=20) as client:
            started = time.monotonic()
            with pytest.raises(httpx.RemoteProtocolError):
                async with client.stream("GET", "/quiet") as response:
                    assert response.status_code == 200
                    async for _ in response.aiter_raw():
                        pass
            assert 0.4 < time.monotonic() - started < 5
        nursery.cancel_scope.cancel()


# -- trailers (h2c upstream, h2 user) ------------------------------------------------------


async def h2_get(url: str, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[Any, ...]:
    """GET over h2c prior knowledge with the project's own h2 client: (headers, body, trailers)."""
    host, port = parse_address(url.removeprefix("http://"))
    sock = await anyio.connect_tcp(host, port)
    conn = Connection(sock, client_side=True, tunnel_id="test-user")
    async with trio.open_nursery() as nursery:
        await nursery.start(conn.run)
        block = [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", url.removeprefix("http://").encode()),
            (b":path", path.encode()),
            *headers,
        ]
        stream = await conn.open_stream(block, end_stream=True)
        response = await stream.receive_headers()
        body = b""
        while chunk := await stream.receive_data():
            body += chunk
        await conn.aclose()
        nursery.cancel_scope.cancel()
    return response, body, stream.trailers


@pytest.mark.timeout(60)
async def test_trailers_cross_both_hops_with_an_h2c_upstream() -> None:
    async with trio.open_nursery() as nursery, hypercorn_upstream(nursery, APP) as upstream:
        url = await _setup(nursery, upstream, "h2c")
        response, body, trailers = await h2_get(url, "/trailers", [(b"te", b"trailers")])
        assert (b":status", b"200") in response
        assert body == b"part one, part two"
        assert trailers is not None
        assert (b"x-checksum", b"abc123") in trailers
        assert (b"x-count", b"2") in trailers
        # Without TE: trailers the upstream sends none; the body is complete all the same.
        response, body, trailers = await h2_get(url, "/trailers", [])
        assert body == b"part one, part two"
        assert not trailers
        nursery.cancel_scope.cancel()


# -- errors --------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheme", SCHEMES)
async def test_upstream_down_gives_502_with_a_reason(scheme: str) -> None:
    async with trio.open_nursery() as nursery:
        url = await _setup(nursery, f"127.0.0.1:{free_port()}", scheme)
        async with httpx.AsyncClient(base_url=url, timeout=20) as client:
            for _ in range(2):  # and again: a failed connect is not cached
                response = await client.get("/anything")
                assert response.status_code == 502
                assert response.headers["content-type"].startswith("text/plain")
                assert "127.0.0.1" in response.text
                assert "unreachable" in response.text or "cannot connect" in response.text
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(60)
async def test_h2c_agent_in_front_of_an_http1_only_server_gives_502() -> None:
    async with trio.open_nursery() as nursery:
        args = ("-m", "http.server", "0", "--bind", "127.0.0.1")
        async with child(nursery, *args) as server:
            match = await server.wait_for(SERVING)
            url = await _setup(nursery, f"127.0.0.1:{int(match[1])}", "h2c")
            async with httpx.AsyncClient(base_url=url, timeout=20) as client:
                response = await client.get("/")
                assert response.status_code == 502
                assert "HTTP/2" in response.text
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheme", SCHEMES)
async def test_upstream_restart_is_followed_lazily(scheme: str) -> None:
    """A dead upstream gives 502 (not a hang); once it is back, the next request gets through."""
    port = free_port()
    async with trio.open_nursery() as nursery:
        async with hypercorn_upstream(nursery, APP, port) as upstream:
            url = await _setup(nursery, upstream, scheme)
            async with httpx.AsyncClient(base_url=url, timeout=20) as client:
                assert (await client.get("/hello")).status_code == 200
        async with httpx.AsyncClient(base_url=url, timeout=20) as client:
            assert (await client.get("/hello")).status_code == 502
            async with hypercorn_upstream(nursery, APP, port):
                assert (await client.get("/hello")).status_code == 200
        nursery.cancel_scope.cancel()


# -- WebSockets --------------------------------------------------------


class WSClient:
    """A minimal wsproto WebSocket client over trio, enough to drive the router's front end."""

    def __init__(self, sock: trio.SocketStream) -> None:
        self.sock = sock
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: list[Event] = []

    async def _event(self) -> Event:
        while not self.pending:
            data = await self.sock.receive_some(65536)
            self.ws.receive_data(data or None)
            self.pending.extend(self.ws.events())
            if not data and not self.pending:
                raise EOFError("connection closed")
        return self.pending.pop(0)

    async def handshake(self, host: str, path: str, subprotocols: list[str]) -> Event:
        request = Request(host=host, target=path, subprotocols=subprotocols)
        await self.sock.send_all(self.ws.send(request))
        return await self._event()

    async def send(self, message: str | bytes) -> None:
        event = TextMessage(message) if isinstance(message, str) else BytesMessage(message)
        await self.sock.send_all(self.ws.send(event))

    async def receive(self) -> str | bytes | CloseConnection:
        parts: list[Any] = []
        while True:
            event = await self._event()
            if isinstance(event, Ping):
                await self.sock.send_all(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                return event
            elif isinstance(event, TextMessage | BytesMessage):
                parts.append(event.data)
                if event.message_finished:
                    joined = "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)
                    return joined

    async def close(self) -> CloseConnection:
        await self.sock.send_all(self.ws.send(CloseConnection(code=1000)))
        while True:
            message = await self.receive()
            if isinstance(message, CloseConnection):
                return message


async def ws_connect(url: str, path: str, subprotocols: list[str]) -> tuple[WSClient, Event]:
    host, port = parse_address(url.removeprefix("http://"))
    client = WSClient(await trio.open_tcp_stream(host, port))
    return client, await client.handshake(url.removeprefix("http://"), path, subprotocols)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheme", SCHEMES)
async def test_websocket_through_the_agent(scheme: str) -> None:
    """HTTP/1.1 upstream: an Upgrade; h2c upstream: the extended CONNECT passed on as is."""
    async with trio.open_nursery() as nursery, hypercorn_upstream(nursery, APP) as upstream:
        url = await _setup(nursery, upstream, scheme)
        client, answer = await ws_connect(url, "/ws", ["chat.v2", "chat.v1"])
        assert isinstance(answer, AcceptConnection), answer
        assert answer.subprotocol == "chat.v2"
        await client.send("hello")
        assert await client.receive() == "echo: hello"
        payload = big_body(MiB + 3)
        await client.send(payload)
        assert await client.receive() == payload
        for i in range(20):
            await client.send(f"m{i}")
        for i in range(20):
            assert await client.receive() == f"echo: m{i}"
        close = await client.close()
        assert close.code == 1000
        await client.sock.aclose()

        # The upstream closes first.
        client, answer = await ws_connect(url, "/ws", [])
        assert isinstance(answer, AcceptConnection)
        await client.send("close")
        message = await client.receive()
        assert isinstance(message, CloseConnection) and message.code == 1000
        await client.sock.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(60)
async def test_websocket_refused_by_the_upstream_is_refused_to_the_user() -> None:
    async with trio.open_nursery() as nursery, hypercorn_upstream(nursery, APP) as upstream:
        url = await _setup(nursery, upstream, "http")
        client, answer = await ws_connect(url, "/ws/refuse", [])
        assert isinstance(answer, RejectConnection), answer
        assert answer.status_code == 403
        await client.sock.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(60)
async def test_websocket_to_a_down_upstream_is_refused_with_502() -> None:
    async with trio.open_nursery() as nursery:
        url = await _setup(nursery, f"127.0.0.1:{free_port()}", "http")
        client, answer = await ws_connect(url, "/ws", [])
        assert isinstance(answer, RejectConnection), answer
        assert answer.status_code == 502
        await client.sock.aclose()
        nursery.cancel_scope.cancel()


# -- the CLI -------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_cli_agent_serves_python_http_server(tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_bytes(b"served from disk\n")
    (tmp_path / "blob.bin").write_bytes(big_body(2 * MiB))
    async with trio.open_nursery() as nursery:
        args = ("-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(tmp_path))
        async with child(nursery, *args) as server:
            port = int((await server.wait_for(SERVING))[1])
            router = await start_router(nursery)
            async with agent_process(nursery, f"http://127.0.0.1:{port}", router.tunnel) as agent:
                async with httpx.AsyncClient(base_url=router.url, timeout=20) as client:
                    response = await client.get("/hello.txt")
                    assert (response.status_code, response.text) == (200, "served from disk\n")
                    response = await client.get("/blob.bin")
                    assert response.content == big_body(2 * MiB)
                    response = await client.get("/missing")
                    assert response.status_code == 404
                assert agent.process.poll() is None
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(60)
async def test_cli_agent_finishes_in_flight_streams_on_sigterm() -> None:
    """SIGTERM drains: the stream in flight completes, then the agent exits 0."""
    async with trio.open_nursery() as nursery, hypercorn_upstream(nursery, APP) as upstream:
        router = await start_router(nursery)
        async with agent_process(nursery, f"h2c://{upstream}", router.tunnel) as agent:
            async with (
                httpx.AsyncClient(base_url=router.url, timeout=20) as client,
                client.stream("GET", "/sse", params={"n": "6", "every": "0.2"}) as response,
            ):
                lines = response.aiter_lines()
                while not (await lines.__anext__()).startswith("data: "):
                    pass
                agent.process.send_signal(signal.SIGTERM)
                events = 1 + sum([line.startswith("data: ") async for line in lines])
            assert events == 6
            with trio.fail_after(15):
                assert await agent.process.wait() == 0, agent.text()
        nursery.cancel_scope.cancel()


def _ptth(*args: str) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "ptth", *args],
        cwd=ROOT,
        capture_output=True,
        timeout=30,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    return proc.returncode, (proc.stdout + proc.stderr).decode()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "exactly one of"),
        (("tests.e2e.apps_agent:app", "--to", "http://127.0.0.1:1"), "exactly one of"),
        (("--to", "ftp://127.0.0.1:21"), "http:// or h2c://"),
        (("--to", "http://127.0.0.1:8000/some/path"), "no path"),
        (("--to", "http://:8000"), "no host"),
    ],
)
def test_cli_needs_exactly_one_app_or_a_valid_to_url(args: tuple[str, ...], message: str) -> None:
    code, out = _ptth(*args, "--router", "127.0.0.1:9")
    assert code == 2, out
    assert message in out, out
    assert "Traceback" not in out, out


@pytest.mark.timeout(60)
def test_cli_help_shows_agent_mode() -> None:
    code, out = _ptth("--help")
    assert code == 0, out
    assert "--to URL" in out and "h2c://" in out

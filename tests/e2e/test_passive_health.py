"""Passive health of tunnels (ARCHITECTURE.md, "Passive health"), end to end on 127.0.0.1.

* a tunnel whose streams all fail (a real RST_STREAM, a 504) is ejected after N failures in a
  row, gets no requests while a healthy tunnel of its pool is there, comes back after the interval
  and is ejected again for twice as long; a lone one gives 503 naming the ejection;
* what the app answers (500, even an app that raises) and a user who leaves never eject;
* a WebSocket whose tunnel resets the accepted session counts as a failure;
* a backend that sends GOAWAY NO_ERROR and keeps its socket open is closed once its streams are
  done, or after the drain timeout.

Broken backends are raw tunnels: :class:`ClientHandshake` on the tunnel port, then
:class:`ptth.driver.Connection` as the HTTP/2 server with a stream handler of the test's own.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import httpx
import pytest
import trio
from h2.errors import ErrorCodes

from ptth import BackendOptions
from ptth.driver import Connection, Stream
from ptth.proto.handshake import Accepted, ClientHandshake, Registration
from ptth.types import Receive, Scope, Send
from tests.support import (
    RunningRouter,
    make_hello_app,
    read_body,
    serve_lifespan,
    start_backend,
    start_router,
)

Handler = Callable[[Stream], Awaitable[None]]
N = 5  # RouterConfig.outlier_failures, the default


@dataclass(eq=False)
class RawTunnel:
    """A tunnel whose every stream goes to ``handler``; ``streams`` counts them."""

    handler: Handler
    connection: Connection | None = None
    tunnel_id: str = ""
    streams: int = 0
    paths: list[bytes] = field(default_factory=list)

    async def handle(self, stream: Stream) -> None:
        self.streams += 1
        headers = await stream.receive_headers()
        self.paths.append(dict(headers).get(b":path", b""))
        await self.handler(stream)


async def raw_tunnel(
    nursery: trio.Nursery, router: RunningRouter, handler: Handler, *, instance: str
) -> RawTunnel:
    host, _, port = router.tunnel.rpartition(":")
    sock = await anyio.connect_tcp(host, int(port))
    handshake = ClientHandshake(Registration(service="default", instance=instance), router.tunnel)
    await sock.send(handshake.request_bytes())
    accepted: Accepted | None = None
    with trio.fail_after(5):
        while accepted is None:
            try:
                data = await sock.receive(65536)
            except anyio.EndOfStream:
                data = b""
            accepted = handshake.receive(data)
    tunnel = RawTunnel(handler, tunnel_id=accepted.tunnel_id)
    tunnel.connection = Connection(
        sock,
        client_side=False,
        tunnel_id=accepted.tunnel_id,
        on_stream=tunnel.handle,
        initial_data=accepted.trailing,
    )
    await nursery.start(tunnel.connection.run)
    return tunnel


async def reset_every_stream(stream: Stream) -> None:
    await stream.reset(ErrorCodes.INTERNAL_ERROR)


async def answer_ok(stream: Stream) -> None:
    await stream.send_headers([(b":status", b"200"), (b"content-length", b"2")])
    await stream.send_data(b"ok", end_stream=True)


def messages(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if needle in r.getMessage()]


def ejection_lines(caplog: pytest.LogCaptureFixture, tunnel_id: str) -> list[str]:
    return [m for m in messages(caplog, f"tunnel {tunnel_id} ") if "ejected for" in m]


@pytest.fixture(autouse=True)
def router_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="router")


# -- ejection and return ---------------------------------------------------------------------


async def test_a_resetting_tunnel_is_ejected_next_to_a_healthy_one_then_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ejection = 1.0
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, outlier_ejection=ejection)
        await start_backend(
            nursery, make_hello_app("good"), router.tunnel, options=BackendOptions(instance="good")
        )
        broken = await raw_tunnel(nursery, router, reset_every_stream, instance="broken")
        await router.wait_tunnels(2)
        async with httpx.AsyncClient(base_url=router.url, timeout=5) as client:

            async def until_failures(total: int) -> tuple[int, int]:
                """Requests until the broken tunnel has had ``total`` streams: (200s, 502s)."""
                good = bad = 0
                for _ in range(400):
                    if broken.streams >= total:
                        break
                    response = await client.get("/")
                    if response.status_code == 200:
                        assert response.headers["x-backend"] == "good"
                        good += 1
                    else:
                        assert response.status_code == 502, response.text
                        bad += 1
                assert broken.streams == total
                return good, bad

            # Round 1: the first N failures eject it for the base interval.
            _, bad = await until_failures(N)
            ejected_at = trio.current_time()
            assert bad == N  # every stream it got failed, and the user saw each: 502
            [line] = ejection_lines(caplog, broken.tunnel_id)
            assert f"tunnel {broken.tunnel_id} (instance broken): ejected for 1 s after 5 " in line
            assert "(last: stream reset by backend (INTERNAL_ERROR))" in line

            # While ejected, every request goes to the healthy tunnel.
            served = 0
            while trio.current_time() < ejected_at + ejection - 0.3 and served < 30:
                response = await client.get("/")
                assert response.status_code == 200
                served += 1
            assert served >= 5
            assert broken.streams == N

            # Round 2: back after the interval, it fails N more times: twice as long.
            await trio.sleep_until(ejected_at + ejection + 0.05)
            _, bad = await until_failures(2 * N)
            reejected_at = trio.current_time()
            assert bad == N
            assert messages(caplog, f"tunnel {broken.tunnel_id} (instance broken): back in")
            lines = ejection_lines(caplog, broken.tunnel_id)
            assert len(lines) == 2
            assert "ejected for 2 s after 5 failed streams in a row, ejection 2" in lines[1]
            for _ in range(10):
                assert (await client.get("/")).status_code == 200
            assert trio.current_time() < reejected_at + 2 * ejection
            assert broken.streams == 2 * N
        nursery.cancel_scope.cancel()


async def test_a_lone_broken_tunnel_gets_503s_naming_the_ejection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, outlier_ejection=5.0)
        broken = await raw_tunnel(nursery, router, reset_every_stream, instance="lone")
        await router.wait_tunnels(1)
        async with httpx.AsyncClient(base_url=router.url, timeout=5) as client:
            statuses = [(await client.get("/")).status_code for _ in range(N)]
            assert statuses == [502] * N
            for _ in range(5):
                response = await client.get("/")
                assert response.status_code == 503
                assert "ejected after failed streams" in response.text
                assert "stream reset by backend (INTERNAL_ERROR)" in response.text
                assert 1 <= int(response.headers["retry-after"]) <= 5
        assert broken.streams == N  # the 503s never reached the backend
        assert len(ejection_lines(caplog, broken.tunnel_id)) == 1
        nursery.cancel_scope.cancel()


async def test_response_timeouts_count_as_failures() -> None:
    async def never_answer(stream: Stream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, response_timeout=0.1, outlier_ejection=5.0)
        silent = await raw_tunnel(nursery, router, never_answer, instance="silent")
        await router.wait_tunnels(1)
        async with httpx.AsyncClient(base_url=router.url, timeout=5) as client:
            statuses = [(await client.get("/")).status_code for _ in range(N + 2)]
        assert statuses == [504] * N + [503, 503]
        assert silent.streams == N
        nursery.cancel_scope.cancel()


# -- what never ejects -----------------------------------------------------------------------


async def app_500(scope: Scope, receive: Receive, send: Send) -> None:
    """500 from the app itself, or (``/raise``) an app that raises before responding."""
    if scope["type"] == "lifespan":
        await serve_lifespan(receive, send)
        return
    await read_body(receive)
    if scope["path"] == "/raise":
        raise RuntimeError("the app failed (on purpose)")
    await send({"type": "http.response.start", "status": 500, "headers": []})
    await send({"type": "http.response.body", "body": b"app error"})


async def test_the_apps_500s_never_eject(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="ptth")  # the raising app's tracebacks
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, outlier_failures=2)
        await start_backend(
            nursery, app_500, router.tunnel, options=BackendOptions(instance="erring")
        )
        await router.wait_tunnels(1)
        async with httpx.AsyncClient(base_url=router.url, timeout=5) as client:
            for i in range(4 * N):
                response = await client.get("/raise" if i % 2 else "/")
                assert response.status_code == 500, response.text
        assert not messages(caplog, "ejected for")
        nursery.cancel_scope.cancel()


async def test_users_who_leave_never_eject(caplog: pytest.LogCaptureFixture) -> None:
    async def slow_then_ok(stream: Stream) -> None:
        await trio.sleep(1.0)
        await answer_ok(stream)

    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, outlier_failures=2)
        tunnel = await raw_tunnel(nursery, router, slow_then_ok, instance="slow")
        await router.wait_tunnels(1)
        for _ in range(3 * 2):
            async with httpx.AsyncClient(base_url=router.url, timeout=0.1) as client:
                with pytest.raises(httpx.TimeoutException):
                    await client.get("/")
        async with httpx.AsyncClient(base_url=router.url, timeout=5) as client:
            response = await client.get("/")
        assert response.status_code == 200
        assert tunnel.streams == 7
        assert not messages(caplog, "ejected for")
        nursery.cancel_scope.cancel()


# -- WebSockets ------------------------------------------------------------------------------

UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def websocket_status(router: RunningRouter) -> int:
    """Open a WebSocket by hand: the status of the answer (after a 101, read until the end)."""
    host, _, port = router.addresses.http_url.removeprefix("http://").rpartition(":")
    with trio.fail_after(5):
        sock = await trio.open_tcp_stream(host, int(port))
        async with sock:
            await sock.send_all(UPGRADE)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await sock.receive_some(65536)
                assert chunk, data
                data += chunk
            status = int(data.split(b" ", 2)[1])
            if status == 101:
                while await sock.receive_some(65536):
                    pass  # the 1011 close frame, then the router closes
    return status


async def test_websocket_sessions_reset_after_the_accept_count_as_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def accept_then_reset(stream: Stream) -> None:
        await stream.send_headers([(b":status", b"200")])
        await trio.sleep(0.05)
        await stream.reset(ErrorCodes.INTERNAL_ERROR)

    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, outlier_ejection=5.0)
        tunnel = await raw_tunnel(nursery, router, accept_then_reset, instance="ws")
        await router.wait_tunnels(1)
        statuses = [await websocket_status(router) for _ in range(N + 1)]
        assert statuses == [101] * N + [503]
        assert tunnel.streams == N
        [line] = ejection_lines(caplog, tunnel.tunnel_id)
        assert "(last: stream reset by backend (INTERNAL_ERROR))" in line
        nursery.cancel_scope.cancel()


async def test_websocket_handshakes_reset_by_the_backend_eject() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, outlier_ejection=5.0)
        tunnel = await raw_tunnel(nursery, router, reset_every_stream, instance="ws")
        await router.wait_tunnels(1)
        statuses = [await websocket_status(router) for _ in range(N + 1)]
        assert statuses == [502] * N + [503]
        assert tunnel.streams == N
        nursery.cancel_scope.cancel()


# -- GOAWAY, then the socket held open -------------------------------------------------------


async def test_a_drained_backend_that_holds_its_socket_is_closed_after_its_streams(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def goaway_then_answer(stream: Stream) -> None:
        await stream.connection.goaway()  # the stream in flight is below the GOAWAY's last id
        await trio.sleep(0.3)
        await answer_ok(stream)

    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, drain_timeout=10.0)
        tunnel = await raw_tunnel(nursery, router, goaway_then_answer, instance="holder")
        await router.wait_tunnels(1)
        async with httpx.AsyncClient(base_url=router.url, timeout=5) as client:
            response = await client.get("/")
        assert response.status_code == 200
        assert response.text == "ok"
        assert router.tunnel_count() == 0  # out of rotation since the GOAWAY
        done_at = trio.current_time()
        assert tunnel.connection is not None
        with trio.fail_after(3):
            await tunnel.connection.wait_closed()
        # Closed after the peer's grace (1 s), long before the 10 s drain timeout.
        assert trio.current_time() - done_at < 2.5
        assert messages(caplog, f"tunnel {tunnel.tunnel_id}: the backend drained but kept")
        nursery.cancel_scope.cancel()


async def test_a_drained_backend_whose_stream_never_ends_is_closed_at_the_drain_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def goaway_then_hang(stream: Stream) -> None:
        await stream.connection.goaway()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, drain_timeout=0.5)
        tunnel = await raw_tunnel(nursery, router, goaway_then_hang, instance="hanger")
        await router.wait_tunnels(1)
        started = trio.current_time()
        async with httpx.AsyncClient(base_url=router.url, timeout=5) as client:
            response = await client.get("/")
        assert response.status_code == 502  # the tunnel closed under the request
        assert tunnel.connection is not None
        with trio.fail_after(3):
            await tunnel.connection.wait_closed()
        assert 0.4 < trio.current_time() - started < 2.5
        assert messages(
            caplog, f"tunnel {tunnel.tunnel_id}: 1 stream(s) still open 0.5 s after the backend's"
        )
        nursery.cancel_scope.cancel()

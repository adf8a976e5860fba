"""WebSockets end to end: a real client (``websockets``) -> router front end -> RFC 8441 extended
CONNECT in the tunnel -> the backend's ASGI ``websocket`` app (issue 3 item 1).

The sync ``websockets`` client runs in worker threads (``trio.to_thread``) while the router runs
in the test's trio loop; the 1,000-session test uses its asyncio client in a thread. Tests of the
helper's side run it on both loops (``helper_loop``: the test's trio loop, or asyncio in a thread).
"""

from __future__ import annotations

import asyncio
import functools
import re
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
import trio
import wsproto.events
from wsproto.connection import Connection, ConnectionType

from ptth import BackendOptions
from tests.e2e.apps_websocket import FLOOD_CHUNK, Recorder, make_app
from tests.support import RunningRouter, require_module, spawn, start_backend, start_router

require_module("websockets", reason="the websockets client is not installed")
from websockets.asyncio.client import connect as async_connect  # noqa: E402 (after the availability check)
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402 (after the availability check)
from websockets.sync.client import ClientConnection  # noqa: E402 (after the availability check)
from websockets.sync.client import connect as sync_connect  # noqa: E402 (after the availability check)

T = TypeVar("T")
MiB = 1024 * 1024
LIMIT = 16 * MiB


def ws_url(router: RunningRouter, path: str) -> str:
    return router.url.replace("http://", "ws://", 1) + path


def open_ws(url: str, **kwargs: Any) -> ClientConnection:
    """An open client connection; the caller closes it (``with`` or ``close()``)."""
    kwargs.setdefault("max_size", 2 * LIMIT)
    ws = sync_connect(url, proxy=None, open_timeout=10, close_timeout=5, **kwargs)
    return ws.__enter__()  # entering only marks it as managed (websockets >= 17.1 warns if not)


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


def rejection(url: str, **kwargs: Any) -> Any:
    """The HTTP response of a refused handshake (websockets' InvalidStatus.response)."""
    with pytest.raises(InvalidStatus) as info:
        open_ws(url, **kwargs)
    return info.value.response


def closed_by_server(ws: ClientConnection, timeout: float = 10) -> tuple[int, str]:
    """Read until the server closes; the code and reason it sent (1006 when none came)."""
    deadline = time.monotonic() + timeout
    with pytest.raises(ConnectionClosed) as info:
        while True:
            ws.recv(timeout=max(0.01, deadline - time.monotonic()))
    rcvd = info.value.rcvd
    return (rcvd.code, rcvd.reason) if rcvd is not None else (1006, "")


async def wait_until(predicate: Callable[[], bool], timeout: float = 5) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


def in_flight(router: RunningRouter) -> int:
    return sum(t.in_flight for t in router.router.registry.tunnels())


async def one_backend(
    nursery: trio.Nursery,
    recorder: Recorder | None = None,
    *,
    loop: str = "trio",
    **router_overrides: Any,
) -> tuple[RunningRouter, Recorder]:
    rec = recorder or Recorder()
    router = await start_router(nursery, **router_overrides)
    await start_backend(nursery, make_app("b1", rec), router.tunnel, loop=loop)
    await router.wait_tunnels(1)
    return router, rec


# -- messages ------------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("compression", ["deflate", None], ids=["deflate", "plain"])
async def test_echo_text_and_binary(compression: str | None, helper_loop: str) -> None:
    async with trio.open_nursery() as nursery:
        router, rec = await one_backend(nursery, loop=helper_loop)

        def client() -> None:
            with open_ws(ws_url(router, "/echo?x=1"), compression=compression) as ws:
                assert ws.subprotocol is None
                assert ws.response.headers["x-backend"] == "b1"
                for text in ("hello", "", "héllo ✓ " * 100):
                    ws.send(text)
                    assert ws.recv(timeout=5) == text
                for data in (b"\x00\x01\xff", b"", bytes(range(256)) * 1000):
                    ws.send(data)
                    assert ws.recv(timeout=5) == data
                ws.close()

        await in_thread(client)
        await wait_until(lambda: bool(rec.disconnects))
        assert rec.disconnects == [{"type": "websocket.disconnect", "code": 1000, "reason": ""}]
        await wait_until(lambda: in_flight(router) == 0)
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(60)
async def test_16_mib_messages_both_ways_and_the_limit(helper_loop: str) -> None:
    async with trio.open_nursery() as nursery:
        router, rec = await one_backend(nursery, loop=helper_loop)

        def client() -> None:
            with open_ws(ws_url(router, "/echo"), compression=None) as ws:
                big = bytes(range(256)) * (LIMIT // 256)
                ws.send(big)
                assert ws.recv(timeout=30) == big
                text = "ü" * (LIMIT // 2)  # 16 MiB of UTF-8
                ws.send(text)
                assert ws.recv(timeout=30) == text
                ws.send(f"send:{LIMIT}")
                assert ws.recv(timeout=30) == b"s" * LIMIT
                # One byte over the limit from the app: the router closes both sides with 1009.
                ws.send(f"send:{LIMIT + 1}")
                assert closed_by_server(ws, 30)[0] == 1009
            with open_ws(ws_url(router, "/echo"), compression=None) as ws:
                # One byte over from the user: the front end refuses it with 1009.
                ws.send(b"u" * (LIMIT + 1))
                assert closed_by_server(ws, 30)[0] == 1009

        await in_thread(client)
        await wait_until(lambda: len(rec.disconnects) == 2)
        assert [d["code"] for d in rec.disconnects] == [1009, 1009]  # the app learnt why
        await wait_until(lambda: in_flight(router) == 0)
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_subprotocol_negotiation(helper_loop: str) -> None:
    async with trio.open_nursery() as nursery:
        router, _ = await one_backend(nursery, loop=helper_loop)

        def client() -> None:
            cases: list[tuple[list[str], str | None]] = [
                (["nope", "chat"], "chat"),
                (["chat.v2", "chat"], "chat.v2"),
                (["nope"], None),
            ]
            for offered, chosen in cases:
                ws = open_ws(ws_url(router, "/echo"), subprotocols=offered)
                with ws:
                    assert ws.subprotocol == chosen
                    ws.send("ok")
                    assert ws.recv(timeout=5) == "ok"

        await in_thread(client)
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_ping_pong_from_the_client(helper_loop: str) -> None:
    async with trio.open_nursery() as nursery:
        router, _ = await one_backend(nursery, loop=helper_loop)

        def client() -> None:
            with open_ws(ws_url(router, "/echo")) as ws:
                for payload in (b"", b"abc"):
                    assert ws.ping(payload).wait(timeout=5)
                ws.send("after ping")
                assert ws.recv(timeout=5) == "after ping"

        await in_thread(client)
        nursery.cancel_scope.cancel()


# -- closing -------------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_close_code_and_reason_from_client_to_app(helper_loop: str) -> None:
    async with trio.open_nursery() as nursery:
        router, rec = await one_backend(nursery, loop=helper_loop)

        def client() -> None:
            ws = open_ws(ws_url(router, "/echo"))
            ws.send("x")
            assert ws.recv(timeout=5) == "x"
            ws.close(4002, "client says bye")
            assert ws.close_code == 4002  # the close handshake completed

        await in_thread(client)
        await wait_until(lambda: bool(rec.disconnects))
        assert rec.disconnects == [
            {"type": "websocket.disconnect", "code": 4002, "reason": "client says bye"}
        ]
        await wait_until(lambda: in_flight(router) == 0)
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_close_code_and_reason_from_app_to_client(helper_loop: str) -> None:
    async with trio.open_nursery() as nursery:
        router, rec = await one_backend(nursery, loop=helper_loop)

        def client() -> tuple[int, str]:
            with open_ws(ws_url(router, "/echo")) as ws:
                ws.send("close:4001:app says bye")
                return closed_by_server(ws)

        assert await in_thread(client) == (4001, "app says bye")
        # The app's receive() after its close returns the answer to it.
        await wait_until(lambda: bool(rec.disconnects))
        assert rec.disconnects[0]["code"] == 4001
        await wait_until(lambda: in_flight(router) == 0)
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_user_vanishing_without_close_frame_reaches_app_as_1006(helper_loop: str) -> None:
    async with trio.open_nursery() as nursery:
        router, rec = await one_backend(nursery, loop=helper_loop)

        def client() -> None:
            ws = open_ws(ws_url(router, "/echo"))
            ws.send("x")
            assert ws.recv(timeout=5) == "x"
            ws.socket.shutdown(socket.SHUT_RDWR)  # TCP gone, no close frame
            ws.socket.close()

        await in_thread(client)
        await wait_until(lambda: bool(rec.disconnects))
        assert rec.disconnects[0]["code"] == 1006
        await wait_until(lambda: in_flight(router) == 0)
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_app_crash_after_accept_closes_with_1011(helper_loop: str) -> None:
    async with trio.open_nursery() as nursery:
        router, _ = await one_backend(nursery, loop=helper_loop)

        def client() -> tuple[int, str]:
            with open_ws(ws_url(router, "/crash-after")) as ws:
                return closed_by_server(ws)

        assert (await in_thread(client))[0] == 1011
        nursery.cancel_scope.cancel()


# -- denial and error mapping ----------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_denials_reach_the_client_as_http_responses(helper_loop: str) -> None:
    async with trio.open_nursery() as nursery:
        router, _ = await one_backend(nursery, loop=helper_loop)

        def client() -> None:
            response = rejection(ws_url(router, "/deny"))
            assert response.status_code == 403
            response = rejection(ws_url(router, "/deny-401"))
            assert response.status_code == 401
            assert response.body == b"token required"
            assert response.headers["www-authenticate"] == "Bearer"
            response = rejection(ws_url(router, "/crash-before"))
            assert response.status_code == 500

        await in_thread(client)
        await wait_until(lambda: in_flight(router) == 0)
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_no_tunnel_503_and_no_route_404() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        strict = await start_router(nursery, default_service=None)

        def client() -> None:
            response = rejection(ws_url(router, "/echo"))
            assert response.status_code == 503
            assert response.headers["retry-after"] == "1"
            assert b"no live tunnel" in response.body
            response = rejection(ws_url(strict, "/echo"))
            assert response.status_code == 404

        await in_thread(client)
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_backend_not_answering_the_handshake_gives_504() -> None:
    async with trio.open_nursery() as nursery:
        router, _ = await one_backend(nursery, response_timeout=0.5)
        started = trio.current_time()
        response = await in_thread(rejection, ws_url(router, "/slow-accept"))
        assert response.status_code == 504
        assert trio.current_time() - started < 5
        await wait_until(lambda: in_flight(router) == 0)
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_full_tunnels_queue_then_503() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, max_streams_per_tunnel=1, queue_timeout=0.3)
        # One tunnel only: with more, the helper would open extra tunnels instead of queueing.
        await start_backend(nursery, make_app("b1"), router.tunnel, max_connections=1)
        await router.wait_tunnels(1)

        def client() -> None:
            with open_ws(ws_url(router, "/echo")) as first:  # holds the only stream slot
                started = time.monotonic()
                assert rejection(ws_url(router, "/echo")).status_code == 503
                assert time.monotonic() - started >= 0.3
                first.send("still served")
                assert first.recv(timeout=5) == "still served"
            # The slot is free again once the session ended.
            deadline = time.monotonic() + 5
            while True:
                try:
                    with open_ws(ws_url(router, "/echo")) as second:
                        second.send("x")
                        assert second.recv(timeout=5) == "x"
                        return
                except InvalidStatus:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)

        await in_thread(client)
        nursery.cancel_scope.cancel()


# -- tunnel loss, balancing, drain -------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_tunnel_lost_before_the_accept_gives_502(helper_loop: str) -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        backend = await start_backend(
            nursery,
            make_app("b1"),
            router.tunnel,
            loop=helper_loop,
            options=BackendOptions(drain_timeout=0.2, backoff_base=30),
        )
        await router.wait_tunnels(1)
        async with trio.open_nursery() as inner:
            responses: list[Any] = []

            async def handshake() -> None:
                responses.append(await in_thread(rejection, ws_url(router, "/slow-accept")))

            inner.start_soon(handshake)
            await wait_until(lambda: in_flight(router) == 1)
            await backend.stop()  # drains for 0.2 s, then the tunnel closes under the handshake
        assert responses[0].status_code == 502
        await wait_until(lambda: in_flight(router) == 0)
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_tunnel_lost_mid_conversation_closes_with_1011(helper_loop: str) -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        backend = await start_backend(
            nursery,
            make_app("b1"),
            router.tunnel,
            loop=helper_loop,
            options=BackendOptions(drain_timeout=0.2, backoff_base=30),
        )
        await router.wait_tunnels(1)
        opened = threading.Event()
        outcome: list[tuple[int, str]] = []

        def client() -> None:
            with open_ws(ws_url(router, "/echo")) as ws:
                ws.send("x")
                assert ws.recv(timeout=5) == "x"
                opened.set()
                outcome.append(closed_by_server(ws))

        async with trio.open_nursery() as inner:
            inner.start_soon(in_thread, client)
            await in_thread(opened.wait, 10)
            stopped = trio.current_time()
            # The backend drains for 0.2 s, then closes its tunnel under the open session.
            await backend.stop()
        assert outcome == [(1011, "backend connection lost")]  # RFC 6455 §7.4.1, not silence
        assert trio.current_time() - stopped < 3
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(40)
async def test_backend_process_killed_mid_conversation() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        with spawn("-m", "ptth", "tests.e2e.apps_websocket:app", "--router", router.tunnel) as p:
            await router.wait_tunnels(1, timeout=15)

            def client() -> float:
                with open_ws(ws_url(router, "/echo")) as ws:
                    ws.send("x")
                    assert ws.recv(timeout=5) == "x"
                    p.send_signal(signal.SIGKILL)
                    killed = time.monotonic()
                    assert closed_by_server(ws, 10) == (1011, "backend connection lost")
                    return time.monotonic() - killed

            assert await in_thread(client) < 2
        await wait_until(lambda: in_flight(router) == 0)
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_sessions_balance_across_backends_and_release_their_slots() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        for name in ("b1", "b2"):
            await start_backend(nursery, make_app(name), router.tunnel)
        await router.wait_tunnels(2)

        def client() -> Counter[str]:
            seen: Counter[str] = Counter()
            sessions = [open_ws(ws_url(router, "/whoami")) for _ in range(20)]
            for ws in sessions:  # all open at once: least-in-flight spreads them
                seen[str(ws.recv(timeout=5))] += 1
            for ws in sessions:
                ws.close()
            return seen

        seen = await in_thread(client)
        assert set(seen) == {"b1", "b2"}, seen
        assert min(seen.values()) >= 5, seen
        await wait_until(lambda: in_flight(router) == 0)
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(40)
async def test_drain_keeps_open_sessions_and_routes_new_ones_elsewhere(helper_loop: str) -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        rec1 = Recorder()
        b1 = await start_backend(
            nursery,
            make_app("b1", rec1),
            router.tunnel,
            loop=helper_loop,
            options=BackendOptions(drain_timeout=20, backoff_base=30),
        )
        await router.wait_tunnels(1)
        ws = await in_thread(open_ws, ws_url(router, "/echo"))
        assert ws.response.headers["x-backend"] == "b1"
        await start_backend(nursery, make_app("b2"), router.tunnel, loop=helper_loop)
        await router.wait_tunnels(2)
        async with trio.open_nursery() as inner:
            inner.start_soon(b1.stop)
            await wait_until(lambda: router.tunnel_count() == 1 or _draining(router))
            # New sessions land on b2 only; the session on b1 keeps working.
            for _ in range(5):
                other = await in_thread(open_ws, ws_url(router, "/whoami"))
                assert await in_thread(other.recv, 5) == "b2"
                await in_thread(other.close)
            await in_thread(ws.send, "still here")
            assert await in_thread(ws.recv, 5) == "still here"
            closed_at = trio.current_time()
            await in_thread(ws.close)
        # b1's drain ended when its last session did, well before the 20 s drain timeout.
        assert trio.current_time() - closed_at < 3
        assert rec1.disconnects[-1]["code"] == 1000
        nursery.cancel_scope.cancel()


def _draining(router: RunningRouter) -> bool:
    return any(t.connection.draining for t in router.router.registry.tunnels())


# -- h2 extended CONNECT from the user -------------------------------------------------------


def _h2_websocket_session(host: str, port: int) -> tuple[int, list[object], int]:
    """RFC 8441 from the user's side: h2c prior knowledge, then extended CONNECT."""
    sock = socket.create_connection((host, port), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    ws = Connection(ConnectionType.CLIENT)
    status = 0
    echoed: list[object] = []
    close_code = 0
    stream_id = 1
    connect_sent = False
    try:
        while not close_code:
            data = sock.recv(65536)
            assert data, "the router closed the connection"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RemoteSettingsChanged) and not connect_sent:
                    setting = h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL
                    assert conn.remote_settings[setting] == 1
                    conn.send_headers(
                        stream_id,
                        [
                            (":method", "CONNECT"),
                            (":protocol", "websocket"),
                            (":scheme", "http"),
                            (":path", "/echo"),
                            (":authority", f"{host}:{port}"),
                            ("sec-websocket-version", "13"),
                            ("sec-websocket-protocol", "chat"),
                        ],
                    )
                    connect_sent = True
                elif isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                    frames = ws.send(wsproto.events.TextMessage(data="over h2"))
                    frames += ws.send(wsproto.events.BytesMessage(data=b"\x00bin"))
                    frames += ws.send(wsproto.events.TextMessage(data="close:4003:h2 bye"))
                    conn.send_data(stream_id, frames)
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                    if close_code:
                        continue  # nothing counts after the close frame
                    ws.receive_data(event.data)
                    for ws_event in ws.events():
                        if isinstance(ws_event, wsproto.events.Message):
                            echoed.append(ws_event.data)
                        elif isinstance(ws_event, wsproto.events.CloseConnection):
                            close_code = ws_event.code
                            conn.send_data(stream_id, ws.send(ws_event.response()), end_stream=True)
            sock.sendall(conn.data_to_send())
    finally:
        sock.close()
    return status, echoed, close_code


@pytest.mark.timeout(30)
async def test_h2_extended_connect_from_the_user(helper_loop: str) -> None:
    async with trio.open_nursery() as nursery:
        router, rec = await one_backend(nursery, loop=helper_loop)
        host, port = router.addresses.http
        status, echoed, code = await in_thread(_h2_websocket_session, host, port)
        assert status == 200
        assert echoed == ["over h2", b"\x00bin"]
        assert code == 4003
        await wait_until(lambda: bool(rec.disconnects))
        assert rec.disconnects[0]["code"] == 4003
        nursery.cancel_scope.cancel()


# -- scale and backpressure ------------------------------------------------------------------

SESSIONS = 1000
MESSAGES = 4


def _concurrent_sessions(url: str, sessions: int) -> tuple[float, float, int]:
    """Open ``sessions`` sessions (all held open at once), echo MESSAGES each, check every one.

    Returns the time to open them all, the total time, and the number of checked echoes.
    """

    async def main() -> tuple[float, float, int]:
        started = time.monotonic()
        connecting = asyncio.Semaphore(100)  # the front end's listen backlog is 100
        all_open = asyncio.Event()
        opened = 0
        open_time = 0.0
        checked = 0

        async def session(index: int) -> None:
            nonlocal opened, open_time, checked
            async with connecting:
                ws = await async_connect(url, proxy=None, open_timeout=30, compression=None)
            opened += 1
            if opened == sessions:
                open_time = time.monotonic() - started
                all_open.set()
            async with ws:
                await all_open.wait()
                for n in range(MESSAGES):
                    payload: str | bytes = (
                        f"session {index} message {n}"
                        if n % 2
                        else index.to_bytes(4, "big") * (n + 1) * 64
                    )
                    await ws.send(payload)
                    assert await ws.recv() == payload
                    checked += 1

        await asyncio.wait_for(asyncio.gather(*(session(i) for i in range(sessions))), 120)
        return open_time, time.monotonic() - started, checked

    return asyncio.run(main())


# A thousand sessions on asyncio, the loop ``python -m ptth`` picks by default; the trio run
# holds 250 (the same code paths, a quarter of the time: 1,000 take 16-19 s on either loop).
@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    ("helper_loop", "sessions"), [("asyncio", SESSIONS), ("trio", 250)], ids=["asyncio", "trio"]
)
async def test_a_thousand_concurrent_sessions_over_one_tunnel(
    helper_loop: str, sessions: int
) -> None:
    async with trio.open_nursery() as nursery:
        rec = Recorder()
        router = await start_router(nursery, max_streams_per_tunnel=sessions)
        await start_backend(
            nursery,
            make_app("b1", rec),
            router.tunnel,
            loop=helper_loop,
            max_concurrent_streams=sessions,
        )
        await router.wait_tunnels(1)
        url = ws_url(router, "/echo")
        open_time, elapsed, checked = await in_thread(_concurrent_sessions, url, sessions)
        print(
            f"\n{sessions} sessions over one tunnel ({helper_loop}): all open after "
            f"{open_time:.1f} s, {MESSAGES} echoes each checked after {elapsed:.1f} s"
        )
        assert checked == sessions * MESSAGES
        assert rec.max_open_sessions == sessions  # all at once, on the one tunnel
        assert rec.messages == sessions * MESSAGES
        await wait_until(lambda: in_flight(router) == 0, timeout=20)
        nursery.cancel_scope.cancel()


def _rss_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", text)
    assert match is not None
    return int(match.group(1))


def _raw_upgrade(host: str, port: int, path: str) -> socket.socket:
    """A WebSocket client that completes the handshake and then stops reading."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.connect((host, port))
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)  # byte by byte: leave every frame in the socket
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


@pytest.mark.timeout(120)
async def test_a_client_that_stops_reading_does_not_grow_the_router(helper_loop: str) -> None:
    flood = 200 * MiB
    with spawn(
        "-m", "router", "--http", "127.0.0.1:0", "--tunnel", "127.0.0.1:0", "--access-log", "false"
    ) as proc:
        assert proc.stdout is not None
        line = ""
        with trio.fail_after(15):
            while "front end on" not in line:
                line = (await in_thread(proc.stdout.readline)).decode()
                assert line, "the router exited"
        match = re.search(r"front end on http://([\d.]+):(\d+), tunnel port on ([\d.:]+)", line)
        assert match is not None, line
        host, port, tunnel = match.group(1), int(match.group(2)), match.group(3)
        async with trio.open_nursery() as nursery:
            rec = Recorder()
            await start_backend(nursery, make_app("b1", rec), tunnel, loop=helper_loop)
            await trio.sleep(0.5)
            baseline = _rss_kib(proc.pid)
            sock = await in_thread(_raw_upgrade, host, port, f"/flood?size={flood}")
            # The app sends as fast as flow control lets it; the user reads nothing.
            await trio.sleep(3)
            stalled_at = rec.flood_sent
            peak = baseline
            for _ in range(20):
                await trio.sleep(0.1)
                peak = max(peak, _rss_kib(proc.pid))
            assert rec.flood_sent == stalled_at, "the app kept sending to a client not reading"
            assert rec.flood_sent < 48 * MiB
            growth = (peak - baseline) / 1024
            print(
                f"\nstalled after {rec.flood_sent / MiB:.0f} MiB of {flood / MiB:.0f} MiB; "
                f"router RSS {baseline / 1024:.0f} -> {peak / 1024:.0f} MiB"
            )
            assert growth < 64, f"router grew by {growth:.0f} MiB"

            # Reading resumes the flow: every byte arrives and the router stays bounded.
            # 1 MiB payloads take a 10-byte unmasked header each (RFC 6455 §5.2).
            wire = (flood // FLOOD_CHUNK) * (FLOOD_CHUNK + 10)

            def drain() -> tuple[int, int]:
                sock.settimeout(30)
                total = 0
                top = 0
                while total < wire:
                    chunk = sock.recv(1024 * 1024)
                    assert chunk
                    total += len(chunk)
                    if total % (16 * MiB) < len(chunk):
                        top = max(top, _rss_kib(proc.pid))
                return total, top

            total, top = await in_thread(drain)
            assert total == wire
            print(f"read all {flood // MiB} MiB; router RSS peak while reading {top // 1024} MiB")
            assert (top - baseline) / 1024 < 96
            sock.close()
            await wait_until(lambda: bool(rec.disconnects), timeout=10)
            nursery.cancel_scope.cancel()
        proc.send_signal(signal.SIGTERM)

"""Hostile users on the front end (RELIABILITY.md rows 1, 8, 11, 13), scaled for a 2-core box.

* Rapid Reset (CVE-2023-44487): HEADERS immediately followed by RST_STREAM(CANCEL), thousands of
  times on one h2c connection, against a backend whose requests hold until the user leaves.
  At most 100 streams are ever open at the backend (the tunnel's stream cap), they are all gone
  right after the flood, and a bystander keeps being served. Requests the user has already
  reset give up their place in the tunnel queue (``router.request_body.watch_until_stream``);
  before that fix the flood filled all 100 slots with dead requests for seconds and the
  bystander got 503s after a 5 s queue wait.
* Slowloris: 100 connections drip a request head, one byte every 0.5 s. The header deadline is
  hypercorn's ``keep_alive_timeout`` (the router's ``read_timeout``); the legit user is served
  throughout and every dripping connection is closed at the deadline.
* Slow read / zero window: a user asks for 256 MiB and then takes nothing: over HTTP/1.1 with a
  full socket, over h2 with a full socket, and over h2 with a flow-control window of 0. The
  response is aborted and the backend's stream reset once the user took nothing for
  ``response_idle_timeout`` seconds, and the router's memory stays bounded by the windows.
  A slow reader that keeps taking data is never cut. The backend's side of that (the app hears
  ``http.disconnect``) is checked with the helper on both loops (``helper_loop``).

Every number a test measures is printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.lowlevel
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import httpx
import pytest
import trio

from ptth.types import Receive, Scope, Send
from tests.support import RunningRouter, serve_lifespan, start_backend, start_router

MiB = 1024 * 1024


def rss_mib() -> float:
    """This process's resident set (router, backend and clients all live in it)."""
    match = re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text())
    assert match is not None
    return int(match.group(1)) / 1024


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(0, int(len(ordered) * 0.99) - 1)]


def in_flight(router: RunningRouter) -> int:
    return sum(t.in_flight for t in router.router.registry.tunnels())


def tunnel_streams(router: RunningRouter) -> int:
    return sum(t.connection.open_streams for t in router.router.registry.tunnels())


async def wait_until(predicate: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``predicate()`` held; fails after ``timeout``."""
    start = trio.current_time()
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)
    return trio.current_time() - start


# -- the backend ----------------------------------------------------------------------------


@dataclass
class AttackedApp:
    """``/fast`` answers at once; ``/big`` streams ``BIG`` bytes; anything else holds until the
    user goes away. Counts the requests running at any moment and remembers the peak.

    Written with anyio (it runs on either helper loop); its times are ``time.monotonic()``."""

    active: int = 0
    peak: int = 0
    started: int = 0
    sent: int = 0  # body bytes of the latest /big whose send returned
    disconnected_at: float | None = None  # when /big saw http.disconnect (time.monotonic)
    finished_at: float | None = None

    BIG = 256 * MiB

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["path"] == "/fast":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        self.active += 1
        self.started += 1
        self.peak = max(self.peak, self.active)
        try:
            if scope["path"] == "/big":
                await self._big(receive, send)
            else:
                while (await receive())["type"] != "http.disconnect":
                    pass
                # Dropped (the stream is reset); it only spares a warning per request that
                # the app returned without a response.
                await send({"type": "http.response.start", "status": 499, "headers": []})
        finally:
            self.active -= 1

    async def _big(self, receive: Receive, send: Send) -> None:
        self.sent = 0
        self.disconnected_at = self.finished_at = None
        chunk = b"x" * (64 * 1024)
        length = str(self.BIG).encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]}
        )
        async with anyio.create_task_group() as tasks:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                self.disconnected_at = time.monotonic()
                tasks.cancel_scope.cancel()

            tasks.start_soon(watch)
            for _ in range(self.BIG // len(chunk)):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self.sent += len(chunk)
                # After a reset ptth drops sends at once: let watch() see the disconnect.
                await anyio.lowlevel.checkpoint()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            self.finished_at = time.monotonic()
            tasks.cancel_scope.cancel()


# -- 1. Rapid Reset -------------------------------------------------------------------------


@dataclass
class Flood:
    sent: int = 0
    goaway_at: float | None = None  # seconds after the first pair was written
    goaway_last_stream: int | None = None
    closed_at: float | None = None
    notes: list[str] = field(default_factory=list)


def h2_client() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.initiate_connection()
    return conn


def request_headers(path: bytes, method: bytes = b"GET") -> list[tuple[bytes, bytes]]:
    return [
        (b":method", method),
        (b":scheme", b"http"),
        (b":authority", b"app.test"),
        (b":path", path),
    ]


async def rapid_reset(addr: tuple[str, int], pairs: int, *, with_body: bool) -> Flood:
    """``pairs`` times HEADERS then RST_STREAM(CANCEL) on one h2c connection (prior knowledge),
    written as fast as the socket takes them; returns once the router closed the connection
    (or 10 s after the last pair)."""
    flood = Flood()
    sock = await trio.open_tcp_stream(*addr)
    conn = h2_client()
    method = b"POST" if with_body else b"GET"
    start = trio.current_time()
    closed = trio.Event()

    async def reader() -> None:
        try:
            while data := await sock.receive_some(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ConnectionTerminated) and not flood.goaway_at:
                        flood.goaway_at = trio.current_time() - start
                        flood.goaway_last_stream = event.last_stream_id
        except (trio.BrokenResourceError, trio.ClosedResourceError, h2.exceptions.ProtocolError):
            pass
        flood.closed_at = trio.current_time() - start
        closed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        try:
            await sock.send_all(conn.data_to_send())
            while flood.sent < pairs and flood.goaway_at is None:
                for _ in range(min(100, pairs - flood.sent)):
                    stream_id = conn.get_next_available_stream_id()
                    conn.send_headers(
                        stream_id, request_headers(b"/hold", method), end_stream=not with_body
                    )
                    conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                    flood.sent += 1
                await sock.send_all(conn.data_to_send())
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            flood.notes.append(f"write failed after {flood.sent} pairs: {exc!r}")
        with trio.move_on_after(10):
            await closed.wait()
        nursery.cancel_scope.cancel()
    await sock.aclose()
    return flood


@pytest.mark.timeout(60)
@pytest.mark.parametrize("with_body", [False, True], ids=["GET", "POST"])
async def test_rapid_reset_never_piles_up_backend_streams(with_body: bool) -> None:
    app = AttackedApp()
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        await start_backend(nursery, app, router.tunnel)
        await router.wait_tunnels(1)
        latencies: list[float] = []
        statuses: list[int] = []
        stop = trio.Event()

        async def bystander() -> None:
            async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
                while not stop.is_set():
                    began = time.perf_counter()
                    response = await client.get("/fast")
                    latencies.append(time.perf_counter() - began)
                    statuses.append(response.status_code)
                    await trio.sleep(0.01)

        nursery.start_soon(bystander)
        await wait_until(lambda: len(latencies) >= 3, timeout=5)
        baseline = p99(latencies)
        flood = await rapid_reset(router.addresses.http, 3000, with_body=with_body)
        # The flood is over when the router has closed the attacking connection.
        settle = await wait_until(
            lambda: app.active == 0 and in_flight(router) == 0 and tunnel_streams(router) == 0,
            timeout=5,
        )
        during = len(latencies)
        stop.set()
        print(
            f"\nrapid reset ({'POST' if with_body else 'GET'}): {flood.sent} pairs written; "
            f"GOAWAY at {flood.goaway_at} s (last stream {flood.goaway_last_stream}), "
            f"connection closed at {flood.closed_at} s {flood.notes}\n"
            f"backend: {app.started} requests reached the app, peak {app.peak} at once, "
            f"all gone {settle * 1000:.0f} ms after the close\n"
            f"bystander: {during} requests, p99 {p99(latencies) * 1000:.0f} ms "
            f"(before the flood {baseline * 1000:.0f} ms), max {max(latencies) * 1000:.0f} ms"
        )
        assert app.peak <= 100
        assert settle < 1.0
        assert set(statuses) == {200}
        # hypercorn answers more than keep_alive_max_requests (1000) requests with GOAWAY and
        # then closes the connection: only once the 64 KiB batch that crossed the cap is done.
        assert flood.goaway_at is not None
        assert flood.goaway_last_stream is not None and flood.goaway_last_stream < 2 * 3000
        nursery.cancel_scope.cancel()


# -- 2. Slowloris ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_slowloris_is_closed_at_the_header_deadline() -> None:
    deadline = 3.0  # header_timeout: the header deadline
    drippers = 100
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, header_timeout=deadline)
        await start_backend(nursery, AttackedApp(), router.tunnel)
        await router.wait_tunnels(1)
        closed_after: list[float] = []
        opened = 0

        async def drip() -> None:
            nonlocal opened
            stream = await trio.open_tcp_stream(*router.addresses.http)
            opened += 1
            start = trio.current_time()
            head = b"GET / HTTP/1.1\r\nHost: app.test\r\n" + b"X-Drip: " + b"a" * 1000
            async with trio.open_nursery() as inner:

                async def watch_close() -> None:
                    try:
                        while await stream.receive_some(1024):
                            pass
                    except trio.BrokenResourceError:
                        pass
                    closed_after.append(trio.current_time() - start)
                    inner.cancel_scope.cancel()

                inner.start_soon(watch_close)
                try:
                    for byte in head:  # bounded: 1,030 bytes at 2 per second
                        await stream.send_all(bytes([byte]))
                        await trio.sleep(0.5)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    await trio.sleep_forever()  # watch_close records the close
            await stream.aclose()

        async with trio.open_nursery() as attack:
            for _ in range(drippers):
                attack.start_soon(drip)
            await wait_until(lambda: opened == drippers, timeout=10)
            latencies: list[float] = []
            statuses: list[int] = []
            async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
                for _ in range(40):  # ~4 s: across the deadline
                    began = time.perf_counter()
                    statuses.append((await client.get("/fast")).status_code)
                    latencies.append(time.perf_counter() - began)
                    await trio.sleep(0.1)
            with trio.fail_after(deadline + 5):
                while len(closed_after) < drippers:
                    await trio.sleep(0.05)
        print(
            f"\nslowloris: {drippers} dripping connections, header deadline {deadline:g} s: "
            f"closed after {min(closed_after):.2f}..{max(closed_after):.2f} s; "
            f"legit user {statuses.count(200)}/{len(statuses)} ok, "
            f"p99 {p99(latencies) * 1000:.0f} ms"
        )
        assert statuses == [200] * len(statuses)
        assert deadline - 0.5 < min(closed_after)
        assert max(closed_after) < deadline + 2
        nursery.cancel_scope.cancel()


# -- 3. Slow read / zero window -------------------------------------------------------------


def small_socket() -> trio.socket.SocketType:
    """A client socket with a 16 KiB receive buffer: a few KiB unread and the window is shut."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    return sock


async def h1_stop_reading(sock: trio.socket.SocketType) -> None:
    """Ask for /big over HTTP/1.1, read the head, then stop."""
    await sock.send(b"GET /big HTTP/1.1\r\nHost: app.test\r\n\r\n")
    head = await sock.recv(1024)
    assert head.startswith(b"HTTP/1.1 200"), head


async def h2_stop_reading(sock: trio.socket.SocketType, *, window: int) -> None:
    """Ask for /big over h2c; ``window`` 0 never lets a DATA frame through, a huge one lets
    the router write until the socket buffers are full. Returns after the response headers."""
    conn = h2_client()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
    if window > 65535:
        conn.increment_flow_control_window(window - 65535)
    conn.send_headers(1, request_headers(b"/big"), end_stream=True)
    await sock.send(conn.data_to_send())
    with trio.fail_after(5):
        while True:
            events = conn.receive_data(await sock.recv(16 * 1024))
            await sock.send(conn.data_to_send())
            if any(isinstance(e, h2.events.ResponseReceived) for e in events):
                return


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["h1-socket", "h2-socket", "h2-window-0"])
async def test_a_user_who_stops_reading_loses_the_response(mode: str, helper_loop: str) -> None:
    idle = 1.5
    app = AttackedApp()
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, response_idle_timeout=idle)
        await start_backend(nursery, app, router.tunnel, loop=helper_loop)
        await router.wait_tunnels(1)
        baseline = peak = rss_mib()
        with small_socket() as sock:
            await sock.connect(router.addresses.http)
            start = time.monotonic()
            if mode == "h1-socket":
                await h1_stop_reading(sock)
            else:
                window = 0 if mode == "h2-window-0" else 2**31 - 1
                await h2_stop_reading(sock, window=window)
            with trio.fail_after(idle + 5):
                while app.disconnected_at is None or app.active or in_flight(router):
                    peak = max(peak, rss_mib())
                    await trio.sleep(0.05)
        assert app.disconnected_at is not None
        reset_after = app.disconnected_at - start
        print(
            f"\nslow read ({mode}): the app got {app.sent / MiB:.1f} MiB into the tunnel, then "
            f"http.disconnect {reset_after:.2f} s after the request (idle timeout {idle:g} s); "
            f"RSS {baseline:.0f} -> peak {peak:.0f} MiB"
        )
        assert app.finished_at is None
        assert app.sent < 32 * MiB
        assert idle * 0.9 < reset_after < idle + 3
        assert peak - baseline < 32
        assert tunnel_streams(router) == 0
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2"])
async def test_a_slow_reader_that_keeps_reading_is_not_cut(http2: bool) -> None:
    """The idle bound is about no progress, not total time: this download takes ~3x it."""
    idle = 1.0
    size = 8 * MiB

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        length = str(size).encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]}
        )
        chunk = b"y" * (256 * 1024)
        for _ in range(size // len(chunk)):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, response_idle_timeout=idle)
        await start_backend(nursery, app, router.tunnel)
        await router.wait_tunnels(1)
        received = 0
        start = trio.current_time()
        async with (
            httpx.AsyncClient(
                base_url=router.url, http1=not http2, http2=http2, timeout=10
            ) as client,
            client.stream("GET", "/slow") as response,
        ):
            assert response.status_code == 200
            async for chunk in response.aiter_raw(64 * 1024):
                received += len(chunk)
                await trio.sleep(0.025)  # ~2.5 MiB/s: 64 KiB well within the idle bound
        took = trio.current_time() - start
        print(
            f"\nslow reader ({'h2' if http2 else 'h1'}): {received / MiB:.0f} MiB in {took:.1f} s"
        )
        assert received == size
        assert took > 2 * idle
        nursery.cancel_scope.cancel()

"""Graceful drain end to end: backend stop, rolling restarts under load, router stop, and the
router's retry of streams a backend refused (DESIGN.md "Liveness, drain, reconnect").
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import socket
import subprocess
import threading
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.abc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import httpx
import pytest
import trio
from h2.errors import ErrorCodes

from ptth.errors import HandshakeRefused
from ptth.proto.handshake import ClientHandshake, Registration
from router.config import RouterConfig
from router.server import Router, RouterAddresses
from tests.e2e.apps_drain import make_app
from tests.support import ThreadSafeEvent, spawn, start_backend, start_router

log = logging.getLogger("tests.drain")


# -- helpers -------------------------------------------------------------------------------


@dataclass
class TrackedRouter:
    """A router whose ``serve`` return is observable (``done``)."""

    router: Router
    addresses: RouterAddresses
    done: trio.Event

    @property
    def url(self) -> str:
        return self.addresses.http_url

    @property
    def tunnel(self) -> str:
        return self.addresses.tunnel_addr

    async def wait_tunnels(self, count: int, timeout: float = 10) -> None:
        with trio.fail_after(timeout):
            while len(self.router.registry.tunnels()) < count:
                await trio.sleep(0.01)


async def start_tracked_router(nursery: trio.Nursery, **overrides: Any) -> TrackedRouter:
    fields: dict[str, Any] = {"http": "127.0.0.1:0", "tunnel": "127.0.0.1:0", "access_log": False}
    fields.update(overrides)
    router = Router(dataclasses.replace(RouterConfig(), **fields))
    done = trio.Event()

    async def run(task_status: trio.TaskStatus[RouterAddresses]) -> None:
        try:
            await router.serve(task_status=task_status)
        finally:
            done.set()

    addresses: RouterAddresses = await nursery.start(run)
    return TrackedRouter(router, addresses, done)


def refused(port: int) -> bool:
    """True when nothing accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


# -- 1. backend drain ----------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_backend_stop_finishes_in_flight_request_and_moves_new_ones(
    helper_loop: str,
) -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        started = ThreadSafeEvent()
        events_a: list[str] = []
        # Weight 100 against 1: while A is live the balancer prefers it even with the slow
        # request in flight, so only the drain can explain new requests landing on B.
        backend_a = await start_backend(
            nursery,
            make_app("a", started=started, events=events_a),
            router.tunnel,
            loop=helper_loop,
            weight=100,
        )
        await router.wait_tunnels(1)
        async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
            slow: dict[str, object] = {}

            async def slow_request() -> None:
                slow["response"] = await client.get("/slow", params={"s": "1"})
                slow["done_at"] = trio.current_time()

            async with trio.open_nursery() as requests:
                requests.start_soon(slow_request)
                with trio.fail_after(5):
                    await started.wait()
                backend_b = await start_backend(
                    nursery, make_app("b"), router.tunnel, loop=helper_loop
                )
                await router.wait_tunnels(2)
                before = await client.get("/before")
                assert before.headers["x-backend"] == "a"

                stop: dict[str, float] = {}

                async def stop_a() -> None:
                    stop["start"] = trio.current_time()
                    await backend_a.stop()
                    stop["end"] = trio.current_time()

                requests.start_soon(stop_a)
                await backend_a.cancel()  # A is draining (not done) before the new requests
                # New requests while A drains, sent without waiting for the router to notice
                # the GOAWAY: whichever tunnel they reach, B must serve them.
                new_backends: list[str] = []

                async def one(i: int) -> None:
                    response = await client.get(f"/new/{i}")
                    assert response.status_code == 200, response.text
                    new_backends.append(response.headers["x-backend"])

                for i in range(20):
                    requests.start_soon(one, i)
                    await trio.sleep(0.02)

        response = slow["response"]
        assert isinstance(response, httpx.Response)
        assert response.status_code == 200
        assert response.headers["x-backend"] == "a"
        assert response.text == "hello from a"
        assert new_backends == ["b"] * 20
        assert backend_a.error is None
        # Lifespan shutdown ran after the drain, once the in-flight response was sent.
        assert events_a == ["startup", "sent /slow", "shutdown"], events_a
        done_at = slow["done_at"]
        assert isinstance(done_at, float)
        # stop() waited for the in-flight request, but not for the 30 s drain timeout.
        assert stop["end"] >= done_at - 0.05
        assert stop["end"] - stop["start"] < 4, stop
        assert stop["end"] - done_at < 2, (stop, done_at)
        # The drained tunnel is gone from the router; B's remains and keeps serving.
        assert router.tunnel_count() == 1
        async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
            assert (await client.get("/after")).headers["x-backend"] == "b"
        await backend_b.stop()
        assert backend_b.error is None
        nursery.cancel_scope.cancel()


# -- 2. rolling restart under load ---------------------------------------------------------


@dataclass
class LoadStats:
    statuses: Counter[int] = field(default_factory=Counter)
    backends: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    transport_errors: int = 0

    @property
    def total(self) -> int:
        return sum(self.statuses.values()) + self.transport_errors


class BackendProcess:
    """``python -m ptth tests.e2e.apps_drain:app --loop LOOP`` named ``name``, output sent to a
    file."""

    def __init__(
        self, stack: ExitStack, name: str, router: str, log_file: IO[bytes], loop: str
    ) -> None:
        self.name = name
        self.loop = loop
        self.proc = stack.enter_context(
            spawn(
                "-m",
                "ptth",
                "tests.e2e.apps_drain:app",
                "--router",
                router,
                "--instance",
                name,
                "--loop",
                loop,
                env={"PTTH_TEST_BACKEND": name},
            )
        )
        self._log_file = log_file
        self._pump = _start_pump(self.proc, log_file, name)

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)


def _start_pump(proc: subprocess.Popen[bytes], sink: IO[bytes], name: str) -> threading.Thread:
    """Copy the child's output to ``sink`` in a thread so the pipe never fills up."""

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sink.write(f"[{name}] ".encode() + line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(60)
async def test_rolling_restart_under_load_loses_no_request(tmp_path: Path) -> None:
    """b1 (and its successor) run the helper on trio, b2 (and its) on asyncio: both loops drain
    on SIGTERM in one run, instead of doubling this 10 s test per loop."""
    output = (tmp_path / "backends.log").open("wb")
    stats = LoadStats()
    with ExitStack() as stack:
        stack.callback(output.close)
        async with trio.open_nursery() as nursery:
            router = await start_tracked_router(nursery)

            def tunnel_instances() -> set[str]:
                return {t.registration.instance for t in router.router.registry.tunnels()}

            async def wait_registered(name: str) -> None:
                with trio.fail_after(15):
                    while name not in tunnel_instances():
                        await trio.sleep(0.02)

            b1 = BackendProcess(stack, "b1", router.tunnel, output, loop="trio")
            b2 = BackendProcess(stack, "b2", router.tunnel, output, loop="asyncio")
            await wait_registered("b1")
            await wait_registered("b2")

            stop_load = trio.Event()
            limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
            async with httpx.AsyncClient(base_url=router.url, timeout=15, limits=limits) as client:

                async def worker(w: int) -> None:
                    i = 0
                    while not stop_load.is_set():
                        i += 1
                        try:
                            response = await client.get(f"/w{w}/{i}")
                        except httpx.HTTPError as exc:
                            stats.transport_errors += 1
                            stats.failures.append(f"worker {w} request {i}: {exc!r}")
                            continue
                        stats.statuses[response.status_code] += 1
                        if response.status_code == 200:
                            stats.backends[response.headers["x-backend"]] += 1
                        else:
                            stats.failures.append(
                                f"worker {w} request {i}: {response.status_code} {response.text!r}"
                            )

                async def restart(old: BackendProcess, new_name: str) -> BackendProcess:
                    await trio.sleep(0.7)
                    old.terminate()
                    code = await trio.to_thread.run_sync(old.proc.wait, 15)
                    assert code == 0, f"{old.name} exited with {code}"
                    new = BackendProcess(stack, new_name, router.tunnel, output, old.loop)
                    await wait_registered(new_name)
                    return new

                async with trio.open_nursery() as load:
                    for w in range(8):
                        load.start_soon(worker, w)
                    started = trio.current_time()
                    b1 = await restart(b1, "b1-new")
                    b2 = await restart(b2, "b2-new")
                    # Let the restarted pair take load for a moment, ~5 s of load in all.
                    await trio.sleep(max(0.7, 5 - (trio.current_time() - started)))
                    stop_load.set()
                    elapsed = trio.current_time() - started
            log.warning(
                "rolling restart: %d requests in %.1f s, backends %s, statuses %s",
                stats.total,
                elapsed,
                dict(stats.backends),
                dict(stats.statuses),
            )
            print(
                f"rolling restart: {stats.total} requests in {elapsed:.1f} s, "
                f"backends {dict(stats.backends)}"
            )
            for proc in (b1, b2):
                proc.terminate()
            for proc in (b1, b2):
                assert await trio.to_thread.run_sync(proc.proc.wait, 15) == 0
            router.router.shutdown()
            with trio.fail_after(10):
                await router.done.wait()
    output_text = (tmp_path / "backends.log").read_text(errors="replace")
    assert stats.failures == [], "\n".join(stats.failures[:20]) + "\n" + output_text[-3000:]
    assert stats.total > 100
    assert set(stats.backends) == {"b1", "b2", "b1-new", "b2-new"}, stats.backends
    assert all(count > 0 for count in stats.backends.values())


# -- 3. router drain -----------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_router_shutdown_finishes_in_flight_request_then_stops() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_tracked_router(nursery)
        started = ThreadSafeEvent()
        backend = await start_backend(nursery, make_app("a", started=started), router.tunnel)
        await router.wait_tunnels(1)
        http_port = router.addresses.http[1]
        tunnel_port = router.addresses.tunnel[1]
        async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
            result: dict[str, httpx.Response] = {}

            async def slow_request() -> None:
                result["slow"] = await client.get("/slow", params={"s": "1"})

            async with trio.open_nursery() as requests:
                requests.start_soon(slow_request)
                with trio.fail_after(5):
                    await started.wait()
                began = trio.current_time()
                router.router.shutdown()
                await trio.sleep(0.2)
                # Draining: the front end no longer accepts, the request is still running.
                assert not router.done.is_set()
                assert await trio.to_thread.run_sync(refused, http_port)
                assert "slow" not in result
            assert result["slow"].status_code == 200
            assert result["slow"].text == "hello from a"
        with trio.fail_after(5):
            await router.done.wait()
        assert trio.current_time() - began < 4
        # Stopped: nothing listens on either port any more.
        assert await trio.to_thread.run_sync(refused, http_port)
        assert await trio.to_thread.run_sync(refused, tunnel_port)
        await backend.stop()
        assert backend.error is None
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_router_draining_refuses_new_tunnels_with_503() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_tracked_router(nursery)
        started = ThreadSafeEvent()
        await start_backend(nursery, make_app("a", started=started), router.tunnel)
        await router.wait_tunnels(1)
        async with (
            httpx.AsyncClient(base_url=router.url, timeout=10) as client,
            trio.open_nursery() as requests,
        ):
            requests.start_soon(client.get, "/slow?s=1")
            await started.wait()
            router.router.shutdown()
            await trio.sleep(0.1)
            # A backend dialling in now is told to come back later (503), not accepted.
            host, port = router.addresses.tunnel
            sock = await trio.open_tcp_stream(host, port)
            handshake = ClientHandshake(Registration(instance="late"), f"{host}:{port}")
            await sock.send_all(handshake.request_bytes())
            with pytest.raises(HandshakeRefused) as info:
                with trio.fail_after(5):
                    while handshake.receive(await sock.receive_some(65536)) is None:
                        pass
            await sock.aclose()
            assert info.value.status == 503, info.value
            assert info.value.retryable
        with trio.fail_after(5):
            await router.done.wait()
        nursery.cancel_scope.cancel()


# -- 4. refused streams are retried on another tunnel --------------------------------------


@dataclass
class FakeBackend:
    """A raw h2 server behind a real ptth handshake, refusing every request it gets."""

    mode: str  # "rst": RST_STREAM(REFUSED_STREAM); "goaway": GOAWAY below the request's id
    requests: list[int] = field(default_factory=list)
    registered: trio.Event = field(default_factory=trio.Event)
    methods: list[bytes] = field(default_factory=list)

    async def run(self, router_addr: tuple[str, int], *, weight: float = 1000) -> None:
        host, port = router_addr
        sock = await trio.open_tcp_stream(host, port)
        try:
            handshake = ClientHandshake(
                Registration(instance=f"fake-{self.mode}", weight=weight), f"{host}:{port}"
            )
            await sock.send_all(handshake.request_bytes())
            accepted = None
            while accepted is None:
                accepted = handshake.receive(await sock.receive_some(65536))
            conn = h2.connection.H2Connection(
                h2.config.H2Configuration(client_side=False, header_encoding=None)
            )
            conn.initiate_connection()
            await sock.send_all(conn.data_to_send())
            data = accepted.trailing
            goaway_sent = False
            while True:
                if data:
                    try:
                        events = conn.receive_data(data)
                    except h2.exceptions.ProtocolError:
                        events = []  # after our GOAWAY h2 refuses everything; ignore it
                    for event in events:
                        if isinstance(event, h2.events.RemoteSettingsChanged):
                            self.registered.set()
                        elif isinstance(event, h2.events.RequestReceived):
                            stream_id = event.stream_id or 0
                            self.requests.append(stream_id)
                            headers = dict(event.headers or [])
                            self.methods.append(headers.get(b":method", b""))
                            if self.mode == "rst":
                                conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
                            elif not goaway_sent:
                                # "I processed nothing": every open stream is above last id 0.
                                conn.close_connection(ErrorCodes.NO_ERROR, last_stream_id=0)
                                goaway_sent = True
                    out = conn.data_to_send()
                    if out:
                        await sock.send_all(out)
                try:
                    data = await sock.receive_some(65536)
                except trio.BrokenResourceError:
                    return  # the router closed with our last frames unread: over all the same
                if not data:
                    return
        finally:
            await trio.aclose_forcefully(sock)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", ["rst", "goaway"])
async def test_refused_streams_are_retried_on_another_tunnel(mode: str) -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        real = await start_backend(nursery, make_app("real"), router.tunnel)
        await router.wait_tunnels(1)
        fake = FakeBackend(mode)
        nursery.start_soon(fake.run, router.addresses.tunnel)
        await router.wait_tunnels(2)
        # Weight 1000 against 1: the balancer tries the fake first for practically every request.
        async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
            results: list[httpx.Response] = []

            async def one(i: int) -> None:
                if i % 2:
                    results.append(await client.post(f"/post/{i}", content=f"body {i}".encode()))
                else:
                    results.append(await client.get(f"/get/{i}"))

            async with trio.open_nursery() as requests:
                for i in range(20):
                    requests.start_soon(one, i)
        assert len(results) == 20
        for response in results:
            assert response.status_code == 200, response.text
            assert response.headers["x-backend"] == "real"
        posts = sorted(r.text for r in results if r.request.method == "POST")
        assert posts == sorted(f"body {i}" for i in range(1, 20, 2))
        assert fake.requests, "the fake backend never saw a request: the retry path was not used"
        if mode == "rst":
            # Every request went to the fake first and was refused: POSTs included.
            assert len(fake.requests) == 20
            assert sorted(set(fake.methods)) == [b"GET", b"POST"]
        await real.stop()
        nursery.cancel_scope.cancel()


# -- 5. a drained tunnel closes with EOF, never RST ----------------------------------------


class GatedStream(anyio.abc.ByteStream):
    """A socket stream whose reads can be held back, so input stays unread in the kernel."""

    def __init__(self, inner: anyio.abc.ByteStream) -> None:
        self.inner = inner
        self.gate = trio.Event()
        self.gate.set()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await self.gate.wait()
        return await self.inner.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        await self.inner.send(item)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.timeout(20)
async def test_drained_tunnel_closes_with_eof_so_the_peer_reads_its_goaway() -> None:
    """Input left unread when a drained tunnel closes must not turn the close into a reset.

    The peer (a raw h2 client playing the router) opens a stream that the backend has not read
    when its drain ends. Closing a socket with unread input makes the kernel send RST and drop
    unsent output: the peer could lose the GOAWAY saying the stream was never processed and
    answer its user 502 instead of retrying (the rolling-restart test saw this as a rare 502).
    The backend must half-close and read until the peer closes: GOAWAY, then a clean EOF.
    """
    from ptth.driver import Connection

    anyio_listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = anyio_listener.extra(anyio.abc.SocketAttribute.local_port)
    client_sock = await trio.open_tcp_stream("127.0.0.1", port)
    server_sock = GatedStream(await anyio_listener.listeners[0].accept())
    await anyio_listener.aclose()

    async def never_called(stream: object) -> None:
        raise AssertionError("no stream may reach the app")

    backend = Connection(server_sock, client_side=False, on_stream=never_called)
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    received = bytearray()
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.run)
        await client_sock.send_all(client.data_to_send())
        await backend.wait_remote_settings()
        # Hold the backend's reader: after this PING it blocks on the gate, not in the kernel.
        server_sock.gate = trio.Event()
        client.ping(b"12345678")
        await client_sock.send_all(client.data_to_send())
        await trio.sleep(0.2)
        request = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/late")]
        client.send_headers(1, [*request, (b":authority", b"x")], end_stream=True)
        await client_sock.send_all(client.data_to_send())
        await trio.sleep(0.2)  # the HEADERS now wait, unread, in the backend's socket

        async def open_gate_once_closed() -> None:
            await backend.wait_closed()
            server_sock.gate.set()

        nursery.start_soon(open_gate_once_closed)
        await backend.drain(timeout=5)  # idle: GOAWAY, then close at once
        with trio.fail_after(5):
            while chunk := await client_sock.receive_some(65536):  # ECONNRESET would raise
                received += chunk
        await client_sock.aclose()  # the backend lingers until our EOF; now it can finish
    goaways = [
        event
        for event in client.receive_data(bytes(received))
        if isinstance(event, h2.events.ConnectionTerminated)
    ]
    assert goaways, "the peer never saw a GOAWAY"
    assert all(g.error_code == ErrorCodes.NO_ERROR for g in goaways)
    assert all((g.last_stream_id or 0) < 1 for g in goaways)  # stream 1 may be retried

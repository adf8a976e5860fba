"""The tunnel port facing hostile or broken backends (RELIABILITY.md rows 4, 6, 17, 18, 23).

Real router and real sockets on 127.0.0.1. Misbehaving backends are *fake*: :func:`fake_backend`
dials the tunnel port, does the ReverseHTTP handshake with :class:`ClientHandshake`, then speaks
HTTP/2 as a server with the ``h2`` library directly (or raw ``hyperframe`` bytes for frames h2
refuses to send). Every test also keeps a real backend (``ptth.serve``) on the default service
and checks that its traffic is unaffected.
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import httpx
import pytest
import trio
from h2.errors import ErrorCodes
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, PushPromiseFrame

from ptth.driver import Connection
from ptth.proto.handshake import Accepted, ClientHandshake, Registration
from tests.e2e.apps_faults import FIRST_PART
from tests.support import (
    RunningRouter,
    make_hello_app,
    spawn,
    start_backend,
    start_router,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FAKE_HOST = "fake.test"
FAKE = {"host": FAKE_HOST}
RequestHeaders = list[tuple[bytes, bytes]]


# -- the fake backend ----------------------------------------------------------------------


def server_config(*, validate: bool = True) -> h2.config.H2Configuration:
    """h2 as the tunnel's server; ``validate=False`` lets us send headers h2 would refuse."""
    return h2.config.H2Configuration(
        client_side=False,
        header_encoding=None,
        validate_outbound_headers=validate,
        normalize_outbound_headers=validate,
        validate_inbound_headers=validate,
    )


@dataclass(eq=False)
class FakeBackend:
    """One tunnel connection we drive by hand.

    A reader task records every byte the router sends (``received``) and, while ``feed`` is
    true, feeds it to ``conn`` and sends whatever h2 wants to answer (SETTINGS and PING ACKs).
    Set ``feed = False`` for a backend that goes silent.
    """

    sock: trio.SocketStream
    accepted: Accepted
    conn: h2.connection.H2Connection
    feed: bool = True
    received: bytearray = field(default_factory=bytearray)
    events: list[h2.events.Event] = field(default_factory=list)
    eof: trio.Event = field(default_factory=trio.Event)
    _changed: trio.Event = field(default_factory=trio.Event)
    _send_lock: trio.Lock = field(default_factory=trio.Lock)
    _taken: set[int] = field(default_factory=set)

    # sending

    async def send(self, data: bytes) -> None:
        async with self._send_lock:
            await self.sock.send_all(data)

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.send(data)

    async def start_h2(self) -> None:
        """Send the server preface (our SETTINGS): the router registers the tunnel on it."""
        self.conn.initiate_connection()
        await self.flush()

    # receiving

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _feed(self, data: bytes) -> None:
        if not self.feed:
            return
        try:
            self.events.extend(self.conn.receive_data(data))
        except h2.exceptions.ProtocolError:
            self.feed = False  # we broke the connection on purpose; keep recording bytes

    async def _reader(self) -> None:
        try:
            if self.accepted.trailing:
                self.received += self.accepted.trailing
                self._feed(self.accepted.trailing)
            while True:
                data = await self.sock.receive_some(65536)
                if not data:
                    break
                self.received += data
                self._feed(data)
                if self.feed:
                    await self.flush()
                self._wake()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self.eof.set()
            self._wake()

    async def wait_request(self, timeout: float = 5) -> int:
        """The stream id of the next request the router opened on this tunnel."""
        with trio.fail_after(timeout):
            while True:
                for event in self.events:
                    if isinstance(event, h2.events.RequestReceived):
                        stream_id = event.stream_id or 0
                        if stream_id not in self._taken:
                            self._taken.add(stream_id)
                            return stream_id
                if self.eof.is_set():
                    raise AssertionError("tunnel closed before a request arrived")
                await self._changed.wait()

    async def wait_closed(self, timeout: float) -> float:
        """Seconds until the router closed the connection (fails after ``timeout``)."""
        start = trio.current_time()
        with trio.fail_after(timeout):
            await self.eof.wait()
        return trio.current_time() - start

    def frames(self) -> list[Frame]:
        """Every frame the router sent, parsed from the raw bytes (independent of ``conn``)."""
        data = bytes(self.received)
        if data.startswith(PREFACE):
            data = data[len(PREFACE) :]
        frames: list[Frame] = []
        offset = 0
        while len(data) - offset >= 9:
            frame, length = Frame.parse_frame_header(memoryview(data[offset : offset + 9]))
            if len(data) - offset - 9 < length:
                break
            frame.parse_body(memoryview(data[offset + 9 : offset + 9 + length]))
            frames.append(frame)
            offset += 9 + length
        return frames

    def goaway_codes(self) -> list[int]:
        return [f.error_code for f in self.frames() if isinstance(f, GoAwayFrame)]


@asynccontextmanager
async def fake_backend(
    router: RunningRouter,
    *,
    service: str = "fake",
    hosts: tuple[str, ...] = (FAKE_HOST,),
    h2_preface: bool = True,
    validate: bool = True,
    wait_registered: bool = True,
) -> AsyncIterator[FakeBackend]:
    """Dial the router's tunnel port and do the handshake; optionally start HTTP/2.

    With ``h2_preface`` (the default) our SETTINGS are sent and, with ``wait_registered``, the
    call returns once the router has registered the tunnel for ``service``.
    """
    host, port = router.addresses.tunnel
    before = router.tunnel_count(service)
    sock = await trio.open_tcp_stream(host, port)
    try:
        handshake = ClientHandshake(
            Registration(service=service, hosts=hosts, instance="fake"), f"{host}:{port}"
        )
        await sock.send_all(handshake.request_bytes())
        accepted: Accepted | None = None
        with trio.fail_after(5):
            while accepted is None:
                accepted = handshake.receive(await sock.receive_some(65536))
        fake = FakeBackend(
            sock, accepted, h2.connection.H2Connection(config=server_config(validate=validate))
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fake._reader)
            if h2_preface:
                await fake.start_h2()
                if wait_registered:
                    await router.wait_tunnels(before + 1, service, timeout=5)
            yield fake
            nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(sock)


# -- user side -----------------------------------------------------------------------------


@dataclass
class Pending:
    """The outcome of a request running in the background: a status or an exception name."""

    done: trio.Event = field(default_factory=trio.Event)
    status: int | None = None
    headers: httpx.Headers | None = None
    body: bytes = b""
    error: BaseException | None = None
    elapsed: float = 0.0

    async def wait(self, timeout: float) -> Pending:
        with trio.fail_after(timeout):
            await self.done.wait()
        return self


def request_in_background(
    nursery: trio.Nursery,
    client: httpx.AsyncClient,
    path: str,
    headers: dict[str, str] | None = None,
) -> Pending:
    pending = Pending()

    async def run() -> None:
        start = trio.current_time()
        try:
            response = await client.get(path, headers=headers)
            pending.status = response.status_code
            pending.headers = response.headers
            pending.body = response.content
        except httpx.HTTPError as exc:
            pending.error = exc
        finally:
            pending.elapsed = trio.current_time() - start
            pending.done.set()

    nursery.start_soon(run)
    return pending


async def assert_healthy(router: RunningRouter, requests: int = 3) -> None:
    """The real backend on the default service still answers through this router, and no
    request slot or dead tunnel connection was left behind by whatever happened before."""
    async with httpx.AsyncClient(base_url=router.url, timeout=5) as client:
        for _ in range(requests):
            response = await client.get("/healthy")
            assert (response.status_code, response.text) == (200, "bar")
            assert response.headers["x-backend"] == "real"
    registry = router.router.registry
    await wait_until(
        lambda: (
            len(listener_connections(router)) == len(registry.tunnels())
            and registry.statistics()["in_flight"] == 0
            and all(t.connection.open_streams == 0 for t in registry.tunnels())
        ),
        timeout=2,
    )


@asynccontextmanager
async def router_with_real_backend(**overrides: object) -> AsyncIterator[RunningRouter]:
    """A router plus one real backend (service "default") that the faults must not disturb."""
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, **overrides)
        await start_backend(nursery, make_hello_app("real"), router.tunnel)
        await router.wait_tunnels(1, "default", timeout=5)
        yield router
        nursery.cancel_scope.cancel()


async def wait_until(predicate: Callable[[], bool], timeout: float) -> float:
    start = trio.current_time()
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)
    return trio.current_time() - start


def fake_tunnels(router: RunningRouter) -> int:
    return router.tunnel_count("fake")


def listener_connections(router: RunningRouter) -> set[Connection]:
    return router.router.listener.connections


# -- 1. garbage on the tunnel port ---------------------------------------------------------


async def raw_exchange(router: RunningRouter, payload: bytes, timeout: float = 3) -> bytes:
    """Send ``payload`` on a fresh tunnel-port connection; everything received until EOF."""
    host, port = router.addresses.tunnel
    sock = await trio.open_tcp_stream(host, port)
    received = bytearray()
    try:
        if payload:
            await sock.send_all(payload)
        with trio.fail_after(timeout):
            while True:
                try:
                    data = await sock.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not data:
                    break
                received += data
    finally:
        await trio.aclose_forcefully(sock)
    return bytes(received)


@pytest.mark.timeout(15)
@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"\x00\x01\x02garbage\xff\xfe\r\n\r\n", b"400"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)) + b"\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"426"),
        (
            b"POST /.well-known/ptth HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
            b"Upgrade: reverse\r\nContent-Length: 0\r\n\r\n",
            b"400",
        ),  # no ALPN: h2
    ],
    ids=["garbage", "tls-hello", "plain-get", "no-alpn"],
)
async def test_garbage_handshake_is_refused_and_closed(payload: bytes, status: bytes) -> None:
    async with router_with_real_backend(handshake_timeout=0.5) as router:
        start = trio.current_time()
        answer = await raw_exchange(router, payload)
        assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer[:200]
        assert b"connection: close" in answer.lower()
        assert trio.current_time() - start < 1.0
        assert router.tunnel_count() == 1
        await assert_healthy(router)


@pytest.mark.timeout(15)
async def test_silent_connection_gets_408_at_handshake_timeout() -> None:
    # Issue 10: the deadline answers 408 with a reason (it was a silent close).
    async with router_with_real_backend(handshake_timeout=0.5) as router:
        start = trio.current_time()
        answer = await raw_exchange(router, b"", timeout=3)
        elapsed = trio.current_time() - start
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert answer.endswith(b"no complete handshake within 0.5 s\n"), answer
        assert 0.4 <= elapsed < 1.5, elapsed
        # A partial head that never completes gets the same deadline.
        start = trio.current_time()
        answer = await raw_exchange(router, b"POST /.well-known/ptth HTTP/1.1\r\nHost:", timeout=3)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert 0.4 <= trio.current_time() - start < 1.5
        assert router.router.listener.admission.pending == 0
        await assert_healthy(router)


@pytest.mark.timeout(15)
async def test_oversized_head_gets_431() -> None:
    async with router_with_real_backend(handshake_timeout=2) as router:
        head = (
            b"POST /.well-known/ptth HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
            b"Upgrade: reverse\r\nALPN: h2\r\nX-Pad: " + b"a" * (20 * 1024)
        )
        start = trio.current_time()
        answer = await raw_exchange(router, head)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert trio.current_time() - start < 1.0
        # Also as one huge header line that *is* terminated.
        answer = await raw_exchange(router, head + b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        await assert_healthy(router)


# -- 2. a backend process killed mid-response ----------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2"])
async def test_backend_sigkill_mid_response_aborts_user_response(http2: bool) -> None:
    async with router_with_real_backend() as router:
        with spawn(
            "-m",
            "ptth",
            "tests.e2e.apps_faults:app",
            "--router",
            router.tunnel,
            "--service",
            "faulty",
            "--host",
            "faulty.test",
        ) as proc:
            await router.wait_tunnels(1, "faulty", timeout=15)
            async with httpx.AsyncClient(
                base_url=router.url, http1=not http2, http2=http2, timeout=10
            ) as client:
                received = 0
                async with client.stream("GET", "/big", headers={"host": "faulty.test"}) as resp:
                    assert resp.status_code == 200
                    assert resp.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
                    chunks = resp.aiter_raw()
                    with trio.fail_after(5):
                        while received < FIRST_PART:
                            received += len(await chunks.__anext__())
                    proc.send_signal(signal.SIGKILL)
                    killed_at = trio.current_time()
                    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                        with trio.fail_after(2):
                            async for chunk in chunks:
                                received += len(chunk)
                    assert trio.current_time() - killed_at < 2
                assert received == FIRST_PART  # never a clean-looking short body
                # The dead tunnel is gone at once: its host answers 502/503 now, quickly.
                await wait_until(lambda: router.tunnel_count("faulty") == 0, timeout=1)
                start = trio.current_time()
                response = await client.get("/next", headers={"host": "faulty.test"})
                assert response.status_code in (502, 503)
                assert trio.current_time() - start < 1
        await assert_healthy(router, requests=5)


# -- 3. tunnel dies before response headers ------------------------------------------------


@pytest.mark.timeout(15)
async def test_tunnel_lost_before_headers_gives_502() -> None:
    async with router_with_real_backend() as router, trio.open_nursery() as nursery:
        async with httpx.AsyncClient(base_url=router.url, timeout=5) as client:
            async with fake_backend(router) as fake:
                pending = request_in_background(nursery, client, "/x", FAKE)
                await fake.wait_request()
                await trio.aclose_forcefully(fake.sock)
                await pending.wait(2)
            assert pending.status == 502, pending
            assert b"tunnel lost" in pending.body
            await wait_until(lambda: fake_tunnels(router) == 0, timeout=1)
        await assert_healthy(router)


@pytest.mark.timeout(15)
async def test_stream_reset_before_headers_gives_502() -> None:
    async with router_with_real_backend() as router, trio.open_nursery() as nursery:
        async with (
            httpx.AsyncClient(base_url=router.url, timeout=5) as client,
            fake_backend(router) as fake,
        ):
            pending = request_in_background(nursery, client, "/x", FAKE)
            stream_id = await fake.wait_request()
            fake.conn.reset_stream(stream_id, ErrorCodes.INTERNAL_ERROR)
            await fake.flush()
            await pending.wait(2)
            assert pending.status == 502, pending
            # A stream reset is not a tunnel failure: the tunnel stays registered.
            assert fake_tunnels(router) == 1
        await assert_healthy(router)


# -- 4. garbage after the handshake --------------------------------------------------------


@pytest.mark.timeout(15)
async def test_garbage_instead_of_h2_preface_closes_tunnel() -> None:
    async with router_with_real_backend() as router:
        async with fake_backend(router, h2_preface=False) as fake:
            await fake.send(b"this is not an HTTP/2 server preface\r\n" * 4)
            assert await fake.wait_closed(1) < 1
            assert fake.received.startswith(PREFACE)  # the router did start HTTP/2
            assert fake_tunnels(router) == 0
            # Nothing of that connection is left behind in the listener (only the real one).
            await wait_until(lambda: len(listener_connections(router)) == 1, timeout=1)
        await assert_healthy(router)


@pytest.mark.timeout(15)
async def test_garbage_mid_tunnel_fails_request_with_502() -> None:
    async with router_with_real_backend() as router, trio.open_nursery() as nursery:
        async with httpx.AsyncClient(base_url=router.url, timeout=5) as client:
            async with fake_backend(router) as fake:
                pending = request_in_background(nursery, client, "/x", FAKE)
                await fake.wait_request()
                await fake.send(b"\xff" * 64 + b"garbage garbage garbage")
                assert await fake.wait_closed(1) < 1
                await pending.wait(2)
                assert pending.status == 502, pending
                codes = fake.goaway_codes()
                assert codes and codes[-1] in (
                    ErrorCodes.PROTOCOL_ERROR,
                    ErrorCodes.FRAME_SIZE_ERROR,
                ), codes
            await wait_until(lambda: fake_tunnels(router) == 0, timeout=1)
        await assert_healthy(router)


# -- 5. server push ------------------------------------------------------------------------


@pytest.mark.timeout(15)
async def test_push_promise_closes_tunnel_with_protocol_error() -> None:
    async with router_with_real_backend() as router, trio.open_nursery() as nursery:
        async with httpx.AsyncClient(base_url=router.url, timeout=5) as client:
            async with fake_backend(router) as fake:
                pending = request_in_background(nursery, client, "/x", FAKE)
                stream_id = await fake.wait_request()
                # h2 itself refuses to push when the peer set ENABLE_PUSH=0: build the frame.
                block = fake.conn.encoder.encode(
                    [
                        (b":method", b"GET"),
                        (b":scheme", b"http"),
                        (b":path", b"/pushed"),
                        (b":authority", FAKE_HOST.encode()),
                    ]
                )
                push = PushPromiseFrame(stream_id, promised_stream_id=2, data=block)
                push.flags.add("END_HEADERS")
                await fake.send(push.serialize())
                assert await fake.wait_closed(1) < 1
                await pending.wait(2)
                assert pending.status == 502, pending
                assert fake.goaway_codes()[-1:] == [ErrorCodes.PROTOCOL_ERROR]
            await wait_until(lambda: fake_tunnels(router) == 0, timeout=1)
        await assert_healthy(router)


# -- 6. PING flood -------------------------------------------------------------------------


@pytest.mark.timeout(15)
@pytest.mark.parametrize("batch", [5000, 100], ids=["one-burst", "batches-of-100"])
async def test_ping_flood_closes_tunnel_with_enhance_your_calm(batch: int) -> None:
    async with router_with_real_backend() as router, trio.open_nursery() as nursery:
        async with httpx.AsyncClient(base_url=router.url, timeout=5) as client:
            async with fake_backend(router) as fake:
                bystanders = [request_in_background(nursery, client, f"/b{i}") for i in range(20)]
                try:
                    for first in range(0, 5000, batch):
                        for i in range(first, first + batch):
                            fake.conn.ping(i.to_bytes(8, "big"))
                        await fake.flush()
                        await trio.sleep(0.001)
                except (
                    trio.BrokenResourceError,
                    trio.ClosedResourceError,
                    h2.exceptions.ProtocolError,  # our h2 already read the router's GOAWAY
                ):
                    pass  # the router closed before the flood was over
                assert await fake.wait_closed(3) < 3
                assert fake.goaway_codes()[-1:] == [ErrorCodes.ENHANCE_YOUR_CALM]
                acks = [f for f in fake.frames() if f.type == 0x6 and "ACK" in f.flags]
                assert len(acks) <= 1000  # the budget (1000 per window) held
                for pending in bystanders:
                    await pending.wait(5)
                    assert pending.status == 200, pending
            await wait_until(lambda: fake_tunnels(router) == 0, timeout=1)
        await assert_healthy(router)


# -- 7. empty DATA frames ------------------------------------------------------------------


@pytest.mark.timeout(15)
async def test_empty_data_flood_closes_tunnel() -> None:
    async with router_with_real_backend() as router, trio.open_nursery() as nursery:
        async with httpx.AsyncClient(base_url=router.url, timeout=5) as client:
            async with fake_backend(router) as fake:

                async def respond_then_flood() -> None:
                    stream_id = await fake.wait_request()
                    fake.conn.send_headers(stream_id, [(b":status", b"200")])
                    fake.conn.send_data(stream_id, b"first")
                    await fake.flush()
                    await trio.sleep(0.2)  # let the response start reach the user
                    frame = DataFrame(stream_id, data=b"").serialize()
                    try:
                        await fake.send(frame * 20_000)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass

                nursery.start_soon(respond_then_flood)
                async with client.stream("GET", "/x", headers=FAKE) as response:
                    assert response.status_code == 200
                    # The response had started: the user sees it aborted, not completed.
                    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                        with trio.fail_after(2):
                            await response.aread()
                assert await fake.wait_closed(1) < 1
                assert fake.goaway_codes()[-1:] == [ErrorCodes.ENHANCE_YOUR_CALM]
            await wait_until(lambda: fake_tunnels(router) == 0, timeout=1)
        await assert_healthy(router)


@pytest.mark.timeout(15)
@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2"])
async def test_empty_data_frame_mid_body_does_not_end_response(http2: bool) -> None:
    """An empty DATA frame without END_STREAM is legal and must not end the user's body."""
    async with router_with_real_backend() as router:
        async with (
            trio.open_nursery() as nursery,
            httpx.AsyncClient(
                base_url=router.url, http1=not http2, http2=http2, timeout=5
            ) as client,
            fake_backend(router) as fake,
        ):
            pending = request_in_background(nursery, client, "/x", FAKE)
            stream_id = await fake.wait_request()
            fake.conn.send_headers(stream_id, [(b":status", b"200")])
            fake.conn.send_data(stream_id, b"abc")
            await fake.flush()
            await trio.sleep(0.1)  # the router relays "abc" and waits for more
            fake.conn.send_data(stream_id, b"")
            await fake.flush()
            await trio.sleep(0.1)
            fake.conn.send_data(stream_id, b"def", end_stream=True)
            await fake.flush()
            await pending.wait(2)
            assert (pending.status, pending.body) == (200, b"abcdef"), pending
            assert fake_tunnels(router) == 1
        await assert_healthy(router)


# -- 8. a backend that goes silent ---------------------------------------------------------


@pytest.mark.timeout(15)
async def test_silent_backend_removed_by_keepalive() -> None:
    async with router_with_real_backend(ping_interval=0.2, dead_after=0.6) as router:
        async with fake_backend(router) as fake:
            fake.feed = (
                False  # from now on: read (so the router's writes never block), never answer
            )
            elapsed = await wait_until(lambda: fake_tunnels(router) == 0, timeout=2)
            assert elapsed < 2
            pings = [f for f in fake.frames() if f.type == 0x6 and "ACK" not in f.flags]
            assert pings, "the router never pinged the silent tunnel"
            await fake.wait_closed(1)
        # The real backend answers the router's pings and stays registered.
        await trio.sleep(1)
        assert router.tunnel_count("default") == 1
        await assert_healthy(router)


# -- 9. bad response headers ---------------------------------------------------------------

BAD_RESPONSES: dict[str, RequestHeaders] = {
    "connection-header": [(b":status", b"200"), (b"connection", b"close")],
    "uppercase-name": [(b":status", b"200"), (b"X-Upper", b"1")],
    "missing-status": [(b"content-type", b"text/plain")],
    "non-numeric-status": [(b":status", b"abc")],
    "request-pseudo-header": [(b":status", b"200"), (b":path", b"/")],
    "conflicting-content-length": [
        (b":status", b"200"),
        (b"content-length", b"1"),
        (b"content-length", b"2"),
    ],
    "cr-lf-in-value": [(b":status", b"200"), (b"x-evil", b"a\r\nSet-Cookie: x=1")],
}


@pytest.mark.timeout(15)
@pytest.mark.parametrize("name", list(BAD_RESPONSES))
async def test_bad_response_headers_give_502(name: str) -> None:
    async with router_with_real_backend() as router, trio.open_nursery() as nursery:
        async with (
            httpx.AsyncClient(base_url=router.url, timeout=5) as client,
            fake_backend(router, validate=False) as fake,
        ):
            pending = request_in_background(nursery, client, "/x", FAKE)
            stream_id = await fake.wait_request()
            fake.conn.send_headers(stream_id, BAD_RESPONSES[name], end_stream=True)
            await fake.flush()
            await pending.wait(2)
            assert pending.status == 502, pending
            assert pending.headers is not None and "set-cookie" not in pending.headers
        await assert_healthy(router)


# -- 10. router restart --------------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_backend_follows_router_restart_on_same_port() -> None:
    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as nursery_a:
            router_a = await start_router(nursery_a)
            backend = await start_backend(nursery, make_hello_app("real"), router_a.tunnel)
            await router_a.wait_tunnels(1, timeout=5)
            await assert_healthy(router_a, requests=1)
            router_a.scope.cancel()  # router A dies (not a drain): its tunnel drops
        stopped = trio.current_time()
        router_b = await start_router(nursery, tunnel=router_a.tunnel)
        assert router_b.addresses.tunnel == router_a.addresses.tunnel
        assert router_b.url != router_a.url
        await router_b.wait_tunnels(1, timeout=2)
        assert trio.current_time() - stopped < 2
        await assert_healthy(router_b)
        assert backend.error is None
        nursery.cancel_scope.cancel()


# -- 11. the router kills a tunnel ---------------------------------------------------------


async def _kill_with_goaway(connection: Connection) -> None:
    await connection.aclose()


async def _kill_abruptly(connection: Connection) -> None:
    await connection.abort()


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "kill", [_kill_with_goaway, _kill_abruptly], ids=["goaway-close", "socket-abort"]
)
async def test_backend_reconnects_after_router_kills_its_tunnel(
    kill: Callable[[Connection], Awaitable[None]],
) -> None:
    async with router_with_real_backend() as router:
        seen = {t.tunnel_id for t in router.router.registry.tunnels()}
        for _ in range(3):  # backoff grows (0.1, 0.2, 0.4 s ceilings) but stays quick
            (connection,) = list(listener_connections(router))
            killed = time.monotonic()
            await kill(connection)
            await wait_until(
                lambda: (
                    router.tunnel_count() == 1
                    and router.router.registry.tunnels()[0].tunnel_id not in seen
                ),
                timeout=2,
            )
            assert time.monotonic() - killed < 2
            seen.add(router.router.registry.tunnels()[0].tunnel_id)
            await assert_healthy(router, requests=2)

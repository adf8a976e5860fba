"""Hostile users on the native front end (router/frontend/: h11 for HTTP/1.1, the ptth engine
for h2c with prior knowledge), each against a real router on 127.0.0.1 with a bystander.

Every test runs a backend and a BYSTANDER, a second user (from 127.0.0.2, so that per-client
limits count it apart from the attacker on 127.0.0.1) who makes GET requests throughout: all of
them must be 200 and their p99 is printed (bounded only generously, 2 s). After each attack a
fresh request must still be served (the router survived).

1. Frame floods, 100,000 frames each on one h2c connection (SETTINGS, PING, connection-level
   WINDOW_UPDATE, empty DATA on an open stream, PRIORITY on many stream ids): the router answers
   GOAWAY ENHANCE_YOUR_CALM well before the end (ptth/engine/budget.py; the client waits for a
   marker PING's ACK after each batch of 1,000, so the count sent is the count processed,
   within a batch) and closes the connection.
2. Crash shapes: a body over ``max_body_size`` (413, the connection keeps serving), random bytes
   after the preface, a malformed SETTINGS frame (FRAME_SIZE_ERROR), 5,000 frames of an unknown
   type, invalid HPACK, a CONTINUATION flood, a 1,000-PRIORITY burst (the old front end died).
3. ``max_requests_per_connection``: 5,000 GETs, 50 in flight, each connection drained with a
   graceful GOAWAY; the client retries only what the server refused, and nothing is lost.
4. Slow bodies: 100 POSTs dripping 1 byte per second are cut (408 or a reset) by the minimum
   body rate while the bystander is served.
5. Connection caps, per client and router-wide.
6. Deadlines: request head, request body idle, keep-alive idle.

Reused from test_user_attacks: ``p99``, ``rss_mib``, ``wait_until``, ``request_headers``.
Every number a test measures is printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import random
import socket
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h11
import hpack
import httpx
import pytest
import trio
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from ptth.types import Receive, Scope, Send
from tests.e2e.test_user_attacks import p99, request_headers, wait_until
from tests.support import RunningRouter, read_body, serve_lifespan, start_backend, start_router

MiB = 1024 * 1024
ATTACKER = "127.0.0.1"
BYSTANDER = "127.0.0.2"  # another client as far as per-client limits go; still loopback
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_WINDOW = 2**31 - 1
NO_ERROR = h2.errors.ErrorCodes.NO_ERROR
PROTOCOL_ERROR = h2.errors.ErrorCodes.PROTOCOL_ERROR
FRAME_SIZE_ERROR = h2.errors.ErrorCodes.FRAME_SIZE_ERROR
REFUSED_STREAM = h2.errors.ErrorCodes.REFUSED_STREAM
COMPRESSION_ERROR = h2.errors.ErrorCodes.COMPRESSION_ERROR
ENHANCE_YOUR_CALM = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
CLOSED = (trio.BrokenResourceError, trio.ClosedResourceError)


def lone(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception inside nested single-member groups (nurseries wrap a failed assert
    once per level), or the group itself when it holds several."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


@asynccontextmanager
async def unwrapped() -> AsyncIterator[None]:
    """Re-raise a lone exception out of the nurseries inside, so that a failed assert reads as
    one."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaf = lone(group)
        if leaf is group:
            raise
        raise leaf from None


# -- the backend ----------------------------------------------------------------------------


@dataclass
class App:
    """``/fast`` answers "ok" at once; ``/echo`` reads the whole body and answers its length;
    anything else holds until the user goes away. Counts the requests running at the app."""

    active: int = 0
    peak: int = 0
    started: int = 0

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
            if scope["path"] == "/echo":
                body = await read_body(receive)
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": str(len(body)).encode()})
                return
            while (await receive())["type"] != "http.disconnect":
                pass
            await send({"type": "http.response.start", "status": 499, "headers": []})
        finally:
            self.active -= 1


@asynccontextmanager
async def routed(**overrides: Any) -> AsyncIterator[tuple[RunningRouter, App]]:
    """A router (``overrides`` are RouterConfig fields) with one backend running ``App``."""
    app = App()
    async with unwrapped(), trio.open_nursery() as nursery:
        router = await start_router(nursery, **overrides)
        await start_backend(nursery, app, router.tunnel)
        await router.wait_tunnels(1)
        yield router, app
        nursery.cancel_scope.cancel()


# -- the bystander --------------------------------------------------------------------------


@dataclass
class Bystander:
    """GET /fast every 10 ms over one kept-alive HTTP/1.1 connection from 127.0.0.2."""

    url: str
    statuses: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    async def run(self, stop: trio.Event) -> None:
        transport = httpx.AsyncHTTPTransport(local_address=BYSTANDER)
        async with httpx.AsyncClient(base_url=self.url, transport=transport, timeout=10) as client:
            while not stop.is_set():
                began = time.perf_counter()
                try:
                    response = await client.get("/fast")
                    self.statuses.append(response.status_code)
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                self.latencies.append(time.perf_counter() - began)
                await trio.sleep(0.01)

    def check(self, label: str) -> None:
        worst = max(self.latencies) if self.latencies else 0.0
        print(
            f"bystander ({label}): {len(self.statuses)} requests, "
            f"{self.statuses.count(200)} ok, {len(self.errors)} errors, "
            f"p99 {p99(self.latencies) * 1000:.0f} ms, max {worst * 1000:.0f} ms"
        )
        assert self.errors == []
        assert self.statuses and set(self.statuses) == {200}, Counter(self.statuses)
        assert p99(self.latencies) < 2.0


@asynccontextmanager
async def bystander(router: RunningRouter) -> AsyncIterator[Bystander]:
    watcher = Bystander(router.url)
    stop = trio.Event()
    async with unwrapped(), trio.open_nursery() as nursery:
        nursery.start_soon(watcher.run, stop)
        await wait_until(lambda: len(watcher.latencies) >= 3, timeout=10)
        try:
            yield watcher
        finally:
            stop.set()


async def assert_router_alive(router: RunningRouter) -> None:
    """A fresh HTTP/1.1 and a fresh h2c request, each on a new connection, get 200."""
    async with httpx.AsyncClient(base_url=router.url, timeout=5) as client:
        response = await client.get("/fast")
        assert response.status_code == 200
    async with RawH2.open(router.addresses.http) as conn:
        reply = await conn.get(b"/fast")
        assert (reply.status, bytes(reply.body)) == (200, b"ok"), reply


# -- a raw h2c client: frames written by hand (hyperframe), read with hpack only ------------


@dataclass
class Reply:
    status: int | None = None
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: int | None = None

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None


def raw_frame(kind: int, flags: int, stream_id: int, payload: bytes, length: int | None = None):
    """Any frame, lies included (``length`` other than the payload's, a reserved bit...)."""
    size = len(payload) if length is None else length
    header = size.to_bytes(3, "big") + bytes([kind, flags]) + stream_id.to_bytes(4, "big")
    return header + payload


class RawH2:
    """One h2c connection (prior knowledge) written as raw frames, so that it can send what h2
    refuses to. The reader parses the server's frames itself (hpack for header blocks), ACKs
    SETTINGS and PINGs, and records GOAWAYs, resets and responses. Our receive windows are
    opened to the maximum at once: no WINDOW_UPDATE is ever owed."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.goaways: list[tuple[int, int]] = []  # (error code, last stream id)
        self.replies: dict[int, Reply] = {}
        self.received: Counter[int] = Counter()  # frames by type
        self.acks: set[bytes] = set()
        self.closed = trio.Event()
        self.close_note = ""
        self.broken: str | None = None  # why a write failed
        self.next_stream = 1
        self._changed = trio.Event()
        self._lock = trio.Lock()
        self._outbox = bytearray()
        self._outbox_ready = trio.Event()
        self._block = bytearray()
        self._block_stream = 0
        self._block_ends = False
        self._marker = 0

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        addr: tuple[str, int],
        *,
        preface: bool = True,
        big_window: bool = True,
        sndbuf: int | None = None,
        local: str | None = None,
    ) -> AsyncIterator[RawH2]:
        sock = trio.socket.socket()
        try:
            if sndbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            if local is not None:
                await sock.bind((local, 0))
            await sock.connect(addr)
        except BaseException:
            sock.close()
            raise
        stream = trio.SocketStream(sock)
        conn = cls(stream)
        try:
            async with unwrapped(), trio.open_nursery() as nursery:
                nursery.start_soon(conn._read)
                nursery.start_soon(conn._flush_outbox)
                if preface:
                    await conn.send(conn.preface(big_window))
                try:
                    yield conn
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            await stream.aclose()

    @staticmethod
    def preface(big_window: bool = True) -> bytes:
        """Without ``big_window`` the connection's window stays at 65,535: room for a flood of
        WINDOW_UPDATEs that must not overflow 2^31-1 (that would be a FLOW_CONTROL_ERROR)."""
        settings = SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: MAX_WINDOW})
        window = WindowUpdateFrame(0, window_increment=MAX_WINDOW - 65535)
        return PREFACE + settings.serialize() + (window.serialize() if big_window else b"")

    # -- writing

    async def send(self, data: bytes) -> bool:
        """Write ``data`` (after any queued ACKs); False once the connection is broken."""
        if self.broken is not None:
            return False
        async with self._lock:
            out = bytes(self._outbox) + data
            self._outbox.clear()
            try:
                await self.stream.send_all(out)
            except CLOSED as exc:
                self.broken = repr(exc)
                self._wake()
                return False
        return True

    async def _flush_outbox(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready = trio.Event()
            if self._outbox:
                await self.send(b"")

    def _queue(self, data: bytes) -> None:
        self._outbox += data
        self._outbox_ready.set()

    # -- reading

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Whether ``predicate()`` held within ``timeout`` s (checked whenever a frame came)."""
        with trio.move_on_after(timeout):
            while not predicate():
                changed = self._changed
                if self.closed.is_set():
                    return predicate()
                await changed.wait()
            return True
        return False

    @property
    def ended(self) -> bool:
        """Closed by the server, or told to go away with an error."""
        return self.closed.is_set() or any(code != NO_ERROR for code, _ in self.goaways)

    async def _read(self) -> None:
        buf = bytearray()
        try:
            while data := await self.stream.receive_some(65536):
                buf += data
                while len(buf) >= 9:
                    length = int.from_bytes(buf[:3], "big")
                    if len(buf) < 9 + length:
                        break
                    kind, flags = buf[3], buf[4]
                    stream_id = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                    payload = bytes(buf[9 : 9 + length])
                    del buf[: 9 + length]
                    self._on_frame(kind, flags, stream_id, payload)
                self._wake()
            self.close_note = "EOF"
        except CLOSED as exc:
            self.close_note = repr(exc)
        except hpack.HPACKError as exc:  # the server's header blocks must decode
            self.close_note = f"bad HPACK from the server: {exc!r}"
        finally:
            self.closed.set()
            self._wake()

    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        self.received[kind] += 1
        if kind == 0x0:  # DATA
            if flags & 0x8:
                payload = payload[1 : len(payload) - payload[0]]
            reply = self.replies.setdefault(stream_id, Reply())
            reply.body += payload
            reply.ended = reply.ended or bool(flags & 0x1)
        elif kind in (0x1, 0x9):  # HEADERS, CONTINUATION
            if kind == 0x1:
                if flags & 0x8:
                    payload = payload[1 : len(payload) - payload[0]]
                if flags & 0x20:
                    payload = payload[5:]
                self._block = bytearray(payload)
                self._block_stream = stream_id
                self._block_ends = bool(flags & 0x1)
            else:
                self._block += payload
            if flags & 0x4:
                self._on_headers(self._block_stream, self.decoder.decode(bytes(self._block)))
        elif kind == 0x3:  # RST_STREAM
            self.replies.setdefault(stream_id, Reply()).reset = int.from_bytes(payload, "big")
        elif kind == 0x4 and not flags & 0x1:  # SETTINGS
            self._queue(SettingsFrame(0, flags=["ACK"]).serialize())
        elif kind == 0x6:  # PING
            if flags & 0x1:
                self.acks.add(payload)
            else:
                self._queue(PingFrame(0, flags=["ACK"], opaque_data=payload).serialize())
        elif kind == 0x7:  # GOAWAY
            last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            self.goaways.append((int.from_bytes(payload[4:8], "big"), last))

    def _on_headers(self, stream_id: int, headers: list[tuple[str, str]]) -> None:
        reply = self.replies.setdefault(stream_id, Reply())
        status = dict(headers).get(":status")
        if status is not None and not status.startswith("1"):
            reply.status = int(status)
        reply.ended = reply.ended or self._block_ends

    # -- requests

    def headers_frame(
        self,
        path: bytes,
        method: bytes = b"GET",
        *,
        end_stream: bool = True,
        extra: tuple[tuple[bytes, bytes], ...] = (),
    ) -> tuple[int, bytes]:
        """A new stream id and its HEADERS frame (encode and send in the same order)."""
        stream_id = self.next_stream
        self.next_stream += 2
        frame = HeadersFrame(stream_id, data=self.encoder.encode(request_headers(path, method)))
        if extra:
            frame.data += self.encoder.encode(list(extra))
        frame.flags.add("END_HEADERS")
        if end_stream:
            frame.flags.add("END_STREAM")
        self.replies[stream_id] = Reply()
        return stream_id, frame.serialize()

    async def get(self, path: bytes = b"/fast", timeout: float = 5) -> Reply:
        stream_id, frame = self.headers_frame(path)
        await self.send(frame)
        reply = self.replies[stream_id]
        await self.wait(lambda: reply.done, timeout)
        return reply

    async def sync(self, timeout: float = 10) -> bool:
        """PING with a fresh marker; True once the server ACKed it (it processed all before)."""
        self._marker += 1
        marker = b"sync" + self._marker.to_bytes(4, "big")
        if not await self.send(PingFrame(0, opaque_data=marker).serialize()):
            return False
        return await self.wait(lambda: marker in self.acks or self.ended, timeout)


# -- an h2-library client, for requests that need flow control on our side -----------------


class GracefulH2(h2.connection.H2Connection):
    """h2's client, except that a NO_ERROR GOAWAY does not end the connection (RFC 9113 §6.8:
    streams up to its last stream id still complete; h2 would refuse their frames)."""

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Any], list[Any]]:
        if frame.error_code != NO_ERROR:
            return super()._receive_goaway_frame(frame)  # type: ignore[no-any-return]
        event = h2.events.ConnectionTerminated()
        event.error_code = NO_ERROR
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


class H2Client:
    """One h2c connection driven by h2: a reader task turns frames into ``Reply`` objects,
    acknowledges received data and writes whatever h2 queued."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = GracefulH2(config)
        self.conn.initiate_connection()
        self.replies: dict[int, Reply] = {}
        self.goaways: list[tuple[int, int]] = []
        self.closed = trio.Event()
        self.close_note = ""
        self.settings = trio.Event()  # the server's SETTINGS arrived
        self._changed = trio.Event()
        self._lock = trio.Lock()

    @classmethod
    @asynccontextmanager
    async def open(cls, addr: tuple[str, int]) -> AsyncIterator[H2Client]:
        stream = await trio.open_tcp_stream(*addr)
        client = cls(stream)
        try:
            async with unwrapped(), trio.open_nursery() as nursery:
                nursery.start_soon(client._read)
                await client.flush()
                try:
                    yield client
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            await stream.aclose()

    @property
    def goaway_last(self) -> int | None:
        return min(last for _, last in self.goaways) if self.goaways else None

    @property
    def max_streams(self) -> int:
        return int(self.conn.remote_settings.max_concurrent_streams)

    async def flush(self) -> None:
        async with self._lock:
            data = self.conn.data_to_send()
            if data and not self.closed.is_set():
                try:
                    await self.stream.send_all(data)
                except CLOSED as exc:
                    self.close_note = f"write failed: {exc!r}"
                    self.closed.set()
                    self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with trio.move_on_after(timeout):
            while not predicate():
                changed = self._changed
                if self.closed.is_set():
                    return predicate()
                await changed.wait()
            return True
        return False

    def request(
        self, path: bytes, method: bytes = b"GET", *, end_stream: bool = True, extra: Any = ()
    ) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        headers = request_headers(path, method) + list(extra)
        self.conn.send_headers(stream_id, headers, end_stream=end_stream)
        self.replies[stream_id] = Reply()
        return stream_id

    async def _read(self) -> None:
        try:
            while data := await self.stream.receive_some(65536):
                for event in self.conn.receive_data(data):
                    self._on_event(event)
                await self.flush()
                self._wake()
            self.close_note = "EOF"
        except CLOSED as exc:
            self.close_note = repr(exc)
        except h2.exceptions.ProtocolError as exc:
            self.close_note = f"h2 refused what the server sent: {exc!r}"
        finally:
            self.closed.set()
            self._wake()

    def _on_event(self, event: h2.events.Event) -> None:
        stream_id = getattr(event, "stream_id", None)
        reply = self.replies.setdefault(stream_id, Reply()) if stream_id else None
        if isinstance(event, h2.events.ResponseReceived):
            assert reply is not None
            reply.status = int(dict(event.headers)[b":status"])
        elif isinstance(event, h2.events.DataReceived):
            assert reply is not None
            reply.body += event.data
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            assert reply is not None
            reply.ended = True
        elif isinstance(event, h2.events.StreamReset):
            assert reply is not None
            reply.reset = int(event.error_code)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaways.append((int(event.error_code), int(event.last_stream_id)))
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.settings.set()


# -- a raw HTTP/1.1 client (h11) --------------------------------------------------------------


class H1:
    """One HTTP/1.1 connection from ``local``; ``get`` returns the status, or None if the
    server closed the connection (or reset it) instead of answering."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, addr: tuple[str, int], local: str = ATTACKER) -> H1:
        sock = trio.socket.socket()
        try:
            await sock.bind((local, 0))
            await sock.connect(addr)
        except BaseException:
            sock.close()
            raise
        return cls(trio.SocketStream(sock))

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def get(self, path: str = "/fast", timeout: float = 5) -> int | None:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        request = h11.Request(method="GET", target=path, headers=[("Host", "app.test")])
        try:
            await self.stream.send_all(self.conn.send(request) + self.conn.send(h11.EndOfMessage()))
        except CLOSED:
            return None
        status: int | None = None
        with trio.fail_after(timeout):
            while True:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    try:
                        data = await self.stream.receive_some(65536)
                    except CLOSED:
                        return None
                    try:
                        self.conn.receive_data(data)
                    except h11.RemoteProtocolError:
                        return None  # closed before a whole response
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.EndOfMessage):
                    return status
                elif isinstance(event, h11.ConnectionClosed):
                    return None


async def closed_within(stream: trio.SocketStream, timeout: float) -> tuple[float | None, bytes]:
    """Read until the server closes: (seconds it took or None on timeout, what it sent)."""
    start = trio.current_time()
    received = b""
    with trio.move_on_after(timeout):
        try:
            while data := await stream.receive_some(65536):
                received += data
        except CLOSED:
            pass
        return trio.current_time() - start, received
    return None, received


# -- 1. frame floods ------------------------------------------------------------------------

FLOOD_FRAMES = 100_000
BATCH = 1000


def _flood(kind: str) -> Callable[[int], bytes]:
    """The ``i``-th frame of each flood."""
    settings = SettingsFrame(0).serialize()
    window = WindowUpdateFrame(0, window_increment=1).serialize()
    empty = DataFrame(1).serialize()  # on the POST opened first, which never ends
    floods: dict[str, Callable[[int], bytes]] = {
        "SETTINGS": lambda i: settings,
        "PING": lambda i: PingFrame(0, opaque_data=i.to_bytes(8, "big")).serialize(),
        "WINDOW_UPDATE": lambda i: window,
        "DATA": lambda i: empty,
        "PRIORITY": lambda i: PriorityFrame(
            3 + 2 * i, depends_on=0, stream_weight=i % 256
        ).serialize(),
    }
    return floods[kind]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["SETTINGS", "PING", "WINDOW_UPDATE", "DATA", "PRIORITY"])
async def test_a_frame_flood_is_cut_with_enhance_your_calm(kind: str) -> None:
    make = _flood(kind)
    async with routed() as (router, _), bystander(router) as watcher:
        big_window = kind != "WINDOW_UPDATE"
        async with RawH2.open(router.addresses.http, big_window=big_window) as conn:
            assert await conn.sync(), "no PING ACK after the preface"
            if kind == "DATA":
                _, frame = conn.headers_frame(b"/echo", b"POST", end_stream=False)
                await conn.send(frame)
            sent = 0
            note = ""
            start = trio.current_time()
            while sent < FLOOD_FRAMES and not conn.goaways and not conn.ended:
                batch = b"".join(make(sent + i) for i in range(BATCH))
                if not await conn.send(batch):
                    break
                sent += BATCH
                if not await conn.sync():
                    note = f"no PING ACK within 10 s after {sent} frames"
                    break
            took = trio.current_time() - start
            closed = await conn.wait(lambda: conn.closed.is_set(), timeout=5)
        print(
            f"\n{kind} flood: {sent} frames written in {took:.2f} s; GOAWAYs {conn.goaways}; "
            f"connection closed: {closed} ({conn.close_note}; write: {conn.broken}); "
            f"frames from the router by type {dict(conn.received)} {note}"
        )
        watcher.check(f"{kind} flood")
        assert conn.goaways, "no GOAWAY"
        assert conn.goaways[-1][0] == ENHANCE_YOUR_CALM, conn.goaways
        assert sent <= FLOOD_FRAMES // 2, "the GOAWAY came late"
        assert closed, "the router did not close the connection after its GOAWAY"
        await assert_router_alive(router)


# -- 2. crash shapes ------------------------------------------------------------------------


async def post_big_body(client: H2Client, size: int, *, with_length: bool) -> tuple[int, Reply]:
    """POST ``size`` bytes to /echo as fast as the router's windows allow, stopping once the
    stream is answered or reset; returns the bytes written and the reply."""
    extra = [(b"content-length", str(size).encode())] if with_length else []
    stream_id = client.request(b"/echo", b"POST", end_stream=False, extra=extra)
    await client.flush()
    reply = client.replies[stream_id]
    written = 0
    with trio.fail_after(15):
        while written < size and not reply.done and not client.closed.is_set():
            room = min(
                client.conn.local_flow_control_window(stream_id),
                client.conn.max_outbound_frame_size,
                size - written,
            )
            if room <= 0:
                await client.wait(
                    lambda: reply.done or bool(client.conn.local_flow_control_window(stream_id)), 10
                )
                continue
            try:
                client.conn.send_data(stream_id, b"x" * room, end_stream=written + room == size)
            except h2.exceptions.StreamClosedError:
                break
            written += room
            await client.flush()
        await client.wait(lambda: reply.done, 10)
    return written, reply


async def twenty_gets(client: H2Client) -> list[int | None]:
    ids = [client.request(b"/fast") for _ in range(20)]
    await client.flush()
    await client.wait(lambda: all(client.replies[i].done for i in ids), 10)
    return [client.replies[i].status if client.replies[i].ended else None for i in ids]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "no-length"])
async def test_a_body_over_the_limit_gets_413_and_the_connection_lives(with_length: bool) -> None:
    async with routed(max_body_size=1024) as (router, _), bystander(router) as watcher:
        async with H2Client.open(router.addresses.http) as client:
            written, reply = await post_big_body(client, MiB, with_length=with_length)
            print(
                f"\nh2c POST of 1 MiB ({'with' if with_length else 'without'} content-length) "
                f"over max_body_size 1024: {written} bytes written, status {reply.status}, "
                f"ended {reply.ended}, reset {reply.reset}, connection: {client.close_note}"
            )
            assert reply.done, "the stream was neither answered nor reset"
            if with_length or reply.status is not None:
                assert reply.status == 413
            same = await twenty_gets(client)
        async with H2Client.open(router.addresses.http) as fresh:
            new = await twenty_gets(fresh)
        print(f"then 20 GETs on the same connection: {Counter(same)}, on a new one: {Counter(new)}")
        watcher.check("413")
        assert same == [200] * 20
        assert new == [200] * 20
        await assert_router_alive(router)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("seed", [0, 1, 2])
async def test_random_bytes_after_the_preface_end_the_connection(seed: int) -> None:
    junk = random.Random(seed).randbytes(4096)
    async with routed() as (router, _), bystander(router) as watcher:
        async with RawH2.open(router.addresses.http, preface=False) as conn:
            await conn.send(PREFACE + junk)
            closed = await conn.wait(lambda: conn.closed.is_set(), timeout=5)
        print(
            f"\nrandom bytes (seed {seed}, first frame header {junk[:9].hex()}): closed {closed} "
            f"({conn.close_note}), GOAWAYs {conn.goaways}"
        )
        watcher.check("random bytes")
        assert closed
        assert all(code != NO_ERROR for code, _ in conn.goaways)
        await assert_router_alive(router)


@pytest.mark.timeout(30)
async def test_a_malformed_settings_frame_is_a_frame_size_error() -> None:
    async with routed() as (router, _), bystander(router) as watcher:
        async with RawH2.open(router.addresses.http) as conn:
            assert await conn.sync()
            await conn.send(raw_frame(0x4, 0, 0, b"\x00\x04\x00\x00\xff\xff\x00"))  # 7 bytes
            closed = await conn.wait(lambda: conn.closed.is_set(), timeout=5)
        print(f"\nSETTINGS of 7 bytes: GOAWAYs {conn.goaways}, closed {closed} ({conn.close_note})")
        watcher.check("malformed SETTINGS")
        assert conn.goaways and conn.goaways[-1][0] == FRAME_SIZE_ERROR, conn.goaways
        assert closed
        await assert_router_alive(router)


@pytest.mark.timeout(30)
async def test_thousands_of_unknown_frames_are_bounded() -> None:
    # By hand: hyperframe's ExtensionFrame.serialize() writes a length of 0 whatever the body.
    frame = raw_frame(0xFA, 0, 0, b"unknown!")
    async with routed() as (router, _), bystander(router) as watcher:
        async with RawH2.open(router.addresses.http) as conn:
            assert await conn.sync()
            sent = 0
            start = trio.current_time()
            while sent < 5000 and not conn.ended:
                if not await conn.send(frame * 500):
                    break
                sent += 500
                if not await conn.sync():
                    break  # the router stopped answering PINGs: the asserts below say so
            took = trio.current_time() - start
            if conn.goaways:
                closed = await conn.wait(lambda: conn.closed.is_set(), timeout=5)
                after = None
            else:
                closed = False
                after = await conn.get()
        print(
            f"\n5,000 frames of type 0xfa: {sent} written in {took:.2f} s, GOAWAYs {conn.goaways}, "
            f"closed {closed}; a GET on the same connection afterwards: {after}"
        )
        watcher.check("unknown frames")
        if conn.goaways:
            assert conn.goaways[-1][0] == ENHANCE_YOUR_CALM, conn.goaways
            assert closed
        else:
            assert after is not None and after.status == 200  # ignored, as RFC 9113 §5.5 says
        await assert_router_alive(router)


BAD_HPACK = {
    "index-0": b"\x80",  # an indexed field with index 0
    "index-past-the-table": b"\xbe",  # index 62: the dynamic table is empty
    "huge-integer": b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f",
    "table-size-over-the-setting": b"\x3f\xe1\xff\xff\x0f",
    "truncated-literal": b"\x00\x7f\x05ab",
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("block", list(BAD_HPACK), ids=list(BAD_HPACK))
async def test_a_headers_frame_with_invalid_hpack_ends_the_connection(block: str) -> None:
    async with routed() as (router, _), bystander(router) as watcher:
        async with RawH2.open(router.addresses.http) as conn:
            assert await conn.sync()
            await conn.send(raw_frame(0x1, 0x5, 1, BAD_HPACK[block]))  # END_STREAM|END_HEADERS
            closed = await conn.wait(lambda: conn.closed.is_set(), timeout=5)
        print(f"\ninvalid HPACK ({block}): GOAWAYs {conn.goaways}, closed {closed}")
        watcher.check("invalid HPACK")
        # RFC 9113 §4.3 says COMPRESSION_ERROR; h2 reports PROTOCOL_ERROR: either ends it.
        assert conn.goaways and conn.goaways[-1][0] in (COMPRESSION_ERROR, PROTOCOL_ERROR)
        assert closed
        await assert_router_alive(router)


@pytest.mark.timeout(30)
async def test_a_continuation_flood_ends_the_connection() -> None:
    field_ = b"\x00\x07x-flood\x01a"  # a literal field, never indexed
    async with routed() as (router, app), bystander(router) as watcher:
        async with RawH2.open(router.addresses.http, sndbuf=8192) as conn:
            assert await conn.sync()
            start_block = conn.encoder.encode(request_headers(b"/fast"))
            await conn.send(raw_frame(0x1, 0x1, 1, start_block))  # END_STREAM, no END_HEADERS
            frame = ContinuationFrame(1, data=field_).serialize()
            sent = 0
            while sent < 10_000 and not conn.ended:
                if not await conn.send(frame * 100):
                    break
                sent += 100
                await trio.sleep(0)
            closed = await conn.wait(lambda: conn.closed.is_set(), timeout=5)
        print(
            f"\nCONTINUATION flood: {sent} frames written, GOAWAYs {conn.goaways}, closed {closed} "
            f"({conn.close_note}; write: {conn.broken}); requests at the app: {app.started}"
        )
        watcher.check("CONTINUATION flood")
        assert closed
        assert sent < 10_000, "all 10,000 CONTINUATION frames were taken"
        assert conn.goaways and conn.goaways[-1][0] != NO_ERROR, conn.goaways
        await assert_router_alive(router)


@pytest.mark.timeout(30)
async def test_a_burst_of_1000_priority_frames_is_harmless() -> None:
    async with routed() as (router, _), bystander(router) as watcher:
        async with RawH2.open(router.addresses.http) as conn:
            assert await conn.sync()
            burst = b"".join(
                PriorityFrame(3 + 2 * i, depends_on=0, stream_weight=16).serialize()
                for i in range(1000)
            )
            await conn.send(burst)
            synced = await conn.sync()
            conn.next_stream = 3 + 2 * 1000
            after = await conn.get()
        print(f"\n1,000 PRIORITY frames: synced {synced}, GOAWAYs {conn.goaways}, then GET {after}")
        watcher.check("PRIORITY burst")
        assert synced and not conn.goaways
        assert after.status == 200 and after.ended
        await assert_router_alive(router)


# -- 3. requests per connection ---------------------------------------------------------------


@dataclass
class Tally:
    pending: deque[int]
    ok: set[int] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    connections: int = 0
    drained: int = 0  # connections that got a NO_ERROR GOAWAY
    goaway_frames: int = 0
    refused: int = 0  # REFUSED_STREAM resets
    above_last: int = 0  # streams above the GOAWAY's last stream id


async def run_connection(addr: tuple[str, int], tally: Tally, in_flight: int) -> None:
    """Send requests from ``tally.pending`` on one connection until it goes away."""
    async with H2Client.open(addr) as client:
        tally.connections += 1
        with trio.move_on_after(5):
            await client.settings.wait()
        streams: dict[int, int] = {}  # stream id -> request index
        while True:
            changed = client._changed  # before anything that awaits: no wake-up is missed
            last = client.goaway_last
            for stream_id, index in list(streams.items()):
                reply = client.replies[stream_id]
                if last is not None and stream_id > last and not reply.ended:
                    tally.above_last += 1
                    tally.pending.append(streams.pop(stream_id))
                elif reply.reset is not None:
                    del streams[stream_id]
                    if reply.reset == REFUSED_STREAM:
                        tally.refused += 1
                        tally.pending.append(index)
                    else:
                        tally.failures.append(f"request {index}: stream reset {reply.reset}")
                elif reply.ended:
                    del streams[stream_id]
                    if (reply.status, bytes(reply.body)) == (200, b"ok"):
                        tally.ok.add(index)
                    else:
                        tally.failures.append(f"request {index}: {reply.status} {reply.body!r}")
            if client.closed.is_set():
                for stream_id, index in streams.items():
                    tally.failures.append(
                        f"request {index} (stream {stream_id}) cut by the close "
                        f"({client.close_note}, GOAWAYs {client.goaways})"
                    )
                break
            if client.goaways and not streams:
                break
            if not tally.pending and not streams:
                break
            cap = min(in_flight, client.max_streams)
            while tally.pending and len(streams) < cap and not client.goaways:
                streams[client.request(b"/fast")] = tally.pending.popleft()
            await client.flush()
            with trio.move_on_after(10) as idle:
                await changed.wait()
            if idle.cancelled_caught:
                tally.failures.append(f"{len(streams)} streams stalled for 10 s")
                break
        tally.goaway_frames += len(client.goaways)
        if client.goaways:
            if all(code == NO_ERROR for code, _ in client.goaways):
                tally.drained += 1
            else:
                tally.failures.append(f"GOAWAY with an error: {client.goaways}")


@pytest.mark.timeout(90)
async def test_requests_per_connection_are_drained_without_losing_any() -> None:
    total = 5000
    async with routed(max_requests_per_connection=1000) as (router, _):
        async with bystander(router) as watcher:
            tally = Tally(deque(range(total)))
            start = trio.current_time()
            with trio.move_on_after(70) as overall:  # below the pytest timeout: a clean report
                while tally.pending and tally.connections < 40 and len(tally.failures) < 20:
                    await run_connection(router.addresses.http, tally, in_flight=50)
            if overall.cancelled_caught:
                tally.failures.append(f"not done after 70 s: {len(tally.pending)} never sent")
            took = trio.current_time() - start
        print(
            f"\n{total} GETs, 50 in flight, max_requests_per_connection 1000: {len(tally.ok)} ok "
            f"in {took:.1f} s over {tally.connections} connections, {tally.drained} drained by "
            f"GOAWAY(NO_ERROR) ({tally.goaway_frames} GOAWAY frames), re-sent: {tally.refused} "
            f"REFUSED_STREAM, {tally.above_last} above the last stream id; "
            f"failures {len(tally.failures)}: {tally.failures[:5]}"
        )
        watcher.check("requests per connection")
        assert tally.failures == []
        assert len(tally.ok) == total
        assert tally.drained >= 4
        await assert_router_alive(router)


# -- 4. slow bodies ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_slow_bodies_are_cut_and_do_not_starve_others() -> None:
    count = 100
    async with routed() as (router, app):
        async with H2Client.open(router.addresses.http) as client:
            with trio.fail_after(5):
                await client.settings.wait()
            opened = min(count, client.max_streams)
            start = trio.current_time()
            ids = [
                client.request(b"/echo", b"POST", end_stream=False, extra=[]) for _ in range(opened)
            ]
            await client.flush()
            ended_at: dict[int, float] = {}

            def note_ends() -> None:
                for stream_id in ids:
                    if stream_id not in ended_at and (
                        client.replies[stream_id].done or client.closed.is_set()
                    ):
                        ended_at[stream_id] = trio.current_time() - start

            async with bystander(router) as watcher:
                while trio.current_time() - start < 15:
                    for stream_id in ids:
                        if not client.replies[stream_id].done and not client.closed.is_set():
                            try:
                                client.conn.send_data(stream_id, b"x")
                            except h2.exceptions.StreamClosedError:
                                pass
                    await client.flush()
                    note_ends()
                    await trio.sleep(1)
                peak = app.peak
            while trio.current_time() - start < 32 and len(ended_at) < opened:
                for stream_id in ids:
                    if not client.replies[stream_id].done and not client.closed.is_set():
                        try:
                            client.conn.send_data(stream_id, b"x")
                        except h2.exceptions.StreamClosedError:
                            pass
                await client.flush()
                note_ends()
                await trio.sleep(1)
            outcomes = Counter(
                f"status {r.status}"
                if r.status is not None
                else (f"reset {r.reset}" if r.reset is not None else "connection closed")
                for r in (client.replies[i] for i in ids)
                if r.done or client.closed.is_set()
            )
        times = sorted(ended_at.values())
        print(
            f"\n{opened} POSTs at 1 byte/s on one h2c connection (server allows "
            f"{client.max_streams} streams): {len(ended_at)} ended, "
            f"after {times[0] if times else None}..{times[-1] if times else None} s: "
            f"{dict(outcomes)}; at most {peak} reached the app at once"
        )
        watcher.check("slow bodies")
        assert opened == count
        assert len(ended_at) == opened, "some slow POSTs were still running after 32 s"
        allowed = {"status 408", "status 429", "status 503", "connection closed"}
        assert all(o in allowed or o.startswith("reset") for o in outcomes), outcomes
        await assert_router_alive(router)


# -- 5. connection caps -----------------------------------------------------------------------


async def refused(addr: tuple[str, int], local: str) -> tuple[bool, str, float]:
    """Connect from ``local`` and ask; (refused?, what happened, seconds)."""
    start = trio.current_time()
    try:
        conn = await H1.connect(addr, local)
    except OSError as exc:
        return True, f"connect failed: {exc!r}", trio.current_time() - start
    try:
        status = await conn.get(timeout=3)
    except trio.TooSlowError:
        return False, "neither refused nor answered within 3 s", trio.current_time() - start
    finally:
        await conn.aclose()
    took = trio.current_time() - start
    if status is None:
        return True, "closed", took
    return status == 503, f"status {status}", took


@pytest.mark.timeout(60)
async def test_connections_per_client_are_capped() -> None:
    cap = 20
    async with routed(max_connections_per_client=cap) as (router, _), bystander(router) as watcher:
        addr = router.addresses.http
        conns = [await H1.connect(addr, ATTACKER) for _ in range(cap)]
        try:
            first = [await c.get() for c in conns]
            over, what, took = await refused(addr, ATTACKER)
            again = [await c.get() for c in conns]
            other = await refused(addr, "127.0.0.3")  # another client is not counted
            await conns.pop().aclose()
            freed = await wait_until_served(addr, ATTACKER)
        finally:
            for c in conns:
                await c.aclose()
        print(
            f"\nmax_connections_per_client {cap}: the first {cap} {Counter(first)}; "
            f"#{cap + 1}: {what} after {took * 1000:.0f} ms; the {cap} again {Counter(again)}; "
            f"from 127.0.0.3: {other[1]}; after closing one, served again after {freed:.2f} s"
        )
        watcher.check("connections per client")
        assert first == [200] * cap
        assert over, what
        assert took < 1.0, "refused, but not at once"
        assert again == [200] * cap
        assert not other[0], other


async def wait_until_served(addr: tuple[str, int], local: str, timeout: float = 3) -> float:
    """Seconds until a new connection from ``local`` is served (the cap freed a slot)."""
    start = trio.current_time()
    with trio.fail_after(timeout):
        while True:
            no, _, _ = await refused(addr, local)
            if not no:
                return trio.current_time() - start
            await trio.sleep(0.05)


@pytest.mark.timeout(60)
async def test_connections_are_capped_router_wide() -> None:
    cap = 30
    async with routed(max_connections=cap) as (router, _), bystander(router) as watcher:
        addr = router.addresses.http
        # The bystander holds one connection; the others come from as many addresses.
        locals_ = [f"127.0.0.{10 + i}" for i in range(cap - 1)]
        conns = [await H1.connect(addr, local) for local in locals_]
        try:
            first = [await c.get() for c in conns]
            over, what, took = await refused(addr, "127.0.0.100")
            again = [await c.get() for c in conns]
            await conns.pop().aclose()
            freed = await wait_until_served(addr, "127.0.0.101")
        finally:
            for c in conns:
                await c.aclose()
        print(
            f"\nmax_connections {cap} (the bystander holds one): {Counter(first)}; "
            f"#{cap + 1}: {what} after {took * 1000:.0f} ms; again {Counter(again)}; "
            f"after closing one, served again after {freed:.2f} s"
        )
        watcher.check("connections router-wide")
        assert first == [200] * (cap - 1)
        assert over, what
        assert took < 1.0, "refused, but not at once"
        assert again == [200] * (cap - 1)


# -- 6. deadlines -----------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_a_request_head_must_arrive_within_the_header_timeout() -> None:
    deadline = 2.0
    async with routed(header_timeout=deadline) as (router, _), bystander(router) as watcher:
        addr = router.addresses.http
        partial = await trio.open_tcp_stream(*addr)
        silent = await trio.open_tcp_stream(*addr)
        results: dict[str, tuple[float | None, bytes]] = {}
        try:
            await partial.send_all(b"GET /fast HTTP/1.1\r\nHost: app.test\r\nX-Partial: a")

            async def watch(name: str, stream: trio.SocketStream) -> None:
                results[name] = await closed_within(stream, deadline + 5)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch, "partial head", partial)
                nursery.start_soon(watch, "nothing at all", silent)
        finally:
            await partial.aclose()
            await silent.aclose()
        for name, (took, sent) in results.items():
            print(
                f"\nheader_timeout {deadline:g} s, {name}: closed after {took} s, "
                f"sent {sent[:60]!r}"
            )
        watcher.check("header timeout")
        for took, _ in results.values():
            assert took is not None and deadline - 0.5 < took < deadline + 1.5


@pytest.mark.timeout(30)
@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2"])
async def test_a_stalled_request_body_gets_408(http2: bool) -> None:
    idle = 2.0
    async with routed(request_body_timeout=idle) as (router, _), bystander(router) as watcher:
        start = trio.current_time()
        if http2:
            async with H2Client.open(router.addresses.http) as client:
                stream_id = client.request(
                    b"/echo", b"POST", end_stream=False, extra=[(b"content-length", b"10")]
                )
                client.conn.send_data(stream_id, b"abc")
                await client.flush()
                reply = client.replies[stream_id]
                await client.wait(lambda: reply.done, idle + 5)
                took = trio.current_time() - start
                what = f"status {reply.status}, reset {reply.reset}"
                status = reply.status
                ok = reply.status == 408 or (reply.status is None and reply.reset is not None)
        else:
            stream = await trio.open_tcp_stream(*router.addresses.http)
            try:
                await stream.send_all(
                    b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10\r\n\r\nabc"
                )
                closed_after, sent = await closed_within(stream, idle + 5)
            finally:
                await stream.aclose()
            took = trio.current_time() - start
            what = f"{sent[:40]!r}, closed after {closed_after}"
            status = int(sent[9:12]) if sent.startswith(b"HTTP/1.1 ") else None
            ok = status == 408
        print(
            f"\nrequest_body_timeout {idle:g} s, 3 of 10 bytes ({'h2' if http2 else 'h1'}): "
            f"{what} after {took:.2f} s"
        )
        watcher.check("request body timeout")
        assert ok, what
        assert idle - 0.5 < took < idle + 2


@pytest.mark.timeout(30)
async def test_an_idle_kept_alive_connection_is_closed() -> None:
    idle = 2.0
    async with routed(keepalive_timeout=idle) as (router, _), bystander(router) as watcher:
        conn = await H1.connect(router.addresses.http)
        try:
            status = await conn.get()
            took, sent = await closed_within(conn.stream, idle + 5)
        finally:
            await conn.aclose()
        print(
            f"\nkeepalive_timeout {idle:g} s: GET {status}, then closed after {took} s ({sent!r})"
        )
        watcher.check("keep-alive timeout")
        assert status == 200
        assert took is not None and idle - 0.5 < took < idle + 1.5

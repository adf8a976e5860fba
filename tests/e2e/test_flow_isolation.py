"""Flow isolation on one tunnel, against the real router run as a child process (RSS sampled).

The engine's flow-control design (``ptth/engine/connection.py``): connection-level credit is
returned as DATA arrives, stream credit only when the consumer reads, and stream windows start
at ``Settings.stream_window`` (256 KiB) and grow only for consumers that keep up. So streams
whose consumers stall cost their own stream window and never the tunnel's connection window.
And 1xx responses are budgeted: more than 20 on one stream close the tunnel with
ENHANCE_YOUR_CALM.

1. **Stalled streams never stall their neighbours.** Before the rewrite, one h2c user with
   ``SETTINGS_INITIAL_WINDOW_SIZE=0`` and five large downloads left 4 MiB unacknowledged per
   stream; five of them used up the tunnel's 16 MiB connection window and every other request
   to that backend timed out. Here two such users stall 50 streams each (100 streams, more
   bytes stalled in the tunnel than its whole connection window), while bystanders on their own
   connections keep making small requests and one downloads 32 MiB over the same tunnel.
2. **A 1xx flood closes the tunnel within a second.** Before, a backend sending ``:status 100``
   forever (837,000 in 14 s) grew the router by 163 MiB, pegged its CPU and took bystanders'
   p99 from 6 ms to 5 s. Here a fake backend floods raw ``100``/``103`` HEADERS frames as fast
   as its socket takes them; bystanders are served by a second, real backend. (This test found
   that budgets were checked only once h2 had parsed a whole 256 KiB read: ~26,000 frames and
   1.5 s with the router's event loop blocked. The engine now feeds h2 64 frames at a time.)

Every measured number is printed with a ``[flow]`` prefix (``pytest -s`` shows them).
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import httpx
import pytest
import trio
from h2.errors import ErrorCodes
from hyperframe.frame import HeadersFrame

from ptth.engine.budget import BudgetLimits
from ptth.engine.settings import Settings
from ptth.proto.handshake import Accepted, ClientHandshake, Registration
from ptth.types import Receive, Scope, Send
from tests.e2e.test_faults import FAKE_HOST, FakeBackend, server_config
from tests.e2e.test_streaming import RssMonitor, rss
from tests.e2e.test_user_attacks import h2_client, p99, request_headers
from tests.support import Child, child, make_hello_app, serve_lifespan, start_backend

KiB = 1024
MiB = 1024 * KiB
TUNNEL = Settings()  # the router's receive side of every tunnel uses the defaults
STREAM_WINDOW = TUNNEL.stream_window  # 256 KiB
CONNECTION_WINDOW = TUNNEL.connection_window  # 16 MiB
MAX_STREAM_WINDOW = TUNNEL.max_stream_window  # 16 MiB
COALESCE = 256 * KiB  # ptth.engine.connection.COALESCE_LIMIT: one read() hands out at most this

STALLED_USERS = 2
STREAMS_PER_USER = 50
STALLED = STALLED_USERS * STREAMS_PER_USER
BIG = 64 * MiB  # what each stalled stream asks for
DOWNLOAD = 32 * MiB  # the bystander's download: twice the tunnel's connection window

# What one stalled stream can hold in the router: its initial window, one doubling (the relay's
# first read took at least half the window in one piece, leaving at most half unread, which
# counts as keeping up) and that first chunk (at most COALESCE), handed to the front end, which
# the user never takes. The relay reads nothing more, so the window never grows again.
PER_STALLED_STREAM = 2 * STREAM_WINDOW + COALESCE
# Router RSS per byte the windows let in: the stalled data sits in the heap as 64 KiB DATA
# payloads and 256 KiB joined chunks, and the allocator keeps pages that the copies on the way
# (socket reads, h2's frame buffer) freed (measured: 1.3-1.5x).
OVERHEAD = 2.0
RSS_SLACK = 16 * MiB
# The 1xx flood: the engine checks its budgets after every slice of at most 64 frames
# (ptth.engine.frame_guard.FRAMES_PER_SLICE), so the router parses about 64 frames past the
# 20th 1xx response and then never reads the tunnel again. Before that, one 256 KiB read of
# ten-byte frames (~26,000) was parsed whole: 1.5 s of CPU with the event loop blocked.
FLOOD_RSS_BUDGET = 16 * MiB
INFORMATIONAL_LIMIT = BudgetLimits().informational_per_stream

_ADDRESS_LINE = re.compile(rb"front end on (http://\S+), tunnel port on (\S+):(\d+)")


def report(line: str) -> None:
    print(f"[flow] {line}", file=sys.stderr)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


# -- the router as a child process ---------------------------------------------------------


@dataclass
class RouterProcess:
    child: Child
    url: str
    tunnel_host: str
    tunnel_port: int

    @property
    def tunnel(self) -> str:
        return f"{self.tunnel_host}:{self.tunnel_port}"

    @property
    def http(self) -> tuple[str, int]:
        host, _, port = self.url.removeprefix("http://").rpartition(":")
        return host, int(port)

    def cpu_seconds(self) -> float:
        """User + system CPU time the router has used so far."""
        with open(f"/proc/{self.child.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@asynccontextmanager
async def router_process(nursery: trio.Nursery, *flags: str) -> AsyncIterator[RouterProcess]:
    args = ("-m", "router", "--http", "127.0.0.1:0", "--tunnel", "127.0.0.1:0")
    async with child(nursery, *args, "--access-log", "false", *flags) as proc:
        match = await proc.wait_for(_ADDRESS_LINE)
        yield RouterProcess(proc, match[1].decode(), match[2].decode(), int(match[3]))


async def wait_routable(url: str, timeout: float = 15) -> None:
    """Until a request reaches a backend (the router answers 503 before a tunnel registers)."""
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        with trio.fail_after(timeout):
            while (await client.get("/small")).status_code != 200:
                await trio.sleep(0.05)


# -- bystanders ----------------------------------------------------------------------------


@dataclass
class Bystanders:
    """``workers`` users, each on its own HTTP/1.1 connection, making small requests in a loop
    (10 ms apart) until stopped; every latency, status and error is kept."""

    url: str
    workers: int = 4
    path: str = "/small"
    limit: int = 20_000  # requests in all, whatever the clock says
    latencies: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: trio.Event = field(default_factory=trio.Event)
    _done: trio.Event = field(default_factory=trio.Event)

    def start(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._run)

    async def stop(self) -> None:
        self._stop.set()
        with trio.fail_after(15):
            await self._done.wait()

    async def run_for(self, seconds: float) -> None:
        async with trio.open_nursery() as nursery:
            self.start(nursery)
            await trio.sleep(seconds)
            await self.stop()

    async def _run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(self.workers):
                    nursery.start_soon(self._worker)
        finally:
            self._done.set()

    async def _worker(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            while not self._stop.is_set() and len(self.statuses) + len(self.errors) < self.limit:
                began = time.perf_counter()
                try:
                    response = await client.get(self.path)
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    continue
                self.latencies.append(time.perf_counter() - began)
                self.statuses.append(response.status_code)
                await trio.sleep(0.01)

    def summary(self) -> str:
        return (
            f"{len(self.statuses)} requests, {len(self.errors)} errors, "
            f"p99 {ms(p99(self.latencies))}, max {ms(max(self.latencies))}"
        )

    def check(self, baseline: Bystanders, what: str) -> None:
        assert not self.errors, f"bystanders failed {what}: {self.errors[:5]}"
        assert self.statuses and set(self.statuses) == {200}, sorted(set(self.statuses))
        bound = max(10 * p99(baseline.latencies), 0.5)
        assert p99(self.latencies) < bound, (
            f"bystander p99 {ms(p99(self.latencies))} {what} (baseline "
            f"{ms(p99(baseline.latencies))}, bound {ms(bound)})"
        )


# -- 1. stalled streams --------------------------------------------------------------------


@dataclass
class StallApp:
    """``/small`` answers "ok"; ``/big`` streams ``BIG`` bytes as fast as flow control lets it
    (``sent[i]`` counts the bytes of the i-th /big whose ``send`` returned, i.e. that the
    router's stream window let into the tunnel); ``/download?size=N`` streams N bytes."""

    started: int = 0
    active: int = 0
    finished: int = 0
    sent: list[int] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        path = scope["path"]
        if path == "/small":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
        elif path == "/download":
            query = parse_qs(scope["query_string"].decode("latin-1"))
            await self._stream(receive, send, int(query["size"][0]), 256 * KiB, None)
        elif path == "/big":
            index = len(self.sent)
            self.sent.append(0)
            self.started += 1
            self.active += 1
            try:
                await self._stream(receive, send, BIG, 64 * KiB, index)
            finally:
                self.active -= 1
        else:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    async def _stream(
        self, receive: Receive, send: Send, size: int, chunk_size: int, index: int | None
    ) -> None:
        length = str(size).encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]}
        )
        chunk = b"d" * chunk_size
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            for _ in range(size // chunk_size):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if index is not None:
                    self.sent[index] += chunk_size
                await trio.lowlevel.checkpoint()  # after a reset, sends return at once
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            if index is not None:
                self.finished += 1
            nursery.cancel_scope.cancel()


@dataclass
class StalledUser:
    """One h2c connection with ``SETTINGS_INITIAL_WINDOW_SIZE=0`` whose streams ask for /big
    and never get a byte of window: the router can send headers, never a DATA byte."""

    sock: trio.SocketStream
    conn: h2.connection.H2Connection
    statuses: dict[int, int] = field(default_factory=dict)
    data_received: int = 0
    resets: list[int] = field(default_factory=list)
    terminated: bool = False
    eof: trio.Event = field(default_factory=trio.Event)

    async def reader(self) -> None:
        try:
            while data := await self.sock.receive_some(65536):
                for event in self.conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        status = dict(event.headers or [])[b":status"]
                        self.statuses[event.stream_id or 0] = int(status)
                    elif isinstance(event, h2.events.DataReceived):
                        self.data_received += len(event.data or b"")
                    elif isinstance(event, h2.events.StreamReset):
                        self.resets.append(event.stream_id or 0)
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        self.terminated = True
                out = self.conn.data_to_send()  # SETTINGS and PING ACKs; never WINDOW_UPDATE
                if out:
                    await self.sock.send_all(out)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h2.exceptions.ProtocolError):
            pass
        finally:
            self.eof.set()


@asynccontextmanager
async def stalled_user(addr: tuple[str, int], streams: int) -> AsyncIterator[StalledUser]:
    sock = await trio.open_tcp_stream(*addr)
    try:
        conn = h2_client()
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        for _ in range(streams):
            stream_id = conn.get_next_available_stream_id()
            conn.send_headers(stream_id, request_headers(b"/big"), end_stream=True)
        user = StalledUser(sock, conn)
        await sock.send_all(conn.data_to_send())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(user.reader)
            yield user
            nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(sock)


async def wait_stalled(app: StallApp, users: list[StalledUser], timeout: float = 15) -> float:
    """Until every stalled stream has its 200 and the app's sends have stopped advancing."""
    start = trio.current_time()
    with trio.fail_after(timeout):
        while app.active < STALLED or sum(len(u.statuses) for u in users) < STALLED:
            await trio.sleep(0.01)
        previous = -1
        while sum(app.sent) != previous:
            previous = sum(app.sent)
            await trio.sleep(0.3)
    return trio.current_time() - start


@dataclass
class Download:
    size: int
    received: int = 0
    seconds: float = 0.0
    error: str | None = None

    def summary(self) -> str:
        what = f"{self.size / MiB:.0f} MiB download"
        if self.error is not None:
            return f"{what} FAILED after {self.seconds:.2f} s: {self.error}"
        rate = self.received / MiB / max(self.seconds, 1e-9)
        return f"{what} in {self.seconds:.2f} s ({rate:.0f} MiB/s)"


async def download(url: str, size: int) -> Download:
    """One large download on its own connection (HTTP/1.1), timed; failures are recorded."""
    result = Download(size)
    began = trio.current_time()
    try:
        with trio.fail_after(20):
            async with (
                httpx.AsyncClient(base_url=url, timeout=10) as client,
                client.stream("GET", "/download", params={"size": size}) as response,
            ):
                assert response.status_code == 200
                async for data in response.aiter_raw():
                    result.received += len(data)
    except (httpx.HTTPError, trio.TooSlowError) as exc:
        result.error = repr(exc)
    result.seconds = trio.current_time() - began
    return result


async def neighbours(url: str, at_least: float = 2.0) -> tuple[Bystanders, Download]:
    """Bystanders making small requests while another one downloads ``DOWNLOAD`` bytes, for
    ``at_least`` seconds or until the download is over, whichever is later."""
    bystanders = Bystanders(url)
    async with trio.open_nursery() as nursery:
        bystanders.start(nursery)
        began = trio.current_time()
        result = await download(url, DOWNLOAD)
        await trio.sleep_until(began + at_least)
        await bystanders.stop()
    return bystanders, result


@pytest.mark.timeout(60)
async def test_stalled_streams_never_stall_their_neighbours() -> None:
    app = StallApp()
    async with trio.open_nursery() as nursery:
        async with router_process(nursery) as router:
            # One tunnel: the stalled streams and their neighbours share its connection window.
            await start_backend(nursery, app, router.tunnel, max_connections=1)
            await wait_routable(router.url)
            await download(router.url, 8 * MiB)  # warm up: imports, buffers
            # The baseline: the same neighbours on the same router and tunnel, no attack.
            before, download_before = await neighbours(router.url)
            monitor = RssMonitor(router.child.pid)
            monitor.start(nursery)
            async with (
                stalled_user(router.http, STREAMS_PER_USER) as first,
                stalled_user(router.http, STREAMS_PER_USER) as second,
            ):
                users = [first, second]
                stalled_after = await wait_stalled(app, users)
                stalled_rss = rss(router.child.pid) - monitor.baseline
                stalled_bytes = sum(app.sent)
                per_stream = sorted(app.sent)
                during, download_during = await neighbours(router.url)
                # Still stalled, still open: the attack lasted through the measurement.
                assert app.active == STALLED and app.finished == 0
                assert sum(app.sent) == stalled_bytes
                for user in users:
                    assert not user.eof.is_set() and not user.terminated
                monitor.stop()
            # The users are gone: the router resets their tunnel streams.
            with trio.fail_after(5):
                while app.active:
                    await trio.sleep(0.01)
            after = Bystanders(router.url)
            await after.run_for(1.0)
        nursery.cancel_scope.cancel()

    statuses = [s for user in users for s in user.statuses.values()]
    report(
        f"stall: {STALLED} streams on {STALLED_USERS} h2c connections with window 0, stalled "
        f"{ms(stalled_after)} after they were sent; the backend had put "
        f"{stalled_bytes / MiB:.1f} MiB into the tunnel for them ({per_stream[0] / KiB:.0f}.."
        f"{per_stream[-1] / KiB:.0f} KiB per stream; connection window "
        f"{CONNECTION_WINDOW / MiB:.0f} MiB, stream window {STREAM_WINDOW / KiB:.0f} KiB)"
    )
    report(f"stall: before: bystanders {before.summary()}; {download_before.summary()}")
    report(f"stall: during: bystanders {during.summary()}; {download_during.summary()}")
    report(f"stall: after the users left: bystanders {after.summary()}")
    stalled_budget = OVERHEAD * stalled_bytes + RSS_SLACK
    neighbours_budget = OVERHEAD * MAX_STREAM_WINDOW + RSS_SLACK
    report(
        f"stall: router RSS baseline {monitor.baseline / MiB:.1f} MiB; grown by "
        f"{stalled_rss / MiB:.1f} MiB once stalled ({stalled_rss / stalled_bytes:.2f}x the "
        f"stalled bytes; budget {stalled_budget / MiB:.1f} MiB), "
        f"by {monitor.growth / MiB:.1f} MiB at the peak with the neighbours running (budget "
        f"{(stalled_rss + neighbours_budget) / MiB:.1f} MiB; {monitor.samples} samples)"
    )
    # The attack was real: every stream started and got its response headers, none was
    # refused or reset, not one DATA byte reached the users, and the app's sends are stuck.
    assert statuses == [200] * STALLED
    assert all(not user.resets and user.data_received == 0 for user in users)
    assert app.started == STALLED
    assert all(0 < sent <= PER_STALLED_STREAM for sent in per_stream), per_stream
    # More bytes sit unread in stalled streams than the whole connection window: connection
    # credit must have come back on arrival, or the tunnel would have been shut for everyone.
    assert stalled_bytes > CONNECTION_WINDOW
    # ... and the neighbours never noticed.
    assert download_before.received == DOWNLOAD, download_before.summary()
    assert download_during.error is None, download_during.summary()
    assert download_during.received == DOWNLOAD, download_during.summary()
    during.check(before, "during the stall")
    after.check(before, "after the stall")
    # The router holds what the windows let in and nothing more (so at most OVERHEAD x
    # STALLED x PER_STALLED_STREAM; before the rewrite each stream could hold 4 MiB), and the
    # neighbours add at most the download's window on top.
    assert monitor.samples >= 10
    assert stalled_rss < stalled_budget
    assert monitor.growth - stalled_rss < neighbours_budget


# -- 2. a 1xx flood ------------------------------------------------------------------------


@asynccontextmanager
async def fake_tunnel(router: RouterProcess) -> AsyncIterator[FakeBackend]:
    """A hand-driven tunnel (service "fake", host ``FAKE_HOST``) to a router process."""
    sock = await trio.open_tcp_stream(router.tunnel_host, router.tunnel_port)
    try:
        registration = Registration(service="fake", hosts=(FAKE_HOST,), instance="fake")
        handshake = ClientHandshake(registration, router.tunnel)
        await sock.send_all(handshake.request_bytes())
        accepted: Accepted | None = None
        with trio.fail_after(5):
            while accepted is None:
                accepted = handshake.receive(await sock.receive_some(65536))
        fake = FakeBackend(sock, accepted, h2.connection.H2Connection(config=server_config()))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fake._reader)
            await fake.start_h2()
            yield fake
            nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(sock)


def request_path(fake: FakeBackend, stream_id: int) -> bytes:
    for event in fake.events:
        if isinstance(event, h2.events.RequestReceived) and event.stream_id == stream_id:
            return dict(event.headers or [])[b":path"]
    raise AssertionError(f"no request on stream {stream_id}")


@dataclass
class Flood:
    frames: int = 0  # 1xx HEADERS frames written
    started: float = 0.0
    goaway_after: float | None = None
    closed_after: float | None = None
    notes: list[str] = field(default_factory=list)


async def flood_informational(fake: FakeBackend, stream_id: int, flood: Flood) -> None:
    """Answer ``stream_id`` with ``100`` and ``103`` responses and nothing else, as fast as the
    socket takes them, until the router closes the tunnel (at most 5 s or 5 million frames)."""
    # Once through h2, so both header blocks are in the HPACK dynamic table; from then on each
    # is a one-byte indexed block and the flood is raw HEADERS frames, ten bytes apiece.
    hundred = [(b":status", b"100")]
    early_hints = [(b":status", b"103"), (b"link", b"</style.css>; rel=preload; as=style")]
    fake.conn.send_headers(stream_id, hundred)
    fake.conn.send_headers(stream_id, early_hints)
    frames = []
    for block in (hundred, early_hints):
        frame = HeadersFrame(stream_id, data=fake.conn.encoder.encode(block))
        frame.flags.add("END_HEADERS")
        frames.append(frame.serialize())
    per_batch = 5000
    batch = b"".join(frames) * (per_batch // 2)
    flood.started = trio.current_time()
    flood.frames = 2
    try:
        await fake.flush()
        while flood.frames < 5_000_000 and trio.current_time() - flood.started < 5:
            if fake.eof.is_set():
                break
            await fake.send(batch)
            flood.frames += per_batch
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        flood.notes.append(f"write failed: {exc!r}")


async def watch_tunnel(fake: FakeBackend, flood: Flood) -> None:
    """Record when the router's GOAWAY arrived and when it closed the connection."""
    with trio.move_on_after(10):
        while not fake.eof.is_set():
            if flood.started and flood.goaway_after is None and fake_goaway(fake):
                flood.goaway_after = trio.current_time() - flood.started
            await trio.sleep(0.001)
    if flood.started:
        flood.closed_after = trio.current_time() - flood.started
        if flood.goaway_after is None and fake_goaway(fake):
            flood.goaway_after = flood.closed_after


def fake_goaway(fake: FakeBackend) -> bool:
    return any(isinstance(e, h2.events.ConnectionTerminated) for e in fake.events)


@pytest.mark.timeout(40)
async def test_informational_flood_closes_the_tunnel_within_a_second() -> None:
    async with trio.open_nursery() as nursery:
        async with router_process(nursery) as router:
            await start_backend(nursery, make_hello_app("real"), router.tunnel)
            await wait_routable(router.url)
            async with (
                fake_tunnel(router) as fake,
                httpx.AsyncClient(base_url=router.url, timeout=5) as user,
                trio.open_nursery() as tasks,
            ):
                flood = Flood()

                async def serve_fake() -> None:
                    """Answer probes with "fake"; flood the first request for /flood."""
                    while True:
                        stream_id = await fake.wait_request(timeout=10)
                        if request_path(fake, stream_id) != b"/flood":
                            fake.conn.send_headers(stream_id, [(b":status", b"200")])
                            fake.conn.send_data(stream_id, b"fake", end_stream=True)
                            await fake.flush()
                            continue
                        await flood_informational(fake, stream_id, flood)
                        return

                tasks.start_soon(serve_fake)
                tasks.start_soon(watch_tunnel, fake, flood)
                # Until the router routes FAKE_HOST to the fake tunnel (before that, the
                # default service answers "bar").
                with trio.fail_after(5):
                    while (await user.get("/probe", headers={"host": FAKE_HOST})).text != "fake":
                        await trio.sleep(0.02)

                baseline = Bystanders(router.url)
                await baseline.run_for(1.5)
                monitor = RssMonitor(router.child.pid)
                monitor.start(nursery)
                cpu_before = router.cpu_seconds()
                during = Bystanders(router.url)
                async with trio.open_nursery() as attack:
                    during.start(attack)
                    await trio.sleep(0.3)  # bystanders running before the flood starts
                    began = trio.current_time()
                    outcome: str
                    try:
                        response = await user.get("/flood", headers={"host": FAKE_HOST})
                        outcome = str(response.status_code)
                    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                        outcome = type(exc).__name__  # an aborted response
                    user_after = trio.current_time() - began
                    with trio.fail_after(5):
                        await fake.eof.wait()
                    await trio.sleep(1.0)  # bystanders keep going after the tunnel is gone
                    await during.stop()
                cpu = router.cpu_seconds() - cpu_before
                monitor.stop()
                codes = fake.goaway_codes()
                tasks.cancel_scope.cancel()
        nursery.cancel_scope.cancel()

    report(
        f"1xx flood: {flood.frames} 100/103 HEADERS frames written in "
        f"{flood.closed_after or 0:.3f} s; GOAWAY after "
        f"{flood.goaway_after if flood.goaway_after is None else ms(flood.goaway_after)}, "
        f"tunnel closed after {ms(flood.closed_after or 0)} (codes {codes}) {flood.notes}"
    )
    report(f"1xx flood: the user got {outcome} after {ms(user_after)}")
    report(f"1xx flood: bystanders before: {baseline.summary()}")
    report(f"1xx flood: bystanders during and after: {during.summary()}")
    report(
        f"1xx flood: router RSS baseline {monitor.baseline / MiB:.1f} MiB, peak "
        f"{monitor.peak / MiB:.1f} MiB, growth {monitor.growth / MiB:.1f} MiB "
        f"(budget {FLOOD_RSS_BUDGET / MiB:.0f} MiB); router CPU {cpu:.2f} s over the flood phase "
        f"(bystanders' requests included)"
    )
    assert flood.frames > INFORMATIONAL_LIMIT
    assert codes[-1:] == [ErrorCodes.ENHANCE_YOUR_CALM]
    assert flood.goaway_after is not None and flood.goaway_after < 1.0
    assert flood.closed_after is not None and flood.closed_after < 1.0
    assert outcome in ("502", "RemoteProtocolError", "ReadError")
    assert user_after < 2.0  # at once, not after a timeout
    during.check(baseline, "during the 1xx flood")
    assert monitor.growth < FLOOD_RSS_BUDGET

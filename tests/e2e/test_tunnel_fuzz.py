"""Fuzzing the tunnel side with hypothesis (issue 10, item 5): a fake backend completes a valid
handshake, then speaks random and mutated HTTP/2 to the router while users' requests go through
the front end to it.

Per example the fake backend (plain blocking sockets, in the test's thread) registers a tunnel
for a host of its own, sends its SETTINGS, waits until the router has forwarded the users'
requests (1 to 3, HTTP/1.1, GET or POST), and then plays a hypothesis-drawn list of actions:
frames built with hyperframe (HEADERS with valid, invalid and random HPACK blocks, DATA on the
users' streams and on random ids, bursts over the flow-control window, SETTINGS with random and
invalid values, WINDOW_UPDATE of 0 and to overflow, RST_STREAM, PING, GOAWAY, PRIORITY,
CONTINUATION without HEADERS and CONTINUATION floods, PUSH_PROMISE, unknown types, wrong
lengths), frames written by hand with random fields, valid responses, and byte mutations of any
of these. Then it sends a PING: an answer means the tunnel still works, so the backend answers
what is left and closes; no answer within 0.5 s means the router is inside a frame our bytes
never finished, so the backend sends zeros (one byte more than the router's
SETTINGS_MAX_FRAME_SIZE, ending that frame and then a connection error) and the router must
answer GOAWAY or close.

Asserted for every example:

* the tunnel keeps working (PING answered) or the router closes it (GOAWAY or EOF) within 3 s;
* every user request ends within 3 s of the tunnel's end with a response: one of the router's
  (502, 503, 504), or the backend's, complete or (once its head was relayed) cut short, never
  a bare close before any head and never a hang;
* the router drops the tunnel from its registry once it is closed;
* nothing was logged at ERROR or above by ``router`` or ``ptth``, and the router's task is
  alive;
* the traced memory peak of the example (tracemalloc, all threads: router, users and the fake
  backend, which sends at most ~512 KiB) stays under 16 MiB above where it started;
* afterwards a fresh, well-behaved tunnel registers and serves a request.

The router runs once per test in a thread of its own (``trio.run``), as in
tests/e2e/test_frontend_fuzz.py; shrinking is off (a hang costs seconds per attempt, and the
failing example is printed whole).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import socket
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import h11
import hpack
import pytest
import trio
from hpack import NeverIndexedHeaderTuple
from hyperframe.exceptions import InvalidDataError
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ptth.errors import HandshakeError, HandshakeRefused
from ptth.proto.handshake import ClientHandshake, Registration
from ptth.types import Receive, Scope, Send
from tests.e2e.test_frontend_fuzz import ErrorRecords, mutate, mutation, raw_frame
from tests.support import RunningRouter, read_body, serve_lifespan, start_backend, start_router
from tests.unit.test_fuzz_handshake import header_soup, mutated

BOUND = 3.0  # seconds for the tunnel, then each user, to end once the backend is done
PING_WAIT = 0.5  # seconds a live tunnel has to answer the final PING
BUDGET = 40.0  # seconds of examples per test; the rest are skipped and counted
MAX_SENT = 512 * 1024  # bytes of actions per example
MEMORY_BOUND = 16 * 1024 * 1024
MARKER = b"tunfuzz!"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
BODY = b"fuzz-ok"
ROUTER_STATUSES = {502, 503, 504}
FUZZ_SETTINGS: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": list(HealthCheck),
    "phases": [Phase.explicit, Phase.generate],
    "database": None,
    "report_multiple_bugs": False,
}

# -- the router, in a thread of its own -----------------------------------------------------


async def healthy_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await serve_lifespan(receive, send)
        return
    await read_body(receive)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"healthy"})


@dataclass
class RouterThread:
    running: RunningRouter | None = None
    token: trio.lowlevel.TrioToken | None = None
    stop: Callable[[], None] | None = None
    error: BaseException | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    @property
    def http(self) -> tuple[str, int]:
        assert self.running is not None
        host, port = self.running.addresses.http
        return host, port

    @property
    def tunnel(self) -> tuple[str, int]:
        assert self.running is not None
        host, _, port = self.running.tunnel.rpartition(":")
        return host, int(port)

    def tunnels_of(self, instance: str) -> int:
        """How many tunnels of this instance the registry holds (asked on the router's loop)."""
        running = self.running
        assert running is not None and self.token is not None

        def count() -> int:
            tunnels = running.router.registry.tunnels()
            return sum(t.registration.instance == instance for t in tunnels)

        return trio.from_thread.run_sync(count, trio_token=self.token)

    def tunnels_of_all(self) -> int:
        running = self.running
        assert running is not None and self.token is not None
        return trio.from_thread.run_sync(
            lambda: len(running.router.registry.tunnels()), trio_token=self.token
        )

    def alive(self) -> bool:
        return self.error is None and self.thread is not None and self.thread.is_alive()


@pytest.fixture
def router() -> Iterator[RouterThread]:
    handle = RouterThread()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            # queue_timeout: a request for a host whose tunnel just died waits this long for
            # another before its 503; short, so that such an example costs little.
            running = await start_router(nursery, queue_timeout=1.0)
            await start_backend(nursery, healthy_app, running.tunnel)
            await running.wait_tunnels(1)
            handle.running = running
            handle.token = trio.lowlevel.current_trio_token()
            handle.stop = nursery.cancel_scope.cancel
            handle.ready.set()

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:
            handle.error = exc
        finally:
            handle.ready.set()

    handle.thread = threading.Thread(target=run, name="tunnel-fuzz-router", daemon=True)
    handle.thread.start()
    assert handle.ready.wait(20), "the router did not start"
    assert handle.running is not None, f"the router did not start: {handle.error!r}"
    try:
        yield handle
    finally:
        if handle.thread.is_alive() and handle.stop is not None and handle.token is not None:
            trio.from_thread.run_sync(handle.stop, trio_token=handle.token)
        handle.thread.join(20)
        assert not handle.thread.is_alive(), "the router thread did not stop"
        assert handle.error is None, repr(handle.error)


@pytest.fixture
def errors() -> Iterator[ErrorRecords]:
    """Every record at ERROR or above on the router's and the helper's loggers."""
    handler = AllErrors()
    loggers = [logging.getLogger(name) for name in ("router", "ptth")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


class AllErrors(ErrorRecords):
    """ERROR and above, with a traceback or not: the router logs its own faults at ERROR."""

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def users() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="fuzz-user") as pool:
        yield pool


# -- users ----------------------------------------------------------------------------------


@dataclass
class UserResult:
    how: str  # "complete", "cut" (head relayed, then closed), "no-head", "timeout", "reset"
    status: int | None = None
    body: bytes = b""


def user_request(addr: tuple[str, int], host: str, method: str, body: bytes) -> UserResult:
    """One HTTP/1.1 request through the front end, read with h11 until its end or 15 s."""
    conn = h11.Connection(h11.CLIENT)
    headers = [("Host", host), ("Connection", "close"), ("Content-Length", str(len(body)))]
    data = conn.send(h11.Request(method=method, target="/fuzz", headers=headers)) or b""
    data += conn.send(h11.Data(data=body)) if body else b""
    data += conn.send(h11.EndOfMessage()) or b""
    status: int | None = None
    received = b""
    deadline = time.monotonic() + 15
    try:
        with socket.create_connection(addr, timeout=5) as sock:
            sock.sendall(data)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return UserResult("timeout", status, received)
                sock.settimeout(left)
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    return UserResult("timeout", status, received)
                conn.receive_data(chunk)
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        break
                    if isinstance(event, h11.Response):
                        status = event.status_code
                    elif isinstance(event, h11.Data):
                        received += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        return UserResult("complete", status, received)
                    elif isinstance(event, h11.ConnectionClosed):
                        return UserResult("cut" if status else "no-head", status, received)
                if not chunk:
                    return UserResult("cut" if status else "no-head", status, received)
    except h11.RemoteProtocolError:
        return UserResult("cut" if status else "no-head", status, received)
    except (ConnectionResetError, BrokenPipeError):
        return UserResult("reset" if not status else "cut", status, received)


def fresh_request(router: RouterThread) -> None:
    """The healthy backend (catch-all) and a new well-behaved tunnel both answer."""
    result = user_request(router.http, "app.test", "GET", b"")
    assert (result.how, result.status, result.body) == ("complete", 200, b"healthy"), result


# -- the fake backend -----------------------------------------------------------------------


def frames_in(buffer: bytearray) -> Iterator[tuple[int, int, int, bytes]]:
    """Whole frames at the front of ``buffer`` (consumed): (type, flags, stream id, payload)."""
    while len(buffer) >= 9:
        length = int.from_bytes(buffer[:3], "big")
        if len(buffer) < 9 + length:
            return
        kind, flags = buffer[3], buffer[4]
        sid = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
        payload = bytes(buffer[9 : 9 + length])
        del buffer[: 9 + length]
        yield kind, flags, sid, payload


def response_block(status: int, extra: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """A header block that uses no dynamic table entry (literal, never indexed), so that it
    decodes the same whatever random HPACK the router's decoder took before."""
    fields = [(b":status", str(status).encode()), *(extra or [])]
    return hpack.Encoder().encode([NeverIndexedHeaderTuple(n, v) for n, v in fields])


def valid_response(sid: int, status: int = 200) -> bytes:
    headers = HeadersFrame(
        sid, data=response_block(status, [(b"content-length", str(len(BODY)).encode())])
    )
    headers.flags.add("END_HEADERS")
    data = DataFrame(sid, data=BODY)
    data.flags.add("END_STREAM")
    return headers.serialize() + data.serialize()


class FakeBackend:
    """One tunnel: a raw socket after the handshake, the HTTP/2 server side written by hand."""

    def __init__(self, router: RouterThread, instance: str, host: str) -> None:
        self.instance = instance
        self.sock = socket.create_connection(router.tunnel, timeout=BOUND)
        handshake = ClientHandshake(
            Registration(service="fuzz", hosts=(host,), instance=instance),
            "{}:{}".format(*router.tunnel),
        )
        self.sock.sendall(handshake.request_bytes())
        accepted = None
        while accepted is None:
            accepted = handshake.receive(self.sock.recv(65536))
        self.buffer = bytearray(accepted.trailing)
        while len(self.buffer) < len(PREFACE):
            self.buffer += self.sock.recv(65536)
        assert self.buffer.startswith(PREFACE), bytes(self.buffer[:64])
        del self.buffer[: len(PREFACE)]
        self.open: dict[int, bool] = {}  # stream id -> request body complete
        self.order: list[int] = []  # stream ids in the order the router opened them
        self.closed = False  # EOF or reset from the router
        self.goaway = False
        self.pinged = False  # our marker PING came back
        self.max_frame: int | None = None  # the router's SETTINGS_MAX_FRAME_SIZE
        self.sock.sendall(SettingsFrame(0, settings={}).serialize())

    def pump(self, timeout: float) -> None:
        """Read what the router sent within ``timeout`` s (at least one read), and react."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            left = deadline - time.monotonic()
            self.sock.settimeout(max(left, 0.001))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return
            except (ConnectionResetError, BrokenPipeError):
                self.closed = True
                return
            if not data:
                self.closed = True
                return
            self.buffer += data
            self._react()
            if left <= 0:
                return

    def _react(self) -> None:
        replies = b""
        for kind, flags, sid, payload in frames_in(self.buffer):
            if kind == 0x4 and not flags & 0x1:  # SETTINGS
                if self.max_frame is None:
                    self.max_frame = 16384
                    for at in range(0, len(payload) - 5, 6):
                        if int.from_bytes(payload[at : at + 2], "big") == 0x5:
                            self.max_frame = int.from_bytes(payload[at + 2 : at + 6], "big")
                replies += SettingsFrame(0, flags=["ACK"]).serialize()
            elif kind == 0x6:  # PING
                if flags & 0x1:
                    self.pinged = self.pinged or payload == MARKER
                else:
                    replies += PingFrame(0, flags=["ACK"], opaque_data=payload).serialize()
            elif kind == 0x1:  # HEADERS: a request
                if sid not in self.open:
                    self.order.append(sid)
                self.open[sid] = bool(flags & 0x1)
            elif kind == 0x0 and sid in self.open and flags & 0x1:
                self.open[sid] = True
            elif kind == 0x3:
                self.open.pop(sid, None)
            elif kind == 0x7:
                self.goaway = True
        if replies:
            self.send(replies)

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.closed = True
            return False
        return True

    def wait_requests(self, count: int, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while len(self.order) < count and not self.closed and time.monotonic() < deadline:
            self.pump(0.02)

    def close(self) -> None:
        """A clean close (FIN), then the socket is gone."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        self.sock.close()


def wait_registered(router: RouterThread, instance: str, present: bool, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (router.tunnels_of(instance) > 0) == present:
            return True
        time.sleep(0.01)
    return False


def fresh_tunnel(router: RouterThread, n: int) -> None:
    """A new, well-behaved tunnel registers and serves a request through the front end."""
    host = f"good-{n}.test"
    backend = FakeBackend(router, f"good-{n}", host)
    try:
        assert wait_registered(router, f"good-{n}", True, 5), "a fresh tunnel did not register"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            future = pool.submit(user_request, router.http, host, "GET", b"")
            backend.wait_requests(1)
            assert backend.order, "the router sent a fresh tunnel no request"
            backend.send(valid_response(backend.order[0]))
            deadline = time.monotonic() + 5
            while not future.done() and time.monotonic() < deadline:
                backend.pump(0.02)
            result = future.result(timeout=1)
        assert (result.how, result.status, result.body) == ("complete", 200, BODY), result
    finally:
        backend.close()
    assert wait_registered(router, f"good-{n}", False, 5), "a closed fresh tunnel stayed"


# -- actions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A stream id: one of the users' streams (``pending`` indexes them in order, modulo their
    number) or a literal id."""

    pending: int | None = None
    literal: int = 0

    def resolve(self, order: list[int]) -> int:
        if self.pending is not None and order:
            return order[self.pending % len(order)]
        return self.literal


@dataclass(frozen=True)
class Action:
    """One thing the fake backend sends: ``kind`` names the builder, ``args`` its fields."""

    kind: str
    target: Target = Target()
    args: tuple[Any, ...] = ()
    mutations: tuple[tuple[str, int, int], ...] = ()

    def build(self, order: list[int]) -> bytes:
        sid = self.target.resolve(order)
        builder = BUILDERS[self.kind]
        try:
            data = builder(sid, *self.args)
        except InvalidDataError:  # hyperframe wants 0 (or not 0) here: build, then rewrite
            try:
                data = with_stream_id(builder(0, *self.args), sid)
            except InvalidDataError:
                data = with_stream_id(builder(1, *self.args), sid)
        return mutate(data, list(self.mutations)) if self.mutations else data


def with_stream_id(data: bytes, sid: int) -> bytes:
    """``data`` (whole frames) with every frame's stream id set to ``sid``."""
    out = bytearray(data)
    at = 0
    while at + 9 <= len(out):
        out[at + 5 : at + 9] = sid.to_bytes(4, "big")
        at += 9 + int.from_bytes(out[at : at + 3], "big")
    return bytes(out)


def _headers(sid: int, block: bytes, flags: tuple[str, ...]) -> bytes:
    frame = HeadersFrame(sid, data=block)
    for flag in flags:
        frame.flags.add(flag)
    return frame.serialize()


def b_response(sid: int, status: int) -> bytes:
    return valid_response(sid, status)


def b_headers(sid: int, status: bytes, extra: tuple[tuple[bytes, bytes], ...], flags: Any) -> bytes:
    fields = [(b":status", status), *extra] if status else list(extra)
    block = hpack.Encoder().encode([NeverIndexedHeaderTuple(n, v) for n, v in fields])
    return _headers(sid, block, flags)


def b_indexed_headers(sid: int, fields: tuple[tuple[bytes, bytes], ...], flags: Any) -> bytes:
    """Indexed HPACK: it adds to the router's dynamic table (valid, but state)."""
    return _headers(sid, hpack.Encoder().encode(list(fields)), flags)


def b_random_block(sid: int, block: bytes, flags: Any) -> bytes:
    return _headers(sid, block, flags)


def b_data(sid: int, size: int, end: bool, pad: int | None) -> bytes:
    frame = DataFrame(sid, data=b"d" * size)
    if end:
        frame.flags.add("END_STREAM")
    if pad is not None:
        frame.flags.add("PADDED")
        frame.pad_length = pad
    return frame.serialize()


def b_burst(sid: int, frames: int) -> bytes:
    """DATA frames of 16 KiB each, past the router's flow-control window if there are many."""
    return DataFrame(sid, data=b"b" * 16384).serialize() * frames


def b_head_burst(sid: int, frames: int, size: int) -> bytes:
    """A response head, then DATA frames of ``size`` bytes: many of them overrun the window the
    router gave (a flow-control error it must answer, not buffer)."""
    head = HeadersFrame(sid, data=response_block(200))
    head.flags.add("END_HEADERS")
    return head.serialize() + DataFrame(sid, data=b"h" * size).serialize() * frames


def b_settings(sid: int, values: tuple[tuple[int, int], ...], ack: bool) -> bytes:
    frame = SettingsFrame(sid, settings=dict(values) if not ack else {})
    if ack:
        frame.flags.add("ACK")
    return frame.serialize()


def b_window(sid: int, increment: int, times: int) -> bytes:
    return WindowUpdateFrame(sid, window_increment=increment).serialize() * times


def b_rst(sid: int, code: int) -> bytes:
    return RstStreamFrame(sid, error_code=code).serialize()


def b_ping(sid: int, ack: bool, opaque: bytes) -> bytes:
    return PingFrame(sid, flags=["ACK"] if ack else [], opaque_data=opaque).serialize()


def b_goaway(sid: int, last: int, code: int, debug: bytes) -> bytes:
    return GoAwayFrame(sid, last_stream_id=last, error_code=code, additional_data=debug).serialize()


def b_priority(sid: int, depends: int | None, weight: int, exclusive: bool) -> bytes:
    frame = PriorityFrame(
        sid,
        depends_on=sid if depends is None else depends,
        stream_weight=weight,
        exclusive=exclusive,
    )
    return frame.serialize()


def b_continuation(sid: int, block: bytes, end: bool) -> bytes:
    frame = ContinuationFrame(sid, data=block)
    if end:
        frame.flags.add("END_HEADERS")
    return frame.serialize()


def b_continuation_flood(sid: int, frames: int, size: int) -> bytes:
    """HEADERS without END_HEADERS, then many CONTINUATIONs that never end the block."""
    head = _headers(sid, response_block(200), ())
    return head + ContinuationFrame(sid, data=b"\x40" * size).serialize() * frames


def b_push(sid: int, promised: int) -> bytes:
    frame = PushPromiseFrame(sid, promised_stream_id=promised, data=response_block(200))
    frame.flags.add("END_HEADERS")
    return frame.serialize()


def b_raw(sid: int, kind: int, flags: int, payload: bytes, length: int | None) -> bytes:
    return raw_frame(kind, flags, sid, payload, length)


# Actions that may carry a :status to the router (with mutations, any action may).
STATUS_KINDS = {
    "response",
    "headers",
    "indexed_headers",
    "random_block",
    "head_burst",
    "continuation_flood",
    "push",
    "raw",
    "continuation",
}

BUILDERS: dict[str, Callable[..., bytes]] = {
    "response": b_response,
    "headers": b_headers,
    "indexed_headers": b_indexed_headers,
    "random_block": b_random_block,
    "data": b_data,
    "burst": b_burst,
    "head_burst": b_head_burst,
    "settings": b_settings,
    "window": b_window,
    "rst": b_rst,
    "ping": b_ping,
    "goaway": b_goaway,
    "priority": b_priority,
    "continuation": b_continuation,
    "continuation_flood": b_continuation_flood,
    "push": b_push,
    "raw": b_raw,
}

ids = st.one_of(
    st.sampled_from([0, 1, 2, 3, 5, 7, 99, 2**31 - 1]),
    st.integers(0, 2**31 - 1),
)
targets = st.one_of(
    st.builds(Target, pending=st.integers(0, 2)),
    st.builds(Target, literal=ids),
)
pending = st.builds(Target, pending=st.integers(0, 2))
stream_targets = st.one_of(st.builds(Target, pending=st.integers(0, 2)), targets)
header_flags = st.sets(st.sampled_from(["END_STREAM", "END_HEADERS"])).map(
    lambda flags: tuple(sorted(flags))
)
statuses = st.sampled_from([200, 204, 304, 404, 500, 100, 103, 101, 199, 600, 99])
status_values = st.sampled_from(
    [b"200", b"204", b"103", b"101", b"", b"abc", b"2000", b"20", b"-1", b" 200", b"200 OK"]
)
extra_fields = st.lists(
    st.tuples(
        st.sampled_from(
            [
                b"content-length",
                b"content-type",
                b"connection",
                b"transfer-encoding",
                b"keep-alive",
                b"upgrade",
                b"te",
                b":status",
                b":path",
                b"Upper",
                b"x-a",
                b"set-cookie",
                b"",
                b"bad name",
            ]
        ),
        st.sampled_from(
            [
                b"0",
                b"7",
                b"8",
                b"-1",
                b"99999999999999999999",
                b"close",
                b"chunked",
                b"a\r\nb",
                b"",
                b"\x00",
                b"v",
                b" lead",
                b"x" * 5000,
            ]
        ),
    ),
    max_size=4,
).map(tuple)
setting_values = st.lists(
    st.tuples(
        st.one_of(st.integers(1, 8), st.integers(0, 0xFFFF)),
        st.one_of(
            st.sampled_from(
                [0, 1, 2, 16383, 16384, 16777215, 16777216, 2**31 - 1, 2**31, 2**32 - 1]
            ),
            st.integers(0, 2**32 - 1),
        ),
    ),
    max_size=5,
).map(tuple)
codes = st.one_of(st.integers(0, 15), st.integers(0, 2**32 - 1))


def action(kind: str, target: st.SearchStrategy[Target], *args: st.SearchStrategy[Any]) -> Any:
    return st.builds(lambda t, *a: Action(kind, t, tuple(a)), target, *args)


actions_plain = st.one_of(
    action("response", stream_targets, statuses),
    action("headers", stream_targets, status_values, extra_fields, header_flags),
    action(
        "indexed_headers",
        stream_targets,
        st.lists(
            st.tuples(
                st.sampled_from([b":status", b"x-a", b"server"]),
                st.sampled_from([b"200", b"v", b"w" * 300]),
            ),
            max_size=3,
        ).map(tuple),
        header_flags,
    ),
    action("random_block", stream_targets, st.binary(max_size=64), header_flags),
    action(
        "data",
        stream_targets,
        st.sampled_from([0, 1, 100, 16384, 16385]),
        st.booleans(),
        st.none() | st.integers(0, 255),
    ),
    action("burst", stream_targets, st.integers(1, 24)),
    action("head_burst", pending, st.integers(1, 40), st.sampled_from([1, 1000, 16384])),
    action("settings", st.just(Target()) | targets, setting_values, st.booleans()),
    action(
        "window",
        st.just(Target()) | stream_targets,
        st.sampled_from([0, 1, 2**31 - 1]) | st.integers(0, 2**31 - 1),
        st.integers(1, 3),
    ),
    action("rst", stream_targets, codes),
    action("ping", st.just(Target()) | targets, st.booleans(), st.binary(min_size=8, max_size=8)),
    action(
        "goaway",
        st.just(Target()) | targets,
        st.sampled_from([0, 1, 3, 2**31 - 1]) | st.integers(0, 2**31 - 1),
        codes,
        st.binary(max_size=16),
    ),
    action("priority", stream_targets, st.none() | ids, st.integers(0, 255), st.booleans()),
    action("continuation", stream_targets, st.binary(max_size=32), st.booleans()),
    action(
        "continuation_flood", stream_targets, st.integers(1, 200), st.sampled_from([1, 100, 1000])
    ),
    action("push", stream_targets, ids),
    action(
        "raw",
        targets,
        st.one_of(st.sampled_from([*range(10), 0xA, 0xB, 0x10, 0xFA, 0xFF]), st.integers(0, 255)),
        st.integers(0, 255),
        st.binary(max_size=64),
        st.sampled_from([None] * 6 + [0, 3, 7, 100, 1000, 16385, 2**24 - 1]),
    ),
)
actions = st.one_of(
    actions_plain,
    st.builds(
        lambda a, m: dataclasses.replace(a, mutations=tuple(m)),
        actions_plain,
        st.lists(mutation, min_size=1, max_size=4),
    ),
)


legal_settings = st.lists(
    st.one_of(
        st.tuples(st.just(0x1), st.integers(0, 2**32 - 1)),  # HEADER_TABLE_SIZE
        st.tuples(st.just(0x2), st.just(0)),  # ENABLE_PUSH off
        st.tuples(st.just(0x3), st.integers(0, 2**32 - 1)),  # MAX_CONCURRENT_STREAMS
        st.tuples(st.just(0x4), st.integers(0, 2**31 - 1)),  # INITIAL_WINDOW_SIZE
        st.tuples(st.just(0x5), st.integers(16384, 2**24 - 1)),  # MAX_FRAME_SIZE
        st.tuples(st.just(0x6), st.integers(0, 2**32 - 1)),  # MAX_HEADER_LIST_SIZE
        st.tuples(st.integers(0x7, 0xFFFF), st.integers(0, 2**32 - 1)),  # unknown: ignored
    ),
    max_size=4,
).map(tuple)
# What a correct (if odd) backend may send: the tunnel must keep working through all of it.
actions_legal = st.one_of(
    action("response", pending, st.sampled_from([200, 204, 404, 500, 503])),
    action(
        "headers",
        pending,
        st.sampled_from([b"103", b"100"]),
        st.just(((b"link", b"</a>; rel=preload"),)),
        st.just(("END_HEADERS",)),
    ),
    action(
        "data",
        st.builds(Target, pending=st.integers(0, 2)),
        st.integers(0, 100),
        st.just(False),
        st.none(),
    ),
    action("settings", st.just(Target()), legal_settings, st.just(False)),
    action("window", st.just(Target()) | pending, st.integers(1, 2**16), st.just(1)),
    action("rst", pending, st.integers(0, 13)),
    action("ping", st.just(Target()), st.just(False), st.binary(min_size=8, max_size=8)),
    action("head_burst", pending, st.integers(1, 3), st.sampled_from([1, 1000, 16384])),
    action(
        "priority",
        pending | st.builds(Target, literal=st.integers(1, 99)),
        ids,
        st.integers(0, 255),
        st.booleans(),
    ),
    action(
        "raw",
        st.just(Target()),
        st.integers(0x10, 0xFF),
        st.integers(0, 255),
        st.binary(max_size=64),
        st.none(),
    ),  # unknown frame types are ignored (RFC 9113, section 4.1)
)
mostly_legal = st.builds(
    lambda acts, hostile, at: tuple(acts[:at] + hostile + acts[at:]),
    st.lists(actions_legal, min_size=1, max_size=12),
    st.lists(actions, max_size=1),
    st.integers(0, 12),
)


@dataclass(frozen=True)
class Scenario:
    users: tuple[tuple[str, int], ...]  # (method, body size) per user request
    actions: tuple[Action, ...]
    pauses: tuple[bool, ...]  # after each action: pump what the router sent for 20 ms


def scenarios(acts: st.SearchStrategy[Any]) -> st.SearchStrategy[Scenario]:
    return st.builds(
        lambda users, acts, pauses: Scenario(
            tuple(users), tuple(acts), tuple((pauses * len(acts))[: len(acts)])
        ),
        st.lists(
            st.tuples(st.sampled_from(["GET", "POST"]), st.sampled_from([0, 10, 20000])),
            min_size=1,
            max_size=3,
        ),
        acts,
        st.lists(st.booleans(), min_size=1, max_size=4),
    )


# -- one example ----------------------------------------------------------------------------


@dataclass
class Outcomes:
    counts: Counter[str] = field(default_factory=Counter)
    examples: int = 0
    skipped: int = 0
    peak: int = 0
    slowest: list[tuple[float, str]] = field(default_factory=list)
    start: float = field(default_factory=time.monotonic)

    def begin(self) -> int | None:
        if time.monotonic() - self.start > BUDGET:
            self.skipped += 1
            return None
        self.examples += 1
        return self.examples

    def report(self, label: str) -> None:
        slow = "; ".join(f"{t:.2f} s: {w}" for t, w in self.slowest)
        print(
            f"\n{label}: {self.examples} examples in {time.monotonic() - self.start:.1f} s "
            f"({self.skipped} skipped over the {BUDGET:g} s budget); outcomes "
            f"{dict(self.counts.most_common())}; traced peak {self.peak / 2**20:.1f} MiB; "
            f"slowest: {slow}"
        )


def run_example(
    router: RouterThread,
    errors: ErrorRecords,
    pool: concurrent.futures.ThreadPoolExecutor,
    out: Outcomes,
    scenario: Scenario,
) -> None:
    n = out.begin()
    if n is None:
        return
    began = time.monotonic()
    what = repr(scenario)
    tracemalloc.reset_peak()
    baseline, _ = tracemalloc.get_traced_memory()
    host, instance = f"fuzz-{n}.test", f"fuzz-{n}"
    backend = FakeBackend(router, instance, host)
    sent_status = False
    try:
        assert wait_registered(router, instance, True, 5), f"tunnel {n} did not register"
        futures = [
            pool.submit(user_request, router.http, host, method, b"u" * size)
            for method, size in scenario.users
        ]
        backend.wait_requests(len(futures))
        assert len(backend.order) == len(futures), (
            f"the router forwarded {len(backend.order)} of {len(futures)} requests: {what}"
        )
        sent = 0
        for act, pause in zip(scenario.actions, scenario.pauses, strict=True):
            if backend.closed:
                break
            data = act.build(backend.order)
            if sent + len(data) > MAX_SENT:
                break
            sent += len(data)
            sent_status = sent_status or act.kind in STATUS_KINDS or bool(act.mutations)
            if not backend.send(data):
                break
            if act.kind == "response" and not act.mutations:  # that stream is done
                backend.open.pop(act.target.resolve(backend.order), None)
            backend.pump(0.02 if pause else 0)

        # The tunnel keeps working (our PING is answered) or the router closes it.
        ping = PingFrame(0, opaque_data=MARKER).serialize()
        if not backend.closed and backend.send(ping):
            deadline = time.monotonic() + PING_WAIT
            while not (backend.pinged or backend.closed) and time.monotonic() < deadline:
                backend.pump(0.02)
        if not (backend.pinged or backend.closed):
            # The router is inside a frame our bytes never finished: end it with zeros.
            size = backend.max_frame or 16384
            backend.send(b"\x00" * (size + 9))
            deadline = time.monotonic() + BOUND
            while not backend.closed and time.monotonic() < deadline:
                backend.pump(0.05)
            assert backend.closed, f"tunnel neither answered a PING nor closed: {what}"
            ending = "closed after flush"
        elif backend.pinged:
            ending = "alive"
            for sid in list(backend.open):
                backend.send(valid_response(sid))
            deadline = time.monotonic() + BOUND
            while not all(f.done() for f in futures) and time.monotonic() < deadline:
                backend.pump(0.02)
        else:
            ending = "closed" + (" with GOAWAY" if backend.goaway else "")
    finally:
        backend.close()

    done, _ = concurrent.futures.wait(futures, timeout=BOUND)
    assert len(done) == len(futures), f"{len(futures) - len(done)} users hung after: {what}"
    for future in futures:
        result = future.result()
        out.counts[f"user {result.how} {result.status}"] += 1
        assert result.how in ("complete", "cut"), f"user got {result} after: {what}"
        assert result.status is not None
        if result.status not in ROUTER_STATUSES and (result.status, result.body) != (200, BODY):
            assert sent_status, f"user got {result} though the backend sent no status: {what}"
            assert 200 <= result.status <= 599, result
    out.counts[ending] += 1
    assert wait_registered(router, instance, False, BOUND), f"tunnel {n} stayed after: {what}"
    _, peak = tracemalloc.get_traced_memory()
    out.peak = max(out.peak, peak - baseline)
    assert peak - baseline < MEMORY_BOUND, f"traced peak +{(peak - baseline) >> 20} MiB: {what}"
    assert router.alive(), f"the router died after {what}: {router.error!r}"
    assert not errors.records, f"logged after {what}:\n{errors.describe()}"
    fresh_request(router)
    fresh_tunnel(router, n)
    took = time.monotonic() - began
    out.slowest = sorted([*out.slowest, (took, what[:160])], reverse=True)[:3]


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


@pytest.mark.timeout(120)
def test_random_frames_from_a_backend(
    router: RouterThread,
    errors: ErrorRecords,
    users: concurrent.futures.ThreadPoolExecutor,
    traced: None,
) -> None:
    out = Outcomes()

    @settings(max_examples=80, **FUZZ_SETTINGS)
    @given(scenarios(st.lists(actions, min_size=1, max_size=12)))
    def example(scenario: Scenario) -> None:
        run_example(router, errors, users, out, scenario)

    try:
        example()
    finally:
        out.report("random frames from a backend")


@pytest.mark.timeout(120)
def test_mostly_legal_frames_from_a_backend(
    router: RouterThread,
    errors: ErrorRecords,
    users: concurrent.futures.ThreadPoolExecutor,
    traced: None,
) -> None:
    """Legal frames in odd orders, at most one hostile action among them: deeper states."""
    out = Outcomes()

    @settings(max_examples=60, **FUZZ_SETTINGS)
    @given(scenarios(mostly_legal))
    def example(scenario: Scenario) -> None:
        run_example(router, errors, users, out, scenario)

    try:
        example()
    finally:
        out.report("mostly legal frames from a backend")
    assert out.counts["alive"] > 0, "no example kept its tunnel alive: the strategy is broken"


# -- the handshake, against the live tunnel port --------------------------------------------

HEAD_REQUEST = (
    b"HEAD /.well-known/ptth HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
    b"Upgrade: reverse\r\nALPN: h2\r\n\r\n"
)


def handshake_answer(addr: tuple[str, int], raw: bytes) -> str:
    """Send ``raw`` and half-close; what the router answered, as the helper reads it."""
    client = ClientHandshake(Registration(), f"{addr[0]}:{addr[1]}")
    client.request_bytes()
    with socket.create_connection(addr, timeout=BOUND) as sock:
        try:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before we were done: the answer is still there to read
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                return "timeout"
            except ConnectionResetError:
                data = b""
            try:
                if client.receive(data) is not None:
                    return "101"
            except HandshakeRefused as exc:
                return str(exc.status)
            except HandshakeError:
                return "closed without an answer"
        return "timeout"


@pytest.mark.timeout(60)
def test_handshake_garbage_never_kills_the_router(
    router: RouterThread, errors: ErrorRecords
) -> None:
    """Whatever a stranger sends the tunnel port is answered (a refusal, or a 101 when the
    mutation left it valid), and the router lives on. A HEAD request used to crash it."""
    assert handshake_answer(router.tunnel, HEAD_REQUEST) == "400"
    assert router.alive(), f"the router died of a HEAD handshake: {router.error!r}"
    seen: Counter[str] = Counter()

    @settings(max_examples=150, **FUZZ_SETTINGS)
    @given(st.one_of(mutated(), header_soup(), st.binary(min_size=1, max_size=512)))
    def example(raw: bytes) -> None:
        answer = handshake_answer(router.tunnel, raw)
        seen[answer] += 1
        assert answer in {"101", "400", "408", "426", "431"}, f"{answer} for {raw!r}"
        assert router.alive(), f"the router died after {raw!r}: {router.error!r}"
        assert not errors.records, f"logged after {raw!r}:\n{errors.describe()}"

    try:
        example()
    finally:
        print(f"\nhandshake garbage: answers {dict(seen.most_common())}")
    # Tunnels that a mutation left valid are closed: wait until the router saw them go.
    deadline = time.monotonic() + 5
    while router.tunnels_of_all() > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    fresh_request(router)
    fresh_tunnel(router, 0)

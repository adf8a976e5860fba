"""Fuzzing the native front end with hypothesis: what a fake user sends is random, what the
router does with it is not allowed to be.

* HTTP/2: after a valid preface and SETTINGS, (a) a random sequence of frames built with
  hyperframe or by hand (random types, flags, stream ids, lengths, payloads, and well-formed
  frames of every type with random fields), (b) byte mutations of a valid request (HEADERS and
  DATA).
* HTTP/1.1: (a) request heads from a grammar-ish strategy (methods, targets, versions, framing
  headers, line endings, bodies, pipelining), (b) byte mutations of a valid request.

Each example runs on a connection of its own and must end cleanly within 5 s: over h2 the client
ends what it sent with a PING and then zero bytes, one more than the router's
SETTINGS_MAX_FRAME_SIZE (they complete any frame the router is still reading and are a
connection error after it), so the router must answer GOAWAY or close;
over HTTP/1.1 the router must answer or close (the client half-closes if it has done neither
after 0.1 s). After
every example the router must still serve a fresh request (HTTP/1.1, and h2c in the h2 tests),
and nothing may have been logged at ERROR with a traceback on the ``router`` or ``ptth`` loggers.
The process's RSS (router, backend and client all live in it) may grow by less than 100 MiB
per test.

The router and its backend run once per test, in a thread of their own (``trio.run``); the
examples are plain blocking sockets, driven by an inner ``@given`` function so that hypothesis
and pytest-trio never meet. Shrinking is off: a hang costs 5 s per attempt, and the failing
example is printed whole instead.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import hpack
import pytest
import trio
from hyperframe.frame import (
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ptth.types import Receive, Scope, Send
from tests.e2e.test_user_attacks import rss_mib
from tests.support import read_body, serve_lifespan, start_backend, start_router

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MARKER = b"fuzzdone"
BOUND = 5.0  # seconds a connection has to end after the client is done
GRACE = 0.1  # seconds an HTTP/1.1 request gets before the client half-closes
BUDGET = 12.0  # seconds of examples per test (four tests: the file stays under a minute)
FUZZ_SETTINGS: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": list(HealthCheck),
    "phases": [Phase.explicit, Phase.generate],
    "database": None,
    "report_multiple_bugs": False,
}


# -- the router, in a thread of its own -----------------------------------------------------


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers everything at once (never holds: a held request would look like a hang);
    reads the body first, so that body framing matters."""
    if scope["type"] == "lifespan":
        await serve_lifespan(receive, send)
        return
    body = await read_body(receive)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok" if not body else b"%d" % len(body)})


@dataclass
class RouterThread:
    http: tuple[str, int] | None = None
    token: trio.lowlevel.TrioToken | None = None
    stop: Callable[[], None] | None = None
    error: BaseException | None = None
    ready: threading.Event = field(default_factory=threading.Event)


class ErrorRecords(logging.Handler):
    """Records logged at ERROR or above with a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)

    def describe(self) -> str:
        return "\n".join(f"{r.name}: {r.getMessage()}\n{self.format(r)}" for r in self.records[:3])


@pytest.fixture
def router() -> Iterator[RouterThread]:
    handle = RouterThread()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            running = await start_router(nursery)
            await start_backend(nursery, app, running.tunnel)
            await running.wait_tunnels(1)
            handle.http = running.addresses.http
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

    thread = threading.Thread(target=run, name="fuzz-router", daemon=True)
    thread.start()
    assert handle.ready.wait(20), "the router did not start"
    assert handle.http is not None, f"the router did not start: {handle.error!r}"
    try:
        yield handle
    finally:
        if thread.is_alive() and handle.stop is not None and handle.token is not None:
            trio.from_thread.run_sync(handle.stop, trio_token=handle.token)
        thread.join(20)
        assert not thread.is_alive(), "the router thread did not stop"
        assert handle.error is None, repr(handle.error)


@pytest.fixture
def errors() -> Iterator[ErrorRecords]:
    handler = ErrorRecords()
    loggers = [logging.getLogger(name) for name in ("router", "ptth")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


# -- checks shared by every example ---------------------------------------------------------


def recv_until_closed(
    sock: socket.socket,
    until: Callable[[bytes], bool],
    received: bytes = b"",
    timeout: float = BOUND,
) -> tuple[str, bytes]:
    """Read (after ``received``) until ``until(received)``, EOF or a reset, for at most
    ``timeout`` s: ("done"|"eof"|"reset"|"timeout", all received)."""
    deadline = time.monotonic() + timeout
    while True:
        if until(received):
            return "done", received
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout", received
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return "timeout", received
        except (ConnectionResetError, BrokenPipeError):
            return "reset", received
        if not data:
            return "eof", received
        received += data


def fresh_h1(addr: tuple[str, int]) -> bytes:
    with socket.create_connection(addr, timeout=BOUND) as sock:
        sock.sendall(b"GET /fresh HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        _, data = recv_until_closed(sock, final_head)
    return data


def fresh_h2(addr: tuple[str, int]) -> int | None:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.initiate_connection()
    conn.send_headers(
        1,
        [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", b"app.test"),
            (b":path", b"/fresh"),
        ],
        end_stream=True,
    )
    status = None
    with socket.create_connection(addr, timeout=BOUND) as sock:
        sock.sendall(conn.data_to_send())
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                if isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    return status
            sock.sendall(conn.data_to_send())
    return None


def check_router(router: RouterThread, errors: ErrorRecords, what: str, h2c: bool) -> None:
    assert router.http is not None
    assert router.error is None, f"the router died after {what}: {router.error!r}"
    reply = fresh_h1(router.http)
    assert reply.startswith(b"HTTP/1.1 200"), f"no fresh HTTP/1.1 request after {what}: {reply!r}"
    if h2c:
        assert fresh_h2(router.http) == 200, f"no fresh h2c request after {what}"
    assert not errors.records, f"logged after {what}:\n{errors.describe()}"


# -- HTTP/2 ---------------------------------------------------------------------------------


def raw_frame(kind: int, flags: int, stream_id: int, payload: bytes, length: int | None = None):
    size = len(payload) if length is None else length
    return size.to_bytes(3, "big") + bytes([kind, flags]) + stream_id.to_bytes(4, "big") + payload


def client_preface() -> bytes:
    return PREFACE + SettingsFrame(0).serialize()


def goaway_or_close(data: bytes) -> bool:
    """A GOAWAY frame among the server's frames."""
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        if data[3] == 0x7:
            return True
        data = data[9 + length :]
    return False


def frame_types(data: bytes) -> Counter[int]:
    seen: Counter[int] = Counter()
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        seen[data[3]] += 1
        data = data[9 + length :]
    return seen


def goaway_code(data: bytes) -> int | None:
    code = None
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        if data[3] == 0x7 and len(data) >= 17:
            code = int.from_bytes(data[13:17], "big")
        data = data[9 + length :]
    return code


def max_frame_size(data: bytes) -> int | None:
    """SETTINGS_MAX_FRAME_SIZE in the server's first SETTINGS frame (16,384 when it names
    none); None until a whole SETTINGS frame came."""
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        if len(data) < 9 + length:
            return None
        if data[3] == 0x4 and not data[4] & 0x1:
            size = 16384
            for at in range(9, 9 + length - 5, 6):
                if int.from_bytes(data[at : at + 2], "big") == 0x5:
                    size = int.from_bytes(data[at + 2 : at + 6], "big")
            return size
        data = data[9 + length :]
    return None


def run_h2(addr: tuple[str, int], payload: bytes) -> tuple[str, bytes]:
    """Preface; once the server's SETTINGS came, ``payload``, a PING and the flush (zeros: one
    byte more than the largest frame the server takes, so that they finish whatever frame it
    is reading and then are DATA on stream 0); then wait for GOAWAY or close."""
    with socket.create_connection(addr, timeout=BOUND) as sock:
        sock.sendall(client_preface())
        how, received = recv_until_closed(sock, lambda data: max_frame_size(data) is not None)
        size = max_frame_size(received)
        if size is None:
            return how, received
        flush = b"\x00" * (size + 9)
        try:
            sock.sendall(payload + PingFrame(0, opaque_data=MARKER).serialize() + flush)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the router already gave up on us: reading says how
        return recv_until_closed(sock, goaway_or_close, received)


FRAME_TYPES = [*range(10), 0xA, 0xB, 0x10, 0xFA, 0xFF]
stream_ids = st.one_of(
    st.sampled_from([0, 1, 2, 3, 5, 7, 99, 2**31 - 1, 2**31 + 1]),
    st.integers(0, 2**32 - 1),
)


@st.composite
def random_frames(draw: st.DrawFn) -> bytes:
    """Anything with a frame header: the length field matches the payload unless it is made
    larger than any frame the router takes (which it must refuse at once)."""
    kind = draw(st.one_of(st.sampled_from(FRAME_TYPES), st.integers(0, 255)))
    flags = draw(
        st.one_of(st.sampled_from([0, 0x1, 0x4, 0x5, 0x8, 0x20, 0x25, 0x2D]), st.integers(0, 255))
    )
    payload = draw(st.binary(max_size=64))
    length = draw(st.sampled_from([None] * 8 + [16385, 2**24 - 1]))
    return raw_frame(kind, flags, draw(stream_ids), payload, length)


@st.composite
def well_formed_frames(draw: st.DrawFn) -> bytes:
    """Frames of every type as hyperframe builds them, with random fields."""
    sid = draw(st.sampled_from([0, 1, 3, 5, 2**31 - 1]))
    odd = draw(st.sampled_from([1, 3, 5, 7]))
    encoder = hpack.Encoder()
    headers = [
        (b":method", draw(st.sampled_from([b"GET", b"POST", b"CONNECT", b"", b"get"]))),
        (b":scheme", draw(st.sampled_from([b"http", b"https", b""]))),
        (b":authority", draw(st.sampled_from([b"app.test", b"", b"a b"]))),
        (b":path", draw(st.sampled_from([b"/", b"/fast", b"", b"*", b"x"]))),
    ]
    headers = draw(st.permutations(headers))[: draw(st.integers(0, 4))]
    headers += draw(
        st.lists(
            st.tuples(
                st.sampled_from(
                    [
                        b"content-length",
                        b"te",
                        b"connection",
                        b"x-a",
                        b"Upper",
                        b":status",
                        b"host",
                        b"transfer-encoding",
                    ]
                ),
                st.sampled_from([b"0", b"5", b"-1", b"trailers", b"chunked", b"a\r\nb", b""]),
            ),
            max_size=3,
        )
    )
    choice = draw(st.integers(0, 8))
    if choice == 0:
        frame: Any = HeadersFrame(odd, data=encoder.encode(headers))
        for flag in draw(st.sets(st.sampled_from(["END_STREAM", "END_HEADERS"]))):
            frame.flags.add(flag)
    elif choice == 1:
        frame = DataFrame(sid or 1, data=draw(st.binary(max_size=32)))
        if draw(st.booleans()):
            frame.flags.add("END_STREAM")
    elif choice == 2:
        frame = SettingsFrame(
            0,
            settings=draw(
                st.dictionaries(st.integers(0, 10), st.integers(0, 2**32 - 1), max_size=4)
            ),
        )
    elif choice == 3:
        frame = WindowUpdateFrame(sid, window_increment=draw(st.integers(0, 2**31 - 1)))
    elif choice == 4:
        frame = RstStreamFrame(sid or 1, error_code=draw(st.integers(0, 2**32 - 1)))
    elif choice == 5:
        frame = PingFrame(0, opaque_data=draw(st.binary(min_size=8, max_size=8)))
        if draw(st.booleans()):
            frame.flags.add("ACK")
    elif choice == 6:
        frame = GoAwayFrame(
            0, last_stream_id=draw(st.integers(0, 2**31 - 1)), error_code=draw(st.integers(0, 15))
        )
    elif choice == 7:
        frame = PriorityFrame(
            odd,
            depends_on=draw(st.sampled_from([0, 1, 3, odd])),
            stream_weight=draw(st.integers(0, 255)),
        )
    else:
        frame = HeadersFrame(odd, data=draw(st.binary(max_size=32)))
        frame.flags.add("END_HEADERS")
    data: bytes = frame.serialize()
    return data


def valid_request(method: bytes, body: bytes) -> bytes:
    encoder = hpack.Encoder()
    headers = [
        (b":method", method),
        (b":scheme", b"http"),
        (b":authority", b"app.test"),
        (b":path", b"/fuzz"),
    ]
    if body:
        headers.append((b"content-length", str(len(body)).encode()))
    frame = HeadersFrame(1, data=encoder.encode(headers))
    frame.flags.add("END_HEADERS")
    if not body:
        frame.flags.add("END_STREAM")
        return frame.serialize()
    data = DataFrame(1, data=body)
    data.flags.add("END_STREAM")
    return frame.serialize() + data.serialize()


mutation = st.tuples(
    st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
    st.integers(0, 10_000),
    st.integers(0, 255),
)


def mutate(data: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for op, where, value in mutations:
        if not out and op != "insert":
            continue
        at = where % (len(out) + (op == "insert"))
        if op == "flip":
            out[at] ^= 1 << (value % 8)
        elif op == "set":
            out[at] = value
        elif op == "insert":
            out[at:at] = bytes([value])
        elif op == "delete":
            del out[at]
        else:
            del out[at:]
    return bytes(out)


@dataclass
class Outcomes:
    """What the examples of one test came to; past ``BUDGET`` seconds the rest are skipped
    (and counted), so that a slow router shows up as a number rather than a pytest timeout."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: int = 0
    skipped: int = 0
    slowest: list[tuple[float, str]] = field(default_factory=list)
    start: float = field(default_factory=time.monotonic)
    rss_before: float = field(default_factory=rss_mib)

    def begin(self) -> bool:
        if time.monotonic() - self.start > BUDGET:
            self.skipped += 1
            return False
        self.examples += 1
        return True

    def took(self, seconds: float, what: str) -> None:
        self.slowest = sorted([*self.slowest, (seconds, what[:120])], reverse=True)[:3]

    def run(self, label: str, example: Callable[[], None]) -> None:
        """Run the examples; the summary is printed whether they pass or not."""
        try:
            example()
        finally:
            self.report(label)
        growth = rss_mib() - self.rss_before
        assert growth < 100, f"RSS grew by {growth:.0f} MiB"

    def report(self, label: str) -> None:
        growth = rss_mib() - self.rss_before
        slow = "; ".join(f"{t:.2f} s: {w}" for t, w in self.slowest)
        print(
            f"\n{label}: {self.examples} examples in {time.monotonic() - self.start:.1f} s "
            f"({self.skipped} skipped over the {BUDGET:g} s budget); "
            f"outcomes {dict(self.counts.most_common())}; RSS {self.rss_before:.0f} MiB "
            f"{growth:+.1f} MiB; slowest: {slow}"
        )


def h2_example(router: RouterThread, errors: ErrorRecords, out: Outcomes, payload: bytes) -> None:
    assert router.http is not None
    if not out.begin():
        return
    began = time.monotonic()
    how, data = run_h2(router.http, payload)
    what = f"h2 payload {payload.hex()}"
    assert how != "timeout", (
        f"no GOAWAY or close within {BOUND:g} s after {what}; got {data[:200]!r}"
    )
    code = goaway_code(data)
    alive = PingFrame(0, flags=["ACK"], opaque_data=MARKER).serialize() in data
    ending = f"GOAWAY {code}" if code is not None else how
    out.counts[ending + (" after PING ACK" if alive else "")] += 1
    check_router(router, errors, what, h2c=True)
    out.took(time.monotonic() - began, what)


@pytest.mark.timeout(90)
def test_random_h2_frames(router: RouterThread, errors: ErrorRecords) -> None:
    out = Outcomes()

    @settings(max_examples=150, **FUZZ_SETTINGS)
    @given(st.lists(st.one_of(random_frames(), well_formed_frames()), min_size=1, max_size=12))
    def example(frames: list[bytes]) -> None:
        h2_example(router, errors, out, b"".join(frames))

    out.run("random h2 frames", example)


@pytest.mark.timeout(90)
def test_mutated_h2_requests(router: RouterThread, errors: ErrorRecords) -> None:
    out = Outcomes()

    @settings(max_examples=120, **FUZZ_SETTINGS)
    @given(
        st.sampled_from([b"GET", b"POST"]),
        st.binary(max_size=40),
        st.lists(mutation, min_size=1, max_size=6),
        st.integers(1, 3),
    )
    def example(
        method: bytes, body: bytes, mutations: list[tuple[str, int, int]], repeat: int
    ) -> None:
        request = valid_request(method, body if method == b"POST" else b"")
        h2_example(router, errors, out, mutate(request, mutations) * repeat)

    out.run("mutated h2 requests", example)


# -- HTTP/1.1 -------------------------------------------------------------------------------


methods = st.one_of(
    st.sampled_from(
        [
            b"GET",
            b"POST",
            b"HEAD",
            b"PUT",
            b"DELETE",
            b"OPTIONS",
            b"CONNECT",
            b"TRACE",
            b"PATCH",
            b"PRI",
            b"get",
            b"G T",
            b"",
        ]
    ),
    st.binary(min_size=1, max_size=8),
)
targets = st.one_of(
    st.sampled_from(
        [
            b"/",
            b"/fast",
            b"*",
            b"http://app.test/x",
            b"app.test:80",
            b"//x",
            b"/a?b=c#d",
            b"/%00",
            b"/\x80",
            b"/" + b"a" * 9000,
            b"",
        ]
    ),
    st.binary(max_size=16),
)
versions = st.sampled_from(
    [
        b"HTTP/1.1",
        b"HTTP/1.0",
        b"HTTP/2.0",
        b"HTTP/0.9",
        b"HTTP/1.1x",
        b"http/1.1",
        b"HTTP/1",
        b"",
        b"HTTP/1.1 extra",
    ]
)
names = st.one_of(
    st.sampled_from(
        [
            b"Host",
            b"Content-Length",
            b"Transfer-Encoding",
            b"Connection",
            b"Expect",
            b"Upgrade",
            b"HTTP2-Settings",
            b"TE",
            b"Trailer",
            b"X-A",
            b"",
            b" Host",
            b"Host ",
            b"Content-Length ",
            b"content-length",
            b"X-Forwarded-For",
        ]
    ),
    st.binary(min_size=1, max_size=8),
)
values = st.one_of(
    st.sampled_from(
        [
            b"app.test",
            b"0",
            b"5",
            b"-1",
            b"+5",
            b"0x5",
            b"5, 5",
            b"5,6",
            b"18446744073709551616",
            b"chunked",
            b"gzip, chunked",
            b"chunked, gzip",
            b"identity",
            b"close",
            b"keep-alive, Upgrade",
            b"Upgrade, HTTP2-Settings",
            b"h2c",
            b"websocket",
            b"100-continue",
            b"AAMAAABkAAQAAP__",
            b"a\x00b",
            b"\x80\xff",
            b" ",
            b"",
            b"a" * 10_000,
        ]
    ),
    st.binary(max_size=24),
)
bodies = st.one_of(
    st.sampled_from(
        [
            b"",
            b"hello",
            b"5\r\nhello\r\n0\r\n\r\n",
            b"ffffffffffffffffff\r\n",
            b"0\r\n\r\n",
            b"3\r\nab",
            b"5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
            b"-1\r\n",
            b"5\nhello\n0\n\n",
        ]
    ),
    st.binary(max_size=64),
)


@st.composite
def request_heads(draw: st.DrawFn) -> bytes:
    eol = draw(st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r", b"\r\r\n"]))
    line = draw(methods) + b" " + draw(targets) + b" " + draw(versions)
    fields = draw(st.lists(st.tuples(names, values), max_size=8))
    if draw(st.booleans()):
        fields.insert(0, (b"Host", b"app.test"))
    if draw(st.integers(0, 20)) == 0:
        fields += [(b"X-N%d" % i, b"v") for i in range(draw(st.sampled_from([150, 1000])))]
    sep = draw(st.sampled_from([b": ", b":", b" : ", b":\t", b"\t: "]))
    head = eol.join([line, *(n + sep + v for n, v in fields)])
    ending = draw(st.sampled_from([eol + eol] * 8 + [eol, b""]))
    return head + ending + draw(bodies)


VALID_H1 = [
    b"GET /fast HTTP/1.1\r\nHost: app.test\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /echo HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
]


def run_h1(addr: tuple[str, int], payload: bytes) -> tuple[str, bytes]:
    """Send ``payload``; give the router ``GRACE`` seconds to answer (a whole final response
    head) or close; else half-close and read until it does either within ``BOUND``. (The half
    close comes late because the router treats a client's FIN as the user leaving: a request
    followed at once by one is dropped, unanswered.)"""
    with socket.create_connection(addr, timeout=BOUND) as sock:
        try:
            sock.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            return "reset", b""
        how, received = recv_until_closed(sock, final_head, timeout=GRACE)
        if how != "timeout":
            return how, received
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        how, received = recv_until_closed(sock, final_head, received)
        return ("half-closed, " + how if how != "done" else how), received


def status_line(data: bytes) -> bool:
    return len(data) >= 12 and data[:9] in (b"HTTP/1.1 ", b"HTTP/1.0 ") and data[9:12].isdigit()


def final_head(data: bytes) -> bool:
    """A whole final (non-1xx) response head came: the router answered; whether it then
    closes at once is not waited for (keep-alive after a half-close is allowed)."""
    while status_line(data) and b"\r\n\r\n" in data:
        head, _, data = data.partition(b"\r\n\r\n")
        if head[9:10] != b"1":
            return True
    return False


def h1_example(router: RouterThread, errors: ErrorRecords, out: Outcomes, payload: bytes) -> None:
    assert router.http is not None
    if not out.begin():
        return
    began = time.monotonic()
    how, data = run_h1(router.http, payload)
    what = f"HTTP/1.1 payload {payload[:300]!r} ({len(payload)} bytes)"
    if how.endswith("timeout"):
        assert status_line(data), f"neither a response nor a close within {BOUND:g} s after {what}"
        out.counts[f"{data[9:12].decode()} then nothing, open"] += 1
    elif how == "done":
        out.counts[f"{data[9:12].decode()}"] += 1
    else:
        assert not data or status_line(data), f"not HTTP in answer to {what}: {data[:200]!r}"
        out.counts[f"{data[9:12].decode() if data else 'no response'}, {how}"] += 1
    check_router(router, errors, what, h2c=False)
    out.took(time.monotonic() - began, what)


@pytest.mark.timeout(90)
def test_grammar_h1_requests(router: RouterThread, errors: ErrorRecords) -> None:
    out = Outcomes()

    @settings(max_examples=200, **FUZZ_SETTINGS)
    @given(st.lists(request_heads(), min_size=1, max_size=3))
    def example(heads: list[bytes]) -> None:
        h1_example(router, errors, out, b"".join(heads))

    out.run("grammar HTTP/1.1 requests", example)


@pytest.mark.timeout(90)
def test_mutated_h1_requests(router: RouterThread, errors: ErrorRecords) -> None:
    out = Outcomes()

    @settings(max_examples=150, **FUZZ_SETTINGS)
    @given(
        st.sampled_from(VALID_H1),
        st.lists(mutation, min_size=1, max_size=8),
        st.integers(1, 2),
    )
    def example(request: bytes, mutations: list[tuple[str, int, int]], repeat: int) -> None:
        h1_example(router, errors, out, mutate(request, mutations) * repeat)

    out.run("mutated HTTP/1.1 requests", example)

"""HTTP/1.1 request smuggling on the front end: a table of exact byte strings and what must happen.

Each row is written on a raw socket to a router on 127.0.0.1 with one in-process backend whose
app records, per request, the method, path, the exact ``scope["headers"]`` list and the whole
body. A row says which status lines the user must get back, in order (``100`` included when an
interim response is due), whether the connection must be closed afterwards, and, for accepted
rows, exactly what the backend received: the header pairs minus the fields the router adds
(``ROUTER_ADDED``), the Host it saw (the request's authority) and the body.

Framing errors close the connection after the error response (RFC 9112 §6.1, §11.2). Refused
rows carry a valid request pipelined behind the bad one in the same write (``SMUGGLED``): it
must never reach the backend, and neither may the refused request (no complete request is
recorded; a request whose head went through before its body turned out malformed must end
aborted, and ``/smuggled`` must never even start).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from ptth.types import Receive, Scope, Send
from tests.support import RunningRouter, serve_lifespan, start_backend, start_router

pytestmark = pytest.mark.timeout(20)

Pairs = list[tuple[str, str]]

ROUTER_ADDED = frozenset(
    {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "host"}
)
"""Fields the router sets itself; left out of the exact comparison (Host is checked apart)."""

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n"
"""A valid request appended behind every refused one: it must never reach the backend."""

CLOSE_WAIT = 1.5
"""Seconds a row waits for the router to close the connection (or for its responses)."""

HTTP2_SETTINGS = b"AAMAAABkAAQCAAAAAAIAAAAA"


# -- the recording backend --------------------------------------------------------------------


@dataclass
class Seen:
    """One request as the backend app saw it."""

    method: str
    path: str
    headers: Pairs
    body: bytes
    complete: bool  # the body ended normally (not by http.disconnect)


@dataclass
class Recorder:
    """Records every request it serves; answers 200 ``ok <path>`` once the body is complete."""

    started: list[tuple[str, str]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)

    @property
    def complete(self) -> list[Seen]:
        return [s for s in self.seen if s.complete]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        self.started.append((scope["method"], scope["path"]))
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in scope["headers"]]
        # Recorded at once and filled in as the body arrives: a failing row shows what the
        # backend received so far, even when the request never completes.
        seen = Seen(scope["method"], scope["path"], headers, b"", complete=False)
        self.seen.append(seen)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            seen.body += bytes(message.get("body", b""))
            if not message.get("more_body", False):
                seen.complete = True
                break
        if not seen.complete:
            # The stream is gone; this only spares a warning that the app sent nothing.
            await send({"type": "http.response.start", "status": 499, "headers": []})
            return
        payload = b"ok " + scope["path"].encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/plain"),
                    (b"content-length", b"%d" % len(payload)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


@asynccontextmanager
async def running(**config: Any) -> AsyncIterator[tuple[RunningRouter, Recorder]]:
    """A router (``config``: RouterConfig overrides) with one recording backend."""
    recorder = Recorder()
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, **config)
        backend = await start_backend(nursery, recorder, router.tunnel)
        await router.wait_tunnels(1)
        yield router, recorder
        await backend.stop()
        assert backend.error is None
        nursery.cancel_scope.cancel()


# -- the raw client ---------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: Pairs
    body: bytes


def _dechunk(data: bytes) -> tuple[bytes, int] | None:
    """The body of a chunked response at the start of ``data`` and the bytes it used."""
    body, pos = b"", 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            return None
        size = int(data[pos:end].split(b";")[0], 16)
        pos = end + 2
        if size == 0:
            trailer_end = data.find(b"\r\n\r\n", pos - 2)
            return (body, trailer_end + 4) if trailer_end >= 0 else None
        if len(data) < pos + size + 2:
            return None
        body += data[pos : pos + size]
        pos += size + 2


def parse_responses(data: bytes, closed: bool) -> tuple[list[Response], bytes]:
    """The complete responses at the start of ``data`` and what is left after them."""
    responses: list[Response] = []
    while data:
        head_end = data.find(b"\r\n\r\n")
        if head_end < 0:
            break
        lines = data[:head_end].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            break
        status = int(parts[1])
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        rest = data[head_end + 4 :]
        names = dict(headers)
        if 100 <= status < 200 or status in (204, 304):
            body, data = b"", rest
        elif "chunked" in names.get("transfer-encoding", "").lower():
            found = _dechunk(rest)
            if found is None:
                break
            body, data = found[0], rest[found[1] :]
        elif "content-length" in names:
            length = int(names["content-length"])
            if len(rest) < length:
                break
            body, data = rest[:length], rest[length:]
        elif closed:  # delimited by the close
            body, data = rest, b""
        else:
            break
        responses.append(Response(status, headers, body))
    return responses, data


@dataclass
class Exchange:
    responses: list[Response]
    closed: bool  # the router closed (or reset) the connection
    leftover: bytes  # bytes after the last complete response
    raw: bytes  # everything received

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]


def _finals(data: bytes) -> int:
    responses, _ = parse_responses(data, closed=False)
    return sum(1 for r in responses if r.status >= 200)


async def exchange(
    router: RunningRouter,
    raw: bytes,
    *,
    finals: int,
    wait_close: bool,
    after_100: bytes | None = None,
) -> Exchange:
    """Write ``raw`` in one go and read what comes back.

    Reading stops at the close (or reset), after ``CLOSE_WAIT`` seconds, or, unless
    ``wait_close``, once ``finals`` final responses are complete. ``after_100`` is written
    once a ``100 Continue`` arrived (as a client that sent ``Expect: 100-continue`` does).
    """
    received = b""
    closed = False
    stream = await trio.open_tcp_stream(*router.addresses.http)
    async with stream:
        try:
            await stream.send_all(raw)
        except trio.BrokenResourceError:
            closed = True
        pending = after_100
        with trio.move_on_after(CLOSE_WAIT):
            while not closed:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:  # reset by the router
                    closed = True
                    break
                if not chunk:
                    closed = True
                    break
                received += chunk
                if pending is not None:
                    responses, _ = parse_responses(received, closed=False)
                    if any(r.status == 100 for r in responses):
                        try:
                            await stream.send_all(pending)
                        except trio.BrokenResourceError:
                            closed = True
                        pending = None
                if not wait_close and _finals(received) >= finals:
                    break
    responses, leftover = parse_responses(received, closed)
    return Exchange(responses, closed, leftover, received)


# -- the table --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Forwarded:
    """What the backend must have received for one request of an accepted row."""

    path: str
    headers: Pairs = field(default_factory=list)  # exact, minus ROUTER_ADDED and ``maybe``
    body: bytes = b""
    method: str = "GET"
    host: str = "localhost"  # the one Host the backend sees (the request's authority)
    maybe: tuple[tuple[str, str], ...] = ()  # pairs that may appear (at most once each)


@dataclass(frozen=True)
class Row:
    raw: bytes
    statuses: tuple[int, ...]  # status codes the user gets, in order, 1xx included
    close: bool  # the connection must be closed after them (False: not checked)
    forwarded: tuple[Forwarded, ...] = ()  # empty: the backend must receive nothing
    config: tuple[tuple[str, Any], ...] = ()  # RouterConfig overrides
    after_100: bytes | None = None  # written once 100 Continue arrived


def refused(request: bytes, status: int = 400) -> Row:
    """A request the router must refuse and close on, with ``SMUGGLED`` pipelined behind it."""
    return Row(request + SMUGGLED, (status,), close=True)


def head(*lines: str, start: str = "POST / HTTP/1.1") -> bytes:
    """A request head: ``start``, ``lines`` (each CRLF-terminated), the empty line."""
    return "".join(f"{line}\r\n" for line in (start, *lines)).encode("latin-1") + b"\r\n"


HOST = "Host: localhost"
MANY_FIELDS = [HOST, *(f"X-Field-{i}: {i}" for i in range(100))]  # 101 field lines

ROWS = [
    pytest.param(
        refused(head(HOST, "Content-Length: 3", "Transfer-Encoding: chunked") + b"0\r\n\r\n"),
        id="01-cl-then-te",
    ),
    pytest.param(
        refused(head(HOST, "Transfer-Encoding: chunked", "Content-Length: 3") + b"0\r\n\r\n"),
        id="02-te-then-cl",
    ),
    pytest.param(
        refused(head(HOST, "Content-Length: 3", "Content-Length: 4") + b"abcd"),
        id="03-two-different-content-lengths",
    ),
    pytest.param(
        Row(
            head(HOST, "Content-Length: 3, 3", start="POST /cl HTTP/1.1") + b"abc",
            (200,),
            close=False,
            forwarded=(Forwarded("/cl", [("content-length", "3")], body=b"abc", method="POST"),),
        ),
        id="04-identical-content-length-list",
    ),
    pytest.param(refused(head(HOST, "Content-Length: +3") + b"abc"), id="05-content-length-plus"),
    pytest.param(refused(head(HOST, "X-A: a", "  b", start="GET / HTTP/1.1")), id="06-obs-fold"),
    pytest.param(
        refused(head(HOST, "Transfer-Encoding: xchunked") + b"3\r\nabc\r\n0\r\n\r\n", 501),
        id="07-te-unknown-coding",
    ),
    pytest.param(
        refused(head(HOST, "Transfer-Encoding: chunked, identity") + b"3\r\nabc\r\n0\r\n\r\n", 501),
        id="08-te-chunked-not-last",
    ),
    pytest.param(
        refused(head(HOST, "Transfer-Encoding: chunked") + b" 3\r\nabc\r\n0\r\n\r\n"),
        id="09-chunk-size-leading-space",
    ),
    pytest.param(
        refused(head(HOST, "Transfer-Encoding: chunked") + b"0x3\r\nabc\r\n0\r\n\r\n"),
        id="10-chunk-size-0x",
    ),
    pytest.param(
        refused(
            head(HOST, "Transfer-Encoding: chunked") + b"FFFFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n"
        ),
        id="11-chunk-size-18-hex-digits",
    ),
    pytest.param(refused(head(HOST, "X-A: a\x00b", start="GET / HTTP/1.1")), id="12-nul-in-value"),
    pytest.param(
        refused(head(HOST, "X-A: a\rb", start="GET / HTTP/1.1")), id="13-bare-cr-in-value"
    ),
    pytest.param(
        refused(head(HOST, "X-A: a\nX-Injected: 1", start="GET / HTTP/1.1")),
        id="14-bare-lf-in-value",
    ),
    pytest.param(refused(head(HOST, "Host: evil.test", start="GET / HTTP/1.1")), id="15-two-hosts"),
    pytest.param(refused(head(HOST, HOST, start="GET / HTTP/1.1")), id="15b-two-identical-hosts"),
    pytest.param(refused(head(start="GET / HTTP/1.1")), id="16-no-host"),
    pytest.param(
        refused(head(HOST, start="GET http://user@localhost/ HTTP/1.1")),
        id="17-userinfo-in-target",
    ),
    pytest.param(
        refused(
            head(HOST, "Transfer-Encoding: chunked", start="POST / HTTP/1.0")
            + b"3\r\nabc\r\n0\r\n\r\n"
        ),
        id="18-http10-chunked",
    ),
    pytest.param(
        Row(
            head(HOST, "Transfer-Encoding: chunked", start="POST /t HTTP/1.1")
            + b"3\r\nabc\r\n0\r\nContent-Length: 99\r\n\r\n",
            (200,),
            close=False,
            forwarded=(
                Forwarded("/t", body=b"abc", method="POST", maybe=(("content-length", "3"),)),
            ),
        ),
        id="19-content-length-in-trailers",
    ),
    pytest.param(
        Row(
            head("Host: b.test", start="GET http://a.test/p HTTP/1.1"),
            (200,),
            close=False,
            forwarded=(Forwarded("/p", host="a.test"),),
        ),
        id="20-absolute-form-authority-wins",
    ),
    pytest.param(
        refused(head("Host: example.com:443", start="CONNECT example.com:443 HTTP/1.1"), 405),
        id="21-connect",
    ),
    pytest.param(Row(head(HOST, start="TRACE / HTTP/1.1"), (405,), close=False), id="22-trace"),
    pytest.param(
        Row(
            head(
                HOST,
                "x_forwarded_for: 6.6.6.6",
                "content_length: 99",
                "X_Custom: 1",
                "X-Kept: yes",
                start="GET /u HTTP/1.1",
            ),
            (200,),
            close=False,
            forwarded=(Forwarded("/u", [("x-kept", "yes")]),),
        ),
        id="23-underscore-names-dropped",
    ),
    pytest.param(
        refused(head(HOST, "Connection: Content-Length", "Content-Length: 3") + b"abc"),
        id="24-connection-nominates-content-length",
    ),
    pytest.param(
        Row(
            head(
                HOST,
                "Connection: Upgrade, HTTP2-Settings",
                "Upgrade: h2c",
                f"HTTP2-Settings: {HTTP2_SETTINGS.decode()}",
                "X-Kept: yes",
                start="GET /h2c HTTP/1.1",
            ),
            (200,),
            close=False,
            forwarded=(Forwarded("/h2c", [("x-kept", "yes")]),),
        ),
        id="25-h2c-upgrade-ignored",
    ),
    pytest.param(
        Row(
            head(HOST, "Content-Length: 20", "Expect: 100-continue"),
            (413,),
            close=True,
            config=(("max_body_size", 10),),
        ),
        id="26-expect-over-max-body-size",
    ),
    pytest.param(
        Row(
            head(HOST, "Content-Length: 3", "Expect: 100-continue", start="POST /e HTTP/1.1"),
            (100, 200),
            close=False,
            forwarded=(
                Forwarded(
                    "/e",
                    [("content-length", "3")],
                    body=b"abc",
                    method="POST",
                    maybe=(("expect", "100-continue"),),
                ),
            ),
            after_100=b"abc",
        ),
        id="27-expect-small-body",
    ),
    pytest.param(
        refused(head(*MANY_FIELDS, start="GET / HTTP/1.1"), 431), id="28-101-header-fields"
    ),
    pytest.param(
        Row(
            head(
                HOST,
                "X-Real-IP: 6.6.6.6",
                "Proxy-Authorization: Basic Zm9vOmJhcg==",
                "X-Kept: yes",
                start="GET /r HTTP/1.1",
            ),
            (200,),
            close=False,
            forwarded=(Forwarded("/r", [("x-kept", "yes")]),),
        ),
        id="29-x-real-ip-proxy-authorization-stripped",
    ),
    pytest.param(
        refused(head("Host : localhost", start="GET / HTTP/1.1")), id="30-space-before-colon"
    ),
    pytest.param(
        Row(
            head(HOST, start="GET /first HTTP/1.1") + head(HOST, start="GET /second HTTP/1.1"),
            (200, 200),
            close=False,
            forwarded=(Forwarded("/first"), Forwarded("/second")),
        ),
        id="31-two-valid-pipelined",
    ),
    pytest.param(refused(b"GET / HTTP/1.1\nHost: localhost\n\n"), id="32-bare-lf-line-endings"),
]


def _describe(got: Exchange, recorder: Recorder) -> str:
    return (
        f"\n  statuses: {got.statuses}, closed: {got.closed}"
        f"\n  received: {got.raw[:600]!r}"
        f"\n  backend started: {recorder.started}"
        f"\n  backend saw: {recorder.seen}"
    )


def _check_forwarded(seen: Seen, want: Forwarded) -> None:
    assert (seen.method, seen.path) == (want.method, want.path)
    assert seen.complete
    assert seen.body == want.body
    assert [v for n, v in seen.headers if n == "host"] == [want.host]
    assert [v for n, v in seen.headers if n == "x-forwarded-for"] == ["127.0.0.1"]
    headers = [(n, v) for n, v in seen.headers if n not in ROUTER_ADDED]
    for pair in want.maybe:
        assert headers.count(pair) <= 1
        headers = [h for h in headers if h != pair]
    assert headers == want.headers


@pytest.mark.parametrize("row", ROWS)
async def test_smuggling_matrix(row: Row) -> None:
    finals = sum(1 for status in row.statuses if status >= 200)
    async with running(**dict(row.config)) as (router, recorder):
        got = await exchange(
            router, row.raw, finals=finals, wait_close=row.close, after_100=row.after_100
        )
        details = _describe(got, recorder)
        assert got.statuses == list(row.statuses), details
        if row.close:
            assert got.closed, "the connection stayed open after the response" + details
            assert got.leftover == b"", "bytes after the last response" + details
        if not row.forwarded:
            assert recorder.complete == [], "a request reached the backend" + details
            assert ("GET", "/smuggled") not in recorder.started, details
            return
        assert len(recorder.seen) == len(row.forwarded), details
        for seen, want in zip(recorder.seen, row.forwarded, strict=True):
            try:
                _check_forwarded(seen, want)
            except AssertionError as exc:
                raise AssertionError(f"{exc}{details}") from None
        bodies = [r.body for r in got.responses if r.status >= 200]
        assert bodies == [b"ok " + want.path.encode() for want in row.forwarded], details

"""HTTP conformance of the native front end, end to end on real sockets (127.0.0.1).

* 103 Early Hints from the backend reach HTTP/1.1 and HTTP/2 users (never HTTP/1.0 ones);
* request trailers (HTTP/1.1 chunked and HTTP/2 trailing HEADERS) reach the backend, minus the
  fields a trailer section must not carry;
* reason phrases (h2load --h1 counts a response without one as failed);
* HEAD on a kept-alive connection, curl -I;
* h2c: ``Upgrade: h2c`` ignored by default, honoured with ``h2c_upgrade``; prior knowledge;
* pipelining, absolute-form targets, ``Expect: 100-continue``.

An ASGI app cannot send a 1xx response nor see request trailers, so those tests use a raw tunnel
backend: :class:`ClientHandshake` on the tunnel port, then :class:`ptth.driver.Connection` as
the HTTP/2 server with a stream handler of our own.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import h2.config
import h2.connection
import h2.events
import h11
import pytest
import trio

from ptth.driver import Connection, Stream
from ptth.proto.handshake import Accepted, ClientHandshake, Registration
from ptth.types import Receive, Scope, Send
from tests.support import (
    RunningRouter,
    read_body,
    require_tool,
    serve_lifespan,
    start_backend,
    start_router,
)

Headers = list[tuple[bytes, bytes]]

LINK = b"</style.css>; rel=preload"
FINAL_BODY = b"final body"
RESOURCE = b"hello world"
FORBIDDEN_TRAILERS = {b"content-length", b"host", b"transfer-encoding"}


# -- a raw tunnel backend (1xx responses, request trailers) ------------------------------------


@dataclass
class Seen:
    """One request as the raw backend received it."""

    headers: Headers
    body: bytes
    trailers: Headers | None


@dataclass
class RawBackend:
    seen: list[Seen] = field(default_factory=list)
    arrived: trio.Event = field(default_factory=trio.Event)

    async def handle(self, stream: Stream) -> None:
        """Record the request (headers, body, trailers), answer 103 then 200 with a body."""
        headers = list(await stream.receive_headers())
        body = b""
        while chunk := await stream.receive_data():
            body += chunk
        trailers = stream.trailers
        self.seen.append(Seen(headers, body, list(trailers) if trailers is not None else None))
        self.arrived.set()
        await stream.send_headers([(b":status", b"103"), (b"link", LINK)])
        await stream.send_headers(
            [
                (b":status", b"200"),
                (b"content-type", b"text/plain"),
                (b"content-length", b"%d" % len(FINAL_BODY)),
            ]
        )
        await stream.send_data(FINAL_BODY, end_stream=True)


@asynccontextmanager
async def raw_backend_router(**overrides: Any) -> AsyncIterator[tuple[RunningRouter, RawBackend]]:
    """A router whose default service is served by one raw tunnel (a :class:`RawBackend`)."""
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, **overrides)
        host, _, port = router.tunnel.rpartition(":")
        sock = await anyio.connect_tcp(host, int(port))
        handshake = ClientHandshake(
            Registration(service="default", instance="raw-conformance"), router.tunnel
        )
        await sock.send(handshake.request_bytes())
        accepted: Accepted | None = None
        with trio.fail_after(5):
            while accepted is None:
                try:
                    data = await sock.receive(65536)
                except anyio.EndOfStream:
                    data = b""
                accepted = handshake.receive(data)
        backend = RawBackend()
        tunnel = Connection(
            sock,
            client_side=False,
            tunnel_id=accepted.tunnel_id,
            on_stream=backend.handle,
            initial_data=accepted.trailing,
        )
        await nursery.start(tunnel.run)
        await router.wait_tunnels(1)
        yield router, backend
        nursery.cancel_scope.cancel()


def field_value(headers: Headers, name: bytes) -> list[bytes]:
    return [v for n, v in headers if n.lower() == name]


# -- an ordinary ASGI backend ------------------------------------------------------------------


@dataclass
class AppLog:
    scopes: list[dict[str, Any]] = field(default_factory=list)


def make_app(log: AppLog) -> Any:
    """``/resource``: ``hello world`` with Content-Length for any method (HEAD included);
    ``/echo-body``: the request body; anything else: ``path=<path>``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        body = await read_body(receive)
        log.scopes.append(
            {
                "method": scope["method"],
                "path": scope["path"],
                "http_version": scope["http_version"],
            }
        )
        if scope["path"] == "/resource":
            payload = RESOURCE
        elif scope["path"] == "/echo-body":
            payload = body
        else:
            payload = b"path=" + scope["path"].encode()
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

    return app


@asynccontextmanager
async def asgi_router(**overrides: Any) -> AsyncIterator[tuple[RunningRouter, AppLog]]:
    log = AppLog()
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, **overrides)
        backend = await start_backend(nursery, make_app(log), router.tunnel)
        await router.wait_tunnels(1)
        yield router, log
        await backend.stop()
        assert backend.error is None
        nursery.cancel_scope.cancel()


# -- raw HTTP/1.1 client (h11 parses what the router sends) ------------------------------------


@dataclass
class H1Response:
    status: int
    reason: bytes
    headers: Headers
    body: bytes
    informational: list[h11.InformationalResponse]


class H1Client:
    """One connection; bytes go out exactly as given, responses are parsed with h11.

    ``raw`` keeps every byte received, to check status lines as they were on the wire.
    """

    def __init__(self, sock: trio.SocketStream) -> None:
        self.sock = sock
        self.conn = h11.Connection(h11.CLIENT)
        self.raw = bytearray()

    async def send(self, data: bytes) -> None:
        await self.sock.send_all(data)

    def expect(self, method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]]) -> None:
        """Tell h11 which request the next response answers (its bytes were sent by hand)."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        self.conn.send(h11.Request(method=method, target=target, headers=list(headers)))
        if self.conn.our_state is h11.SEND_BODY:
            self.conn.send(h11.EndOfMessage())

    async def next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            with trio.fail_after(10):
                data = await self.sock.receive_some(65536)
            self.raw += data
            self.conn.receive_data(data)

    async def read_response(self) -> H1Response:
        informational: list[h11.InformationalResponse] = []
        response: h11.Response | None = None
        body = b""
        while True:
            event = await self.next_event()
            if isinstance(event, h11.InformationalResponse):
                informational.append(event)
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"unexpected h11 event {event!r}")
        assert response is not None
        return H1Response(
            response.status_code,
            bytes(response.reason),
            list(response.headers),
            body,
            informational,
        )


@asynccontextmanager
async def h1_client(router: RunningRouter) -> AsyncIterator[H1Client]:
    sock = await trio.open_tcp_stream(*router.addresses.http)
    async with sock:
        yield H1Client(sock)


async def read_until_eof(sock: trio.SocketStream, timeout: float = 10) -> bytes:
    data = b""
    with trio.fail_after(timeout):
        while chunk := await sock.receive_some(65536):
            data += chunk
    return data


# -- raw HTTP/2 client (h2, prior knowledge) ---------------------------------------------------


async def h2_exchange(
    router: RunningRouter,
    headers: Headers,
    body: bytes | None = None,
    trailers: Headers | None = None,
) -> list[h2.events.Event]:
    """One request; every event of its stream, in order, until it ends or is reset."""
    sock = await trio.open_tcp_stream(*router.addresses.http)
    conn = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(stream_id, headers, end_stream=body is None and trailers is None)
    if body is not None:
        conn.send_data(stream_id, body, end_stream=trailers is None)
    if trailers is not None:
        conn.send_headers(stream_id, trailers, end_stream=True)
    events: list[h2.events.Event] = []
    async with sock:
        await sock.send_all(conn.data_to_send())
        done = False
        with trio.fail_after(10):
            while not done:
                data = await sock.receive_some(65536)
                assert data, "router closed the connection mid-response"
                for event in conn.receive_data(data):
                    if getattr(event, "stream_id", None) != stream_id:
                        continue
                    events.append(event)
                    if isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
                    if isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                        done = True
                await sock.send_all(conn.data_to_send())
        conn.close_connection()
        await sock.send_all(conn.data_to_send())
    return events


def h2_request_headers(router: RunningRouter, method: bytes, path: bytes) -> Headers:
    host, port = router.addresses.http
    return [
        (b":method", method),
        (b":scheme", b"http"),
        (b":authority", f"{host}:{port}".encode()),
        (b":path", path),
    ]


# -- 1. 103 Early Hints ------------------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_early_hints_reach_an_http11_user() -> None:
    async with raw_backend_router() as (router, _backend), h1_client(router) as client:
        request = [(b"host", b"localhost")]
        await client.send(b"GET /hints HTTP/1.1\r\nHost: localhost\r\n\r\n")
        client.expect(b"GET", b"/hints", request)
        response = await client.read_response()
    assert [i.status_code for i in response.informational] == [103]
    assert field_value(list(response.informational[0].headers), b"link") == [LINK]
    assert response.status == 200 and response.body == FINAL_BODY
    raw = bytes(client.raw)
    assert raw.startswith(b"HTTP/1.1 103 Early Hints\r\n"), raw[:200]
    hints_head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"\r\nlink: " + LINK in hints_head.lower(), hints_head
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n"), rest[:200]


@pytest.mark.timeout(20)
async def test_early_hints_reach_an_h2c_user() -> None:
    async with raw_backend_router() as (router, _backend):
        events = await h2_exchange(router, h2_request_headers(router, b"GET", b"/hints"))
    kinds = [type(e).__name__ for e in events]
    assert kinds[:2] == ["InformationalResponseReceived", "ResponseReceived"], kinds
    hints = dict(events[0].headers)
    assert hints[b":status"] == b"103" and hints[b"link"] == LINK
    assert dict(events[1].headers)[b":status"] == b"200"
    body = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert body == FINAL_BODY


@pytest.mark.timeout(20)
async def test_no_early_hints_for_an_http10_user() -> None:
    async with raw_backend_router() as (router, _backend):
        sock = await trio.open_tcp_stream(*router.addresses.http)
        async with sock:
            await sock.send_all(b"GET /hints HTTP/1.0\r\nHost: localhost\r\n\r\n")
            raw = await read_until_eof(sock)
    assert b" 103 " not in raw and b"link:" not in raw.lower(), raw[:300]
    assert re.match(rb"HTTP/1\.[01] 200 OK\r\n", raw), raw[:300]
    assert raw.endswith(b"\r\n\r\n" + FINAL_BODY), raw[-100:]


# -- 2. request trailers -----------------------------------------------------------------------


def chunked_post(trailer_lines: Sequence[bytes]) -> bytes:
    return (
        b"POST /upload HTTP/1.1\r\n"
        b"Host: localhost\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"Trailer: x-checksum\r\n"
        b"\r\n"
        b"5\r\nhello\r\n"
        b"6\r\n world\r\n"
        b"0\r\n" + b"".join(line + b"\r\n" for line in trailer_lines) + b"\r\n"
    )


@pytest.mark.timeout(20)
@pytest.mark.parametrize("forbidden", [False, True], ids=["clean", "with-forbidden-fields"])
async def test_http11_request_trailers_reach_the_backend(forbidden: bool) -> None:
    lines = [b"x-checksum: abc"]
    if forbidden:
        lines += [b"content-length: 99", b"host: evil.example"]
    async with raw_backend_router() as (router, backend), h1_client(router) as client:
        await client.send(chunked_post(lines))
        client.expect(
            b"POST", b"/upload", [(b"host", b"localhost"), (b"transfer-encoding", b"chunked")]
        )
        response = await client.read_response()
    assert response.status == 200, (response.status, response.body)
    assert len(backend.seen) == 1
    seen = backend.seen[0]
    assert seen.body == b"hello world"
    assert seen.trailers is not None, "the backend's stream ended without trailers"
    assert (b"x-checksum", b"abc") in seen.trailers, seen.trailers
    names = {n.lower() for n, _ in seen.trailers}
    assert not names & FORBIDDEN_TRAILERS, seen.trailers


@pytest.mark.timeout(20)
@pytest.mark.parametrize("forbidden", [False, True], ids=["clean", "with-forbidden-fields"])
async def test_h2c_request_trailers_reach_the_backend(forbidden: bool) -> None:
    trailers = [(b"x-checksum", b"abc")]
    if forbidden:
        trailers += [(b"content-length", b"99"), (b"host", b"evil.example")]
    async with raw_backend_router() as (router, backend):
        events = await h2_exchange(
            router,
            [*h2_request_headers(router, b"POST", b"/upload"), (b"te", b"trailers")],
            body=b"hello world",
            trailers=trailers,
        )
    statuses = [
        dict(e.headers)[b":status"] for e in events if isinstance(e, h2.events.ResponseReceived)
    ]
    assert statuses == [b"200"], [type(e).__name__ for e in events]
    assert len(backend.seen) == 1
    seen = backend.seen[0]
    assert seen.body == b"hello world"
    assert seen.trailers is not None, "the backend's stream ended without trailers"
    assert (b"x-checksum", b"abc") in seen.trailers, seen.trailers
    names = {n.lower() for n, _ in seen.trailers}
    assert not names & FORBIDDEN_TRAILERS, seen.trailers


# -- 3. reason phrases, h2load --h1 ------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_h2load_h1_counts_every_response_as_succeeded() -> None:
    h2load = require_tool("h2load", "nghttp2-client")
    async with asgi_router() as (router, _log):
        result = await trio.run_process(
            [h2load, "--h1", "-n", "500", "-c", "5", f"{router.url}/"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    out = result.stdout.decode("utf-8", "replace")
    match = re.search(r"requests: (\d+) total.*?(\d+) succeeded, (\d+) failed", out)
    assert match is not None, out + result.stderr.decode("utf-8", "replace")
    assert (int(match[2]), int(match[3])) == (500, 0), out


@pytest.mark.timeout(20)
async def test_reason_phrases_on_the_status_line() -> None:
    async with asgi_router() as (router, _log), h1_client(router) as client:
        await client.send(b"GET /ok HTTP/1.1\r\nHost: localhost\r\n\r\n")
        client.expect(b"GET", b"/ok", [(b"host", b"localhost")])
        response = await client.read_response()
    assert response.status == 200 and response.reason == b"OK"
    assert bytes(client.raw).startswith(b"HTTP/1.1 200 OK\r\n"), bytes(client.raw[:100])

    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, default_service=None)
        async with h1_client(router) as client:
            await client.send(b"GET / HTTP/1.1\r\nHost: nothing.example\r\n\r\n")
            client.expect(b"GET", b"/", [(b"host", b"nothing.example")])
            response = await client.read_response()
        nursery.cancel_scope.cancel()
    assert response.status == 404 and response.reason == b"Not Found"
    assert bytes(client.raw).startswith(b"HTTP/1.1 404 Not Found\r\n"), bytes(client.raw[:100])


# -- 4. HEAD -----------------------------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_curl_head() -> None:
    curl = require_tool("curl")
    async with asgi_router() as (router, _log):
        result = await trio.run_process(
            [curl, "-sS", "-I", "--max-time", "10", f"{router.url}/resource"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    out = result.stdout.decode("latin-1")
    assert result.returncode == 0, result.stderr
    assert out.startswith("HTTP/1.1 200 OK\r\n"), out
    assert re.search(rf"(?im)^content-length: {len(RESOURCE)}\r$", out), out


@pytest.mark.timeout(20)
async def test_head_then_get_on_one_kept_alive_connection() -> None:
    host = [(b"host", b"localhost")]
    async with asgi_router() as (router, _log), h1_client(router) as client:
        await client.send(b"HEAD /resource HTTP/1.1\r\nHost: localhost\r\n\r\n")
        client.expect(b"HEAD", b"/resource", host)
        head = await client.read_response()
        await client.send(b"GET /resource HTTP/1.1\r\nHost: localhost\r\n\r\n")
        client.expect(b"GET", b"/resource", host)
        get = await client.read_response()
        with trio.move_on_after(0.2):
            extra = await client.sock.receive_some(65536)
            assert extra == b"", f"stray bytes after the GET: {extra[:100]!r}"
    assert head.status == 200 and head.body == b""
    assert field_value(head.headers, b"content-length") == [b"%d" % len(RESOURCE)]
    assert get.status == 200 and get.body == RESOURCE
    # The HEAD response ended at its head: the next bytes were the GET's status line.
    raw = bytes(client.raw)
    head_end = raw.index(b"\r\n\r\n") + 4
    assert raw[head_end:].startswith(b"HTTP/1.1 200 OK\r\n"), raw[head_end : head_end + 100]


# -- 5. h2c ------------------------------------------------------------------------------------


async def curl_version(curl: str, url: str, *flags: str) -> tuple[str, str]:
    result = await trio.run_process(
        [curl, "-sS", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", *flags, url],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    version, code = result.stdout.decode().split()
    return version, code


@pytest.mark.timeout(30)
@pytest.mark.parametrize("enabled", [False, True], ids=["default", "h2c_upgrade"])
async def test_h2c_upgrade(enabled: bool) -> None:
    curl = require_tool("curl")
    overrides = {"h2c_upgrade": True} if enabled else {}
    async with asgi_router(**overrides) as (router, log):
        upgraded = await curl_version(curl, f"{router.url}/upgrade", "--http2")
        upgrade_scope = [s for s in log.scopes if s["path"] == "/upgrade"]
        prior = await curl_version(curl, f"{router.url}/prior", "--http2-prior-knowledge")
        prior_scope = [s for s in log.scopes if s["path"] == "/prior"]
    if enabled:
        assert upgraded == ("2", "200")
        assert [s["http_version"] for s in upgrade_scope] == ["2"]
    else:
        assert upgraded == ("1.1", "200")
        assert [s["http_version"] for s in upgrade_scope] == ["1.1"]
    assert prior == ("2", "200")
    assert [s["http_version"] for s in prior_scope] == ["2"]


# -- 6. pipelining -----------------------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_pipelined_requests_are_answered_in_order() -> None:
    paths = [b"/p1", b"/p2", b"/p3", b"/p4", b"/p5"]
    wire = b"".join(b"GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % p for p in paths)
    async with asgi_router() as (router, log), h1_client(router) as client:
        await client.send(wire)  # all five in one send
        responses = []
        for path in paths:
            client.expect(b"GET", path, [(b"host", b"localhost")])
            responses.append(await client.read_response())
    assert [r.status for r in responses] == [200] * 5
    assert [r.body for r in responses] == [b"path=" + p for p in paths]
    assert [s["path"] for s in log.scopes] == [p.decode() for p in paths]


# -- 7. absolute-form target -------------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_absolute_form_target() -> None:
    async with asgi_router() as (router, log), h1_client(router) as client:
        await client.send(b"GET http://localhost/abs HTTP/1.1\r\nHost: localhost\r\n\r\n")
        client.expect(b"GET", b"http://localhost/abs", [(b"host", b"localhost")])
        response = await client.read_response()
    assert response.status == 200, response.body
    assert response.body == b"path=/abs"
    assert [s["path"] for s in log.scopes] == ["/abs"]


# -- 8. Expect: 100-continue -------------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_expect_100_continue() -> None:
    headers = [(b"host", b"localhost"), (b"content-length", b"5"), (b"expect", b"100-continue")]
    async with asgi_router() as (router, _log), h1_client(router) as client:
        await client.send(
            b"POST /echo-body HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        client.conn.send(h11.Request(method=b"POST", target=b"/echo-body", headers=headers))
        interim = await client.next_event()
        assert isinstance(interim, h11.InformationalResponse), interim
        assert interim.status_code == 100
        interim_raw = bytes(client.raw)  # all that came before the body was sent
        await client.send(b"hello")
        client.conn.send(h11.Data(data=b"hello"))
        client.conn.send(h11.EndOfMessage())
        response = await client.read_response()
    assert response.status == 200 and response.body == b"hello"
    # Checked last, so that a missing reason phrase does not hide the rest of the exchange.
    assert interim_raw.startswith(b"HTTP/1.1 100 Continue\r\n"), interim_raw

"""Header rules end to end: what the backend app sees, what the user gets back, and real clients.

Requests that need exact bytes on the wire (hop-by-hop fields httpx would rewrite, HEAD on a
kept-alive connection) go through a raw HTTP/1.1 client built on h11; trailers are read with a
raw HTTP/2 client built on h2 (prior knowledge, cleartext). curl and h2load are used when
installed; in CI (``CI=true``) their absence is a failure, not a skip.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h11
import httpx
import pytest
import trio

from ptth.types import ASGIApp, Receive, Scope, Send
from tests.support import (
    RunningRouter,
    make_hello_app,
    read_body,
    require_tool,
    serve_lifespan,
    start_backend,
    start_router,
)

Pairs = list[tuple[str, str]]

RESOURCE = b"hello world"
BIG_VALUE = "v" * 8192


# -- the backend app -------------------------------------------------------------------------


def _pairs(headers: Sequence[tuple[bytes, bytes]]) -> Pairs:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]


def make_app() -> ASGIApp:
    """Paths:

    * ``/echo``: JSON of what the app saw (method, scheme, client, headers in order, body size);
    * ``/response-headers``: hop-by-hop response fields, two Set-Cookie, ``x-kept``;
    * ``/trailers``: body ``hello``+``world`` then trailers ``grpc-status: 0``,
      ``grpc-message: ok`` (a POST echoes its body instead); ``/empty-trailers``: the same
      with an empty trailer section (valid ASGI); ``/split-trailers``: the same trailers
      sent one field per ``http.response.trailers`` message (``more_trailers``);
    * ``/resource``: ``hello world`` with Content-Length and an ETag, whatever the method
      (so HEAD relies on the proxy chain to drop the body);
    * ``/no-content``: 204; ``/no-content-with-body``: 204 with a body the app should not
      have sent; ``/not-modified``: 304 with the ETag.
    """

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        body = await read_body(receive)
        path = scope["path"]
        headers: list[tuple[bytes, bytes]] = []
        status, payload = 200, b""
        if path == "/echo":
            seen: dict[str, Any] = {
                "method": scope["method"],
                "scheme": scope["scheme"],
                "client": scope["client"],
                "headers": _pairs(scope["headers"]),
                "body_size": len(body),
            }
            payload = json.dumps(seen).encode()
            headers = [(b"content-type", b"application/json")]
        elif path == "/response-headers":
            payload = b"ok"
            headers = [
                (b"connection", b"x-foo"),
                (b"x-foo", b"must not arrive"),
                (b"keep-alive", b"timeout=5"),
                (b"proxy-connection", b"keep-alive"),
                (b"upgrade", b"foo/1"),
                (b"set-cookie", b"a=1; Path=/"),
                (b"set-cookie", b"b=2; Path=/"),
                (b"x-kept", b"yes"),
            ]
        elif path in ("/trailers", "/empty-trailers", "/split-trailers"):
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/grpc")],
                    "trailers": True,
                }
            )
            for chunk in [body] if body else [b"hello", b"world"]:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            trailers = [(b"grpc-status", b"0"), (b"grpc-message", b"ok")]
            if path == "/split-trailers":  # one field per message
                await send(
                    {
                        "type": "http.response.trailers",
                        "headers": trailers[:1],
                        "more_trailers": True,
                    }
                )
                trailers = trailers[1:]
            await send(
                {
                    "type": "http.response.trailers",
                    "headers": [] if path == "/empty-trailers" else trailers,
                    "more_trailers": False,
                }
            )
            return
        elif path == "/resource":
            payload = RESOURCE
            headers = [(b"content-length", b"%d" % len(RESOURCE)), (b"etag", b'"v1"')]
        elif path == "/no-content":
            status = 204
        elif path == "/no-content-with-body":  # a buggy app: the body must not reach the wire
            status, payload = 204, b"oops"
        elif path == "/not-modified":
            status, headers = 304, [(b"etag", b'"v1"')]
        else:
            status, payload = 404, b"not found"
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return app


@asynccontextmanager
async def running(app: ASGIApp | None = None, loop: str = "trio") -> AsyncIterator[RunningRouter]:
    """An in-process router with one in-process backend serving ``app`` on ``loop``."""
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        backend = await start_backend(nursery, app or make_app(), router.tunnel, loop=loop)
        await router.wait_tunnels(1)
        yield router
        await backend.stop()
        assert backend.error is None
        nursery.cancel_scope.cancel()


# -- raw clients -----------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: Pairs
    body: bytes

    def get_all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]

    def json(self) -> Any:
        return json.loads(self.body)


async def http1_exchange(
    router: RunningRouter, requests: Sequence[tuple[str, str, Pairs]]
) -> list[RawResponse]:
    """Send ``(method, target, headers)`` requests one after another on ONE connection.

    The header fields go out exactly as given (h11 keeps order, repeats and case). After the
    last response, no stray byte may follow (a body on HEAD/204/304 would show up here).
    """
    sock = await trio.open_tcp_stream(*router.addresses.http)
    conn = h11.Connection(h11.CLIENT)
    responses: list[RawResponse] = []
    async with sock:
        for method, target, headers in requests:
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
            request = h11.Request(method=method, target=target, headers=headers)
            await sock.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
            response: h11.Response | None = None
            body = b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    with trio.fail_after(10):
                        conn.receive_data(await sock.receive_some(65536))
                elif isinstance(event, h11.InformationalResponse):
                    continue
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    raise AssertionError(f"unexpected h11 event {event!r}")
            assert response is not None
            responses.append(RawResponse(response.status_code, _pairs(response.headers), body))
        # Nothing may follow the last response on this connection.
        assert conn.trailing_data == (b"", False)
        with trio.move_on_after(0.2):
            extra = await sock.receive_some(65536)
            assert extra == b"", f"stray bytes after the last response: {extra[:100]!r}"
    return responses


@dataclass
class H2Response:
    headers: Pairs = field(default_factory=list)
    data: bytes = b""
    trailers: Pairs | None = None
    reset: int | None = None


async def h2_request(
    router: RunningRouter, headers: Pairs, body: bytes | None = None
) -> H2Response:
    """One request with HTTP/2 prior knowledge; pseudo-headers must be in ``headers``."""
    sock = await trio.open_tcp_stream(*router.addresses.http)
    conn = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    encoded = [(n.encode(), v.encode()) for n, v in headers]
    conn.send_headers(stream_id, encoded, end_stream=body is None)
    if body is not None:
        conn.send_data(stream_id, body, end_stream=True)
    result = H2Response()
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
                    if isinstance(event, h2.events.ResponseReceived):
                        result.headers = _pairs(event.headers or [])
                    elif isinstance(event, h2.events.DataReceived):
                        result.data += event.data or b""
                        conn.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
                    elif isinstance(event, h2.events.TrailersReceived):
                        result.trailers = _pairs(event.headers or [])
                    elif isinstance(event, h2.events.StreamEnded):
                        done = True
                    elif isinstance(event, h2.events.StreamReset):
                        result.reset = int(event.error_code or 0)
                        done = True
                await sock.send_all(conn.data_to_send())
        conn.close_connection()
        await sock.send_all(conn.data_to_send())
    return result


# -- request headers -------------------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_hop_by_hop_request_fields_are_not_forwarded() -> None:
    request_headers = [
        ("Host", "example.test"),
        ("Connection", "keep-alive, X-Custom, TE"),
        ("X-Custom", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("Upgrade", "foo/1"),  # not named by Connection, stripped all the same
        ("TE", "trailers"),
        ("X-Multi", "a"),
        ("X-Multi", "b"),
        ("X-Big", BIG_VALUE),
        ("X-Forwarded-For", "203.0.113.9"),  # spoofed: the router is not behind a proxy
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
        ("Forwarded", "for=203.0.113.9"),
    ]
    async with running() as router:
        (response,) = await http1_exchange(router, [("GET", "/echo?q=1", request_headers)])
    assert response.status == 200, response.body
    seen = response.json()
    assert seen["headers"] == [
        ["host", "example.test"],
        ["te", "trailers"],
        ["x-multi", "a"],
        ["x-multi", "b"],
        ["x-big", BIG_VALUE],
        ["x-forwarded-for", "127.0.0.1"],
        ["x-forwarded-proto", "http"],
        ["x-forwarded-host", "example.test"],
    ]
    assert seen["scheme"] == "http"
    assert seen["client"][0] == "127.0.0.1" and seen["client"][1] > 0  # the user's own port


@pytest.mark.timeout(20)
@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
async def test_repeated_and_large_request_fields_pass_in_order(http2: bool) -> None:
    async with (
        running() as router,
        httpx.AsyncClient(base_url=router.url, http1=not http2, http2=http2) as client,
    ):
        response = await client.post(
            "/echo",
            content=b"abc",
            headers=[
                ("X-Multi", "first"),
                ("X-Other", "between"),
                ("X-Multi", "second"),
                ("X-Big", BIG_VALUE),
                ("TE", "trailers"),
            ],
        )
    assert response.status_code == 200, response.text
    assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    seen = response.json()
    headers = [tuple(pair) for pair in seen["headers"]]
    assert [v for n, v in headers if n.startswith("x-multi") or n == "x-other"] == [
        "first",
        "between",
        "second",
    ]
    assert ("x-big", BIG_VALUE) in headers
    assert [v for n, v in headers if n == "te"] == ["trailers"]
    assert [v for n, v in headers if n == "x-forwarded-for"] == ["127.0.0.1"]
    assert [v for n, v in headers if n == "x-forwarded-proto"] == ["http"]
    host = f"{router.addresses.http[0]}:{router.addresses.http[1]}"
    assert [v for n, v in headers if n == "x-forwarded-host"] == [host]
    assert headers[0] == ("host", host)
    assert not {"connection", "keep-alive", "transfer-encoding", "upgrade"} & {
        n for n, _ in headers
    }
    assert seen["body_size"] == 3


# -- response headers ------------------------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
async def test_hop_by_hop_response_fields_are_stripped(http2: bool) -> None:
    async with (
        running() as router,
        httpx.AsyncClient(base_url=router.url, http1=not http2, http2=http2) as client,
    ):
        response = await client.get("/response-headers")
    assert response.status_code == 200
    assert response.text == "ok"
    assert response.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]
    assert response.headers["x-kept"] == "yes"
    for name in ("x-foo", "keep-alive", "proxy-connection", "upgrade"):
        assert name not in response.headers, f"{name} reached the user"
    assert "x-foo" not in response.headers.get("connection", "").lower()


@pytest.mark.timeout(20)
async def test_hop_by_hop_response_fields_on_the_wire() -> None:
    """The same on raw HTTP/1.1 bytes: httpx's parsing hides nothing here."""
    async with running() as router:
        (response,) = await http1_exchange(
            router, [("GET", "/response-headers", [("Host", "example.test")])]
        )
    names = [name for name, _ in response.headers]
    assert response.get_all("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]
    assert "x-foo" not in names and "keep-alive" not in names
    assert "proxy-connection" not in names and "upgrade" not in names
    assert all("x-foo" not in value.lower() for value in response.get_all("connection"))


# -- trailers --------------------------------------------------------------------------------


def _request(router: RunningRouter, method: str, path: str, *extra: tuple[str, str]) -> Pairs:
    host, port = router.addresses.http
    return [
        (":method", method),
        (":scheme", "http"),
        (":authority", f"{host}:{port}"),
        (":path", path),
        *extra,
    ]


@pytest.mark.timeout(20)
async def test_response_trailers_reach_an_h2_client(helper_loop: str) -> None:
    """The helper's ``http.response.trailers`` handling, on both loops."""
    async with running(loop=helper_loop) as router:
        response = await h2_request(
            router, _request(router, "GET", "/trailers", ("te", "trailers"))
        )
        assert response.reset is None
        assert dict(response.headers)[":status"] == "200"
        assert response.data == b"helloworld"
        assert response.trailers == [("grpc-status", "0"), ("grpc-message", "ok")]

        # A gRPC-shaped unary call: POST, length-prefixed message, answer + grpc-status trailer.
        message = b"\x00\x00\x00\x00\x05hello"
        response = await h2_request(
            router,
            _request(
                router,
                "POST",
                "/trailers",
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ),
            body=message,
        )
        assert response.reset is None
        assert response.data == message
        assert response.trailers == [("grpc-status", "0"), ("grpc-message", "ok")]

        # Trailers sent in two ASGI messages (more_trailers=True, then the last) arrive whole.
        response = await h2_request(
            router, _request(router, "GET", "/split-trailers", ("te", "trailers"))
        )
        assert response.reset is None
        assert response.data == b"helloworld"
        assert response.trailers == [("grpc-status", "0"), ("grpc-message", "ok")]

        # Without "te: trailers" the response still completes, just without them.
        response = await h2_request(router, _request(router, "GET", "/trailers"))
        assert response.reset is None
        assert response.data == b"helloworld"
        assert response.trailers is None

    # HTTP/1.1 has no trailers in hypercorn: the body still arrives whole and the stream ends.
    async with (
        running(loop=helper_loop) as router,
        httpx.AsyncClient(base_url=router.url) as client,
    ):
        h1 = await client.get("/trailers", headers={"TE": "trailers"})
        assert (h1.status_code, h1.content) == (200, b"helloworld")


@pytest.mark.timeout(20)
@pytest.mark.parametrize("path", ["/resource", "/empty-trailers"])
async def test_te_trailers_without_trailers_completes_the_response(
    path: str, helper_loop: str
) -> None:
    """A client asking for trailers (every gRPC client does) when none come: a complete
    response, not a reset stream. ``/resource`` sends no trailers at all, ``/empty-trailers``
    announces them and sends an empty section."""
    async with running(loop=helper_loop) as router:
        response = await h2_request(router, _request(router, "GET", path, ("te", "trailers")))
    assert response.reset is None, f"stream reset with code {response.reset}"
    assert dict(response.headers)[":status"] == "200"
    assert response.data == (RESOURCE if path == "/resource" else b"helloworld")
    assert response.trailers is None


# -- HEAD, 204, 304 --------------------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_head_204_304_have_no_body_on_a_kept_alive_connection() -> None:
    host = [("Host", "example.test")]
    async with running() as router:
        head, no_content, buggy, not_modified, get = await http1_exchange(
            router,
            [
                ("HEAD", "/resource", host),
                ("GET", "/no-content", host),
                ("GET", "/no-content-with-body", host),
                ("GET", "/not-modified", [*host, ("If-None-Match", '"v1"')]),
                ("GET", "/resource", host),
            ],
        )
    assert head.status == 200
    assert head.body == b""
    assert head.get_all("content-length") == [str(len(RESOURCE))]
    assert head.get_all("etag") == ['"v1"']
    assert (no_content.status, no_content.body) == (204, b"")
    assert (buggy.status, buggy.body) == (204, b"")
    assert not_modified.status == 304
    assert not_modified.body == b""
    assert not_modified.get_all("etag") == ['"v1"']
    # The last response parsed cleanly, so no stray body bytes preceded it.
    assert (get.status, get.body) == (200, RESOURCE)


@pytest.mark.timeout(20)
async def test_head_204_304_over_http2() -> None:
    async with running() as router:
        head = await h2_request(router, _request(router, "HEAD", "/resource"))
        no_content = await h2_request(router, _request(router, "GET", "/no-content"))
        buggy = await h2_request(router, _request(router, "GET", "/no-content-with-body"))
        not_modified = await h2_request(router, _request(router, "GET", "/not-modified"))
    for response in (head, no_content, buggy, not_modified):
        assert response.reset is None
        assert response.data == b""
    assert dict(head.headers)[":status"] == "200"
    assert dict(head.headers)["content-length"] == str(len(RESOURCE))
    assert dict(no_content.headers)[":status"] == "204"
    assert dict(buggy.headers)[":status"] == "204"
    assert dict(not_modified.headers)[":status"] == "304"


# -- real clients ----------------------------------------------------------------------------


async def _curl(curl: str, *args: str) -> tuple[str, str]:
    """Run curl; returns (status line written by -w, headers dumped with -D -)."""
    result = await trio.run_process(
        [curl, "-sS", "--max-time", "20", *args], capture_stdout=True, capture_stderr=True
    )
    return result.stdout.decode(), result.stderr.decode()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("flag", "version"),
    [("--http1.1", "1.1"), ("--http2-prior-knowledge", "2")],
    ids=["http1", "h2c"],
)
async def test_curl_get_and_post(tmp_path: Path, flag: str, version: str) -> None:
    curl = require_tool("curl", "curl")
    upload = tmp_path / "upload.bin"
    upload.write_bytes(os.urandom(2 * 1024 * 1024))
    out = tmp_path / "out.bin"
    write = "%{http_code} %{http_version}"
    async with running(make_hello_app("curl-backend")) as router:
        stdout, _ = await _curl(
            curl, flag, "-D", "-", "-o", str(out), "-w", write, router.url + "/foo"
        )
        assert stdout.endswith(f"200 {version}"), stdout
        assert re.search(r"(?im)^x-backend: curl-backend\r?$", stdout), stdout
        assert out.read_bytes() == b"bar"

        stdout, _ = await _curl(
            curl,
            flag,
            "--data-binary",
            f"@{upload}",
            "-H",
            "Content-Type: application/octet-stream",
            "-o",
            str(out),
            "-w",
            write,
            router.url + "/echo",
        )
        assert stdout == f"200 {version}"
        assert out.read_bytes() == upload.read_bytes()


@pytest.mark.timeout(120)
async def test_h2load_all_requests_succeed() -> None:
    h2load = require_tool("h2load", "nghttp2-client")
    async with running(make_hello_app("load")) as router:
        result = await trio.run_process(
            [h2load, "-n", "2000", "-c", "10", "-m", "10", router.url + "/foo"],
            capture_stdout=True,
            capture_stderr=True,
        )
    output = result.stdout.decode()
    summary = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        output,
    )
    assert summary is not None, output
    total, _, done, succeeded, failed, errored, timeouts = map(int, summary.groups())
    assert (total, done, succeeded) == (2000, 2000, 2000), output
    assert (failed, errored, timeouts) == (0, 0, 0), output
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    assert codes is not None and codes.groups() == ("2000", "0", "0", "0"), output
    line = re.search(r"finished in .*", output)
    print(f"[h2load] {line[0] if line else output}")

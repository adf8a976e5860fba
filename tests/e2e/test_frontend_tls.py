"""The native front end over TLS: ALPN (h2, http/1.1), real clients (httpx, curl, h2load,
websockets), and certificate reload on SIGHUP without dropping open connections.

Certificates come from ``trustme``: a CA and a server certificate for ``localhost`` and
``127.0.0.1``, written as PEM files to ``tmp_path``. All traffic is on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h11
import httpx
import pytest
import trio
import trustme

from ptth.types import Receive, Scope, Send
from tests.support import (
    ROOT,
    RunningRouter,
    child,
    read_body,
    require_module,
    require_tool,
    serve_lifespan,
    start_backend,
    start_router,
)

require_module("websockets", reason="the websockets client is not installed")
from websockets.sync.client import connect as ws_connect  # noqa: E402 (after the availability check)

READY = re.compile(rb"front end on (https://[\d.]+:(\d+)), tunnel port on ([\d.]+:\d+)")


# -- certificates ---------------------------------------------------------------------------


@dataclass
class Certs:
    """A CA (its PEM at ``ca_pem``) and the server's chain and key files."""

    ca: trustme.CA
    ca_pem: Path
    cert: Path
    key: Path

    def client_context(self, alpn: list[str] | None = None) -> ssl.SSLContext:
        return client_context(self.ca, alpn)


def client_context(ca: trustme.CA, alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    return context


def write_server_cert(ca: trustme.CA, cert: Path, key: Path) -> None:
    issued = ca.issue_cert("localhost", "127.0.0.1")
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))


def make_certs(directory: Path, name: str = "server") -> Certs:
    ca = trustme.CA()
    ca_pem = directory / f"{name}-ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    cert, key = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    write_server_cert(ca, cert, key)
    return Certs(ca, ca_pem, cert, key)


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path)


# -- the backend app ------------------------------------------------------------------------


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """HTTP: a JSON echo of what the app saw. WebSocket ``/ws``: echoes every message; the
    text ``scheme?`` is answered with the scope's scheme."""
    if scope["type"] == "lifespan":
        await serve_lifespan(receive, send)
        return
    if scope["type"] == "websocket":
        await _websocket_echo(scope, receive, send)
        return
    body = await read_body(receive)
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    payload = json.dumps(
        {
            "scheme": scope["scheme"],
            "http_version": scope["http_version"],
            "client": list(scope["client"]) if scope["client"] else None,
            "path": scope["path"],
            "x_forwarded_proto": headers.get("x-forwarded-proto"),
            "body": body.decode("latin-1"),
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def _websocket_echo(scope: Scope, receive: Receive, send: Send) -> None:
    message = await receive()
    assert message["type"] == "websocket.connect", message
    if scope["path"] != "/ws":
        await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text == "scheme?":
            await send({"type": "websocket.send", "text": scope["scheme"]})
        elif text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


# -- raw clients (blocking, run in a worker thread) -----------------------------------------


@contextmanager
def tls_socket(port: int, context: ssl.SSLContext) -> Iterator[ssl.SSLSocket]:
    """A TLS connection to 127.0.0.1:port, SNI and verification for ``localhost``."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock = context.wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise
    with sock:
        yield sock


class H11Client:
    """HTTP/1.1 keep-alive requests on one already-open socket (h11 does the framing)."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.conn = h11.Connection(h11.CLIENT)

    def get(self, path: str) -> tuple[int, bytes, bytes]:
        """(status, HTTP version, body) of ``GET path``; the connection is kept open."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        request = h11.Request(
            method="GET", target=path, headers=[("Host", "localhost"), ("Connection", "keep-alive")]
        )
        self.sock.sendall(self.conn.send(request) + self.conn.send(h11.EndOfMessage()))
        status, version, body = 0, b"", b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(self.sock.recv(65536))
            elif isinstance(event, h11.Response):
                status, version = event.status_code, event.http_version
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, version, body
            elif isinstance(event, h11.ConnectionClosed):
                raise AssertionError(f"connection closed during GET {path}; status {status}")


def h1_get(port: int, context: ssl.SSLContext, path: str) -> tuple[str | None, int, bytes, bytes]:
    """(negotiated ALPN, status, HTTP version, body) of one HTTP/1.1 GET on a new connection."""
    with tls_socket(port, context) as sock:
        status, version, body = H11Client(sock).get(path)
        return sock.selected_alpn_protocol(), status, version, body


def h2_get(port: int, context: ssl.SSLContext, path: str) -> tuple[str | None, int, bytes]:
    """(negotiated ALPN, status, body) of one HTTP/2 GET on a new connection (prior knowledge
    of h2 over whatever ALPN chose: the caller checks that ALPN chose h2)."""
    with tls_socket(port, context) as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        conn.send_headers(
            stream,
            [
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", "localhost"),
                (":path", path),
            ],
            end_stream=True,
        )
        sock.sendall(conn.data_to_send())
        status, body = 0, b""
        while True:
            data = sock.recv(65536)
            if not data:
                raise AssertionError(f"connection closed before the response; status {status}")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.StreamEnded):
                    return sock.selected_alpn_protocol(), status, body
                elif isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                    raise AssertionError(f"h2 request failed: {event}")
            sock.sendall(conn.data_to_send())


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await trio.to_thread.run_sync(lambda: fn(*args))


# -- the in-process router ------------------------------------------------------------------


async def tls_router(nursery: trio.Nursery, certs: Certs) -> RunningRouter:
    router = await start_router(nursery, tls_cert=str(certs.cert), tls_key=str(certs.key))
    assert router.url.startswith("https://127.0.0.1:"), router.url
    await start_backend(nursery, app, router.tunnel)
    await router.wait_tunnels(1)
    return router


def port_of(router: RunningRouter) -> int:
    return router.addresses.http[1]


# -- 1. httpx, HTTP/1.1 and HTTP/2 by ALPN ---------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("http2", "version"), [(False, "HTTP/1.1"), (True, "HTTP/2")])
async def test_httpx_over_tls_by_alpn(certs: Certs, http2: bool, version: str) -> None:
    async with trio.open_nursery() as nursery:
        router = await tls_router(nursery, certs)
        async with httpx.AsyncClient(
            base_url=router.url, verify=certs.client_context(), http2=http2, timeout=10
        ) as client:
            for i in range(3):  # several requests on one connection
                response = await client.post(f"/hello/{i}", content=b"payload %d" % i)
                assert response.status_code == 200, response.text
                assert response.http_version == version
                seen = response.json()
                assert seen["body"] == f"payload {i}"
                assert seen["path"] == f"/hello/{i}"
                assert seen["scheme"] == "https"
                assert seen["x_forwarded_proto"] == "https"
                assert seen["http_version"] == ("2" if http2 else "1.1")
                assert seen["client"][0] == "127.0.0.1"
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_plain_http_client_is_refused_on_the_tls_port(certs: Certs) -> None:
    """Cleartext HTTP to the TLS port gets no HTTP response (the handshake fails)."""
    async with trio.open_nursery() as nursery:
        router = await tls_router(nursery, certs)
        url = router.url.replace("https://", "http://", 1)
        async with httpx.AsyncClient(timeout=5) as client:
            with pytest.raises(httpx.HTTPError):
                await client.get(url + "/")
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_untrusted_certificate_is_rejected_by_the_client(
    certs: Certs, tmp_path: Path
) -> None:
    other = make_certs(tmp_path, "other")
    async with trio.open_nursery() as nursery:
        router = await tls_router(nursery, certs)
        async with httpx.AsyncClient(verify=other.client_context(), timeout=5) as client:
            with pytest.raises(httpx.ConnectError) as raised:
                await client.get(router.url + "/")
        chain: list[BaseException] = []
        error: BaseException | None = raised.value
        while error is not None and len(chain) < 10:
            chain.append(error)
            error = error.__cause__ or error.__context__
        assert any(isinstance(e, ssl.SSLCertVerificationError) for e in chain), chain
        nursery.cancel_scope.cancel()


# -- 2. raw ALPN -----------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_alpn_negotiation_on_a_raw_socket(certs: Certs) -> None:
    async with trio.open_nursery() as nursery:
        port = port_of(await tls_router(nursery, certs))

        alpn, status, body = await in_thread(h2_get, port, certs.client_context(["h2"]), "/a")
        assert alpn == "h2"
        assert status == 200
        assert json.loads(body)["http_version"] == "2"

        alpn, status, version, body = await in_thread(
            h1_get, port, certs.client_context(["http/1.1"]), "/b"
        )
        assert alpn == "http/1.1"
        assert (status, version) == (200, b"1.1")
        assert json.loads(body)["http_version"] == "1.1"

        # No ALPN at all: HTTP/1.1.
        alpn, status, version, body = await in_thread(h1_get, port, certs.client_context(), "/c")
        assert alpn is None
        assert (status, version) == (200, b"1.1")
        seen = json.loads(body)
        assert (seen["http_version"], seen["scheme"]) == ("1.1", "https")

        # Both offered, h2 second: the server chooses (RFC 7301 §3.2), and it prefers h2.
        context = certs.client_context(["http/1.1", "h2"])
        alpn, status, body = await in_thread(h2_get, port, context, "/d")
        assert (alpn, status) == ("h2", 200)

        # Only a protocol the router does not speak: no ALPN (or a refused handshake), never
        # a protocol the client did not offer.
        context = certs.client_context(["spdy/3.1"])
        try:
            alpn, status, version, body = await in_thread(h1_get, port, context, "/e")
        except ssl.SSLError as exc:
            assert "NO_APPLICATION_PROTOCOL" in str(exc), exc
        else:
            assert alpn is None
            assert (status, version) == (200, b"1.1")
        nursery.cancel_scope.cancel()


# -- 3. curl and h2load ------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("flag", "version"), [("--http1.1", "1.1"), ("--http2", "2")])
async def test_curl_over_tls(certs: Certs, flag: str, version: str) -> None:
    curl = require_tool("curl")
    async with trio.open_nursery() as nursery:
        port = port_of(await tls_router(nursery, certs))
        url = f"https://localhost:{port}/curl"
        result = await trio.run_process(
            [
                curl,
                "-sS",
                "--max-time",
                "20",
                "--noproxy",
                "*",
                "--resolve",
                f"localhost:{port}:127.0.0.1",  # the certificate's DNS name, on 127.0.0.1
                "--cacert",
                str(certs.ca_pem),
                flag,
                "-w",
                "\n%{http_code} %{http_version} %{num_connects}\n",
                url,
                url,  # a second request, on the same connection
            ],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        out = result.stdout.decode()
        assert result.returncode == 0, (result.returncode, out, result.stderr.decode())
        lines = [line for line in out.splitlines() if line]
        assert len(lines) == 4, out
        for body, summary in (lines[0:2], lines[2:4]):
            seen = json.loads(body)
            assert (seen["scheme"], seen["http_version"]) == ("https", version)
            assert summary.split()[:2] == ["200", version], out
        assert lines[3].split()[2] == "0", f"curl opened a second connection: {out}"
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(90)
async def test_h2load_over_tls(certs: Certs) -> None:
    h2load = require_tool("h2load", package="nghttp2-client")
    async with trio.open_nursery() as nursery:
        port = port_of(await tls_router(nursery, certs))
        result = await trio.run_process(
            [h2load, "-n", "200", "-c", "2", "-m", "10", f"https://127.0.0.1:{port}/load"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        out = result.stdout.decode() + result.stderr.decode()
        assert result.returncode == 0, out
        assert re.search(r"Application protocol: h2\b", out), out
        requests = re.search(
            r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
            r"(\d+) failed, (\d+) errored, (\d+) timeout",
            out,
        )
        assert requests is not None, out
        assert requests.groups() == ("200", "200", "200", "200", "0", "0", "0"), out
        codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
        assert codes is not None, out
        assert codes.groups() == ("200", "0", "0", "0"), out
        nursery.cancel_scope.cancel()


# -- 4. WebSocket over TLS ---------------------------------------------------------------------


def websocket_echo(port: int, context: ssl.SSLContext) -> tuple[str, Any, Any]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    with ws_connect(
        f"wss://localhost:{port}/ws",
        ssl=context,
        sock=sock,
        server_hostname="localhost",
        proxy=None,
        open_timeout=10,
        close_timeout=5,
    ) as ws:
        ws.send("scheme?")
        scheme = ws.recv(timeout=10)
        ws.send("hello over tls")
        text = ws.recv(timeout=10)
        ws.send(b"\x00\x01binary\xff")
        data = ws.recv(timeout=10)
        return scheme, text, data


@pytest.mark.timeout(30)
async def test_websocket_echo_over_tls(certs: Certs) -> None:
    async with trio.open_nursery() as nursery:
        port = port_of(await tls_router(nursery, certs))
        scheme, text, data = await in_thread(websocket_echo, port, certs.client_context())
        assert scheme == "wss"
        assert text == "hello over tls"
        assert data == b"\x00\x01binary\xff"
        nursery.cancel_scope.cancel()


# -- 5. reload on SIGHUP -----------------------------------------------------------------------


async def wait_serving(port: int, context: ssl.SSLContext, timeout: float = 15) -> None:
    """Until a request through the subprocess router reaches the backend (tunnel registered)."""
    with trio.fail_after(timeout):
        while True:
            _, status, _, _ = await in_thread(h1_get, port, context, "/ready")
            if status == 200:
                return
            await trio.sleep(0.05)


def peer_der(sock: ssl.SSLSocket) -> bytes:
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return der


@pytest.mark.timeout(60)
async def test_sighup_reloads_the_certificate_without_dropping_connections(
    tmp_path: Path,
) -> None:
    first = make_certs(tmp_path, "server")  # cert A from CA1, at the paths the router reads
    ca2 = trustme.CA()
    async with trio.open_nursery() as nursery:
        async with child(
            nursery,
            "-m",
            "router",
            "--http",
            "127.0.0.1:0",
            "--tunnel",
            "127.0.0.1:0",
            "--tls-cert",
            str(first.cert),
            "--tls-key",
            str(first.key),
            "--access-log",
            "false",
            "--log-level",
            "INFO",
        ) as router:
            ready = await router.wait_for(READY)
            port, tunnel = int(ready.group(2)), ready.group(3).decode()
            backend = await start_backend(nursery, app, tunnel)
            ctx1, ctx2 = client_context(first.ca), client_context(ca2)
            await wait_serving(port, ctx1)

            # Two kept-alive connections made with cert A: a raw socket and an httpx client.
            old = ctx1.wrap_socket(
                socket.create_connection(("127.0.0.1", port), timeout=10),
                server_hostname="localhost",
            )
            client = httpx.AsyncClient(verify=client_context(first.ca), timeout=10)
            try:
                cert_a = peer_der(old)
                old_http = H11Client(old)
                status, _, _ = await in_thread(old_http.get, "/before")
                assert status == 200
                response = await client.get(f"https://127.0.0.1:{port}/before")
                assert response.status_code == 200
                httpx_addr = response.extensions["network_stream"].get_extra_info("client_addr")

                # Cert B from CA2 in place of A, then SIGHUP.
                write_server_cert(ca2, first.cert, first.key)
                router.process.send_signal(signal.SIGHUP)
                await router.wait_for(re.compile(rb"TLS certificate reloaded"))

                # New connections: cert B, trusted by CA2 only.
                _, status, _, body = await in_thread(h1_get, port, ctx2, "/after")
                assert status == 200, body
                assert json.loads(body)["scheme"] == "https"
                with pytest.raises(ssl.SSLCertVerificationError):
                    await in_thread(h1_get, port, ctx1, "/after")

                # The old connections still work, on the same connection, with cert A.
                status, _, body = await in_thread(old_http.get, "/old-connection")
                assert status == 200, body
                assert json.loads(body)["path"] == "/old-connection"
                assert peer_der(old) == cert_a
                response = await client.get(f"https://127.0.0.1:{port}/old-client")
                assert response.status_code == 200
                assert (
                    response.extensions["network_stream"].get_extra_info("client_addr")
                    == httpx_addr
                ), "httpx had to open a new connection: the old one was dropped"

                # A broken key: the reload fails, the router keeps cert B and says why.
                first.key.write_text("-----BEGIN PRIVATE KEY-----\nbroken\n")
                router.process.send_signal(signal.SIGHUP)
                failed = await router.wait_for(re.compile(rb"WARNING.*TLS reload failed.*"))
                assert str(first.key).encode() in failed.group(0), failed.group(0)
                _, status, _, _ = await in_thread(h1_get, port, ctx2, "/still-b")
                assert status == 200
                with pytest.raises(ssl.SSLCertVerificationError):
                    await in_thread(h1_get, port, ctx1, "/still-b")
                status, _, _ = await in_thread(old_http.get, "/old-after-failed-reload")
                assert status == 200
                assert router.process.poll() is None, router.text()
            finally:
                old.close()
                await client.aclose()
                await backend.stop()
        nursery.cancel_scope.cancel()


# -- 6. bad certificate files ------------------------------------------------------------------


async def run_router_cli(*flags: str) -> tuple[int, str]:
    result = await trio.run_process(
        [
            sys.executable,
            "-m",
            "router",
            "--http",
            "127.0.0.1:0",
            "--tunnel",
            "127.0.0.1:0",
            *flags,
        ],
        cwd=str(ROOT),
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return result.returncode, (result.stdout + result.stderr).decode("utf-8", "replace")


def assert_one_line_error(code: int, output: str, names: str) -> None:
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2, (code, output)
    assert "Traceback" not in output, output
    assert len(lines) == 1, output
    assert names in lines[0], output


@pytest.mark.timeout(30)
async def test_nonexistent_certificate_exits_2_with_one_line() -> None:
    code, output = await run_router_cli(
        "--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"
    )
    assert_one_line_error(code, output, "/nonexistent/cert.pem")


@pytest.mark.timeout(30)
async def test_mismatched_key_exits_2_with_one_line(tmp_path: Path) -> None:
    a, b = make_certs(tmp_path, "a"), make_certs(tmp_path, "b")
    code, output = await run_router_cli("--tls-cert", str(a.cert), "--tls-key", str(b.key))
    assert_one_line_error(code, output, str(a.cert))


@pytest.mark.timeout(30)
async def test_garbage_key_file_exits_2_with_one_line(tmp_path: Path) -> None:
    a = make_certs(tmp_path, "a")
    a.key.write_text("not a key\n")
    code, output = await run_router_cli("--tls-cert", str(a.cert), "--tls-key", str(a.key))
    assert_one_line_error(code, output, str(a.key))

"""ptth.httpsock against real ASGI servers: the Listener mounted in uvicorn (asyncio, under a
Starlette Mount) and in hypercorn (asyncio and trio), ``dial()`` on the same loop.

Each scenario runs on every (server, loop) pair: bytes both ways, EOF each way, 20 MB intact, a
TLS session over the stream, resets, expiry, forged tokens, retried PUTs.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
import trustme
from anyio.streams.tls import TLSStream

from ptth.errors import ForwardProxyError, HandshakeRefused
from ptth.httpsock import Limits, Listener, ServerStream, dial
from tests.support import free_port, serve_lifespan

SERVERS = [("uvicorn", "asyncio"), ("hypercorn", "asyncio"), ("hypercorn", "trio")]
FAST = Limits(poll_timeout=1.0, idle_timeout=3.0)

Scenario = Callable[[str, Listener], Awaitable[None]]


@asynccontextmanager
async def serving(server: str, loop: str, listener: Listener) -> AsyncIterator[str]:
    """``listener`` served on 127.0.0.1; yields its base URL."""
    port = free_port()
    async with anyio.create_task_group() as tg:
        if server == "uvicorn":
            import uvicorn
            from starlette.applications import Starlette
            from starlette.routing import Mount

            app = Starlette(routes=[Mount("/tunnel/socket", app=listener)])
            config = uvicorn.Config(
                app,
                host="127.0.0.1",
                port=port,
                log_level="warning",
                lifespan="off",
                timeout_graceful_shutdown=2,
            )
            userver = uvicorn.Server(config)
            tg.start_soon(userver.serve)
            with anyio.fail_after(10):
                while not userver.started:
                    await anyio.sleep(0.01)
            try:
                yield f"http://127.0.0.1:{port}/tunnel/socket/"
            finally:
                userver.should_exit = True
            return
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.accesslog = None
        config.graceful_timeout = 2
        stop = anyio.Event()
        if loop == "trio":
            from hypercorn.trio import serve as trio_serve

            await tg.start(partial(trio_serve, listener, config, shutdown_trigger=stop.wait))
        else:
            from hypercorn.asyncio import serve as asyncio_serve

            tg.start_soon(partial(asyncio_serve, listener, config, shutdown_trigger=stop.wait))
            with anyio.fail_after(10):
                while True:
                    try:
                        await (await anyio.connect_tcp("127.0.0.1", port)).aclose()
                        break
                    except OSError:
                        await anyio.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{port}/"
        finally:
            stop.set()


def run(server: str, loop: str, scenario: Scenario, limits: Limits = FAST, **kw: object) -> None:
    async def main() -> None:
        with anyio.fail_after(45):
            listener = Listener(limits=limits, **kw)  # type: ignore[arg-type]
            async with listener, serving(server, loop, listener) as url:
                await scenario(url, listener)

    anyio.run(main, backend=loop)


params = pytest.mark.parametrize(
    ("server", "loop"), SERVERS, ids=[f"{name}-{loop}" for name, loop in SERVERS]
)


async def read_all(stream: anyio.abc.ByteStream) -> bytes:
    data = bytearray()
    while True:
        try:
            data += await stream.receive()
        except anyio.EndOfStream:
            return bytes(data)


async def echo_until_eof(stream: ServerStream) -> None:
    async with stream:
        while True:
            try:
                data = await stream.receive()
            except anyio.EndOfStream:
                await stream.send(b"<bye>")
                return
            await stream.send(data.upper())


@params
def test_echo_and_eof_each_way(server: str, loop: str) -> None:
    async def scenario(url: str, listener: Listener) -> None:
        async with anyio.create_task_group() as tg:
            client = await dial(url)
            served = await listener.accept()
            assert served.extra(anyio.abc.SocketAttribute.remote_address)[0] == "127.0.0.1"
            tg.start_soon(echo_until_eof, served)
            for word in (b"hello", b"over", b"http"):
                await client.send(word)
                assert await client.receive() == word.upper()
            await client.send_eof()  # the server sees EOF, answers after it, then closes
            assert await read_all(client) == b"<bye>"
            await client.aclose()

        # And the other way: the server ends first; the client still sends after it.
        client = await dial(url)
        served = await listener.accept()
        await served.send(b"first")
        await served.send_eof()
        assert await read_all(client) == b"first"
        await client.send(b"still open this way")
        assert await served.receive() == b"still open this way"
        await client.aclose()
        with pytest.raises(anyio.EndOfStream):
            await served.receive()
        await served.aclose()

    run(server, loop, scenario)


@params
def test_twenty_megabytes_intact_both_ways(server: str, loop: str) -> None:
    size = 20 * 1024 * 1024
    blob = hashlib.sha256(b"seed").digest() * (size // 32)

    async def scenario(url: str, listener: Listener) -> None:
        client = await dial(url)
        served = await listener.accept()
        got_up = hashlib.sha256()
        got_down = hashlib.sha256()

        async def up() -> None:
            for i in range(0, size, 256 * 1024):
                await client.send(blob[i : i + 256 * 1024])
            await client.send_eof()

        async def served_side() -> None:
            async def drain() -> None:
                while True:
                    try:
                        got_up.update(await served.receive(1 << 20))
                    except anyio.EndOfStream:
                        return

            async with anyio.create_task_group() as inner:
                inner.start_soon(drain)
                for i in range(0, size, 100_000):
                    await served.send(blob[i : i + 100_000])
                await served.send_eof()

        async def down() -> None:
            while True:
                try:
                    got_down.update(await client.receive(1 << 20))
                except anyio.EndOfStream:
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(up)
            tg.start_soon(served_side)
            tg.start_soon(down)
        digest = hashlib.sha256(blob).hexdigest()
        assert got_up.hexdigest() == digest and got_down.hexdigest() == digest
        await client.aclose()
        await served.aclose()

    run(server, loop, scenario)


@params
def test_tls_session_over_the_stream(server: str, loop: str) -> None:
    """As the original README's example: TLS end to end over the HTTP requests."""
    ca = trustme.CA()
    cert = ca.issue_cert("tunnel.example")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def scenario(url: str, listener: Listener) -> None:
        async def tls_server(stream: ServerStream) -> None:
            tls = await TLSStream.wrap(stream, server_side=True, ssl_context=server_ctx)
            async with tls:
                await tls.send(b"secret: " + await tls.receive())

        async with anyio.create_task_group() as tg:
            raw = await dial(url)
            tg.start_soon(tls_server, await listener.accept())
            tls = await TLSStream.wrap(raw, hostname="tunnel.example", ssl_context=client_ctx)
            await tls.send(b"ping")
            assert await tls.receive() == b"secret: ping"
            assert tls.extra(anyio.streams.tls.TLSAttribute.peer_certificate) is not None
            await tls.aclose()

    run(server, loop, scenario)


@params
def test_reset_and_server_close_reach_the_other_side(server: str, loop: str) -> None:
    async def scenario(url: str, listener: Listener) -> None:
        client = await dial(url)
        served = await listener.accept()
        await client.send(b"x")
        assert await served.receive() == b"x"
        await anyio.aclose_forcefully(client)  # DELETE with X-Reset
        with anyio.fail_after(5), pytest.raises(anyio.BrokenResourceError):
            await served.receive()
        with pytest.raises(anyio.BrokenResourceError):
            await served.send(b"too late")
        await served.aclose()

        # The server closes; the client's next bytes get 410 (like TCP's RST).
        client = await dial(url)
        served = await listener.accept()
        await served.aclose()
        assert await read_all(client) == b""
        await client.send(b"nobody reads this")
        with anyio.fail_after(5):
            while True:
                try:
                    await client.send(b"!")
                except anyio.BrokenResourceError:
                    break
                await anyio.sleep(0.05)
        await client.aclose()

    run(server, loop, scenario)


@params
def test_forged_token_wrong_credentials_and_idle_expiry(server: str, loop: str) -> None:
    async def scenario(url: str, listener: Listener) -> None:
        base = url.rstrip("/")
        async with httpx.AsyncClient() as http:
            opened = await http.post(url, headers={"authorization": "Bearer alice"})
            assert opened.status_code == 201
            assert opened.headers["cache-control"] == "no-store"
            token = opened.headers["x-session"]
            assert len(token) == 43  # 256 bits, base64url
            served = await listener.accept()
            get = {"x-ack": "0", "x-content-length": "10", "authorization": "Bearer alice"}
            forged = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
            assert (await http.get(f"{base}/{forged}", headers=get)).status_code == 404
            wrong = {**get, "authorization": "Bearer mallory"}
            assert (await http.get(f"{base}/{token}", headers=wrong)).status_code == 404
            missing = {k: v for k, v in get.items() if k != "authorization"}
            assert (await http.get(f"{base}/{token}", headers=missing)).status_code == 404
            await served.send(b"hi")
            answer = await http.get(f"{base}/{token}", headers=get, params={"r": "1"})
            assert answer.status_code == 200 and answer.content == b"hi"
            assert answer.headers["x-seq"] == "0" and answer.headers["cache-control"] == "no-store"
            # Then silence: the session expires after idle_timeout (3 s here).
            with anyio.fail_after(8), pytest.raises(anyio.BrokenResourceError):
                await served.receive()
            late = await http.get(f"{base}/{token}", headers={**get, "x-ack": "2"})
            assert late.status_code in (404, 410)
            await served.aclose()

    run(server, loop, scenario)


@params
def test_retried_put_is_applied_once(server: str, loop: str) -> None:
    async def scenario(url: str, listener: Listener) -> None:
        base = url.rstrip("/")
        async with httpx.AsyncClient() as http:
            token = (await http.post(url)).headers["x-session"]
            served = await listener.accept()
            put = partial(http.put, f"{base}/{token}")
            first = await put(content=b"abc", headers={"x-seq": "0"}, params={"r": "a"})
            assert first.status_code == 204 and first.headers["x-ack"] == "3"
            again = await put(content=b"abc", headers={"x-seq": "0"}, params={"r": "b"})
            assert again.status_code == 204 and again.headers["x-ack"] == "3"
            overlap = await put(content=b"bcdef", headers={"x-seq": "1"}, params={"r": "c"})
            assert overlap.headers["x-ack"] == "6"
            ahead = await put(content=b"zz", headers={"x-seq": "9"}, params={"r": "d"})
            assert ahead.status_code == 409 and ahead.headers["x-ack"] == "6"
            end = await put(content=b"", headers={"x-seq": "6", "x-eof": "1"}, params={"r": "e"})
            assert end.status_code == 204 and end.headers["x-eof"] == "1"
            assert await read_all(served) == b"abcdef"
            assert (await http.delete(f"{base}/{token}")).status_code == 204
            await served.aclose()

    run(server, loop, scenario)


@params
def test_session_cap_and_refusal(server: str, loop: str) -> None:
    async def scenario(url: str, listener: Listener) -> None:
        first = await dial(url)
        with pytest.raises(HandshakeRefused) as refused:
            await dial(url)
        assert refused.value.status == 503 and refused.value.retryable
        served = await listener.accept()
        await first.aclose()
        await served.aclose()
        second = await dial(url)  # the first's DELETE freed its place
        await second.aclose()
        await (await listener.accept()).aclose()

    run(server, loop, scenario, max_sessions=1)


@params
def test_memory_budget_and_refusals_before_the_body(server: str, loop: str) -> None:
    """``max_buffered`` bounds what every session holds; a PUT for no session is refused
    without its body being read."""

    async def scenario(url: str, listener: Listener) -> None:
        base = url.rstrip("/")
        async with httpx.AsyncClient() as http:
            token = (await http.post(url)).headers["x-session"]
            served = await listener.accept()
            put = partial(http.put, f"{base}/{token}")
            assert (await put(content=b"x" * 2000, headers={"x-seq": "0"})).status_code == 503
            first = await put(content=b"a" * 800, headers={"x-seq": "0"})
            assert first.status_code == 204 and first.headers["x-ack"] == "800"
            full = await put(content=b"b" * 800, headers={"x-seq": "800"})
            assert full.status_code == 503 and full.headers["retry-after"] == "1"
            assert await served.receive(10_000) == b"a" * 800  # read: the budget is back
            second = await put(content=b"b" * 800, headers={"x-seq": "800"})
            assert second.status_code == 204 and second.headers["x-ack"] == "1600"
            assert await served.receive(10_000) == b"b" * 800
            unknown = await http.put(f"{base}/{'A' * 43}", content=b"z" * 100_000)
            assert unknown.status_code == 404
            assert (await http.get(f"{base}/{token}/x")).status_code == 404
            assert (await http.request("PATCH", url)).status_code == 405
            await served.aclose()

    run(server, loop, scenario, max_buffered=1000)


@params
def test_a_client_that_does_not_read_keeps_its_session(server: str, loop: str) -> None:
    """With its inbox full the client has no GET to hold; it still sends an empty one every
    third of the server's idle timeout (3 s here), so the session outlives the pause."""

    async def scenario(url: str, listener: Listener) -> None:
        client = await dial(url, limits=Limits(inbox=1000))
        served = await listener.accept()
        blob = bytes(range(250)) * 20  # 5,000 bytes: five inboxes' worth
        async with anyio.create_task_group() as tg:
            tg.start_soon(served.send, blob)
            await anyio.sleep(5)  # longer than the idle timeout, reading nothing
            got = bytearray()
            while len(got) < len(blob):
                got += await client.receive()
        assert bytes(got) == blob
        await client.aclose()
        await served.aclose()

    run(server, loop, scenario)


async def cutting_relay(
    target: int, idle_cut: float, cuts: list[float], *, task_status: anyio.abc.TaskStatus[int]
) -> None:
    """A middlebox between client and server: relays TCP, and drops any connection on which
    nothing has moved for ``idle_cut`` seconds (what many proxies do to a held request)."""
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as relay:
        task_status.started(relay.extra(anyio.abc.SocketAttribute.local_port))

        async def handle(client: anyio.abc.SocketStream) -> None:
            async with client, await anyio.connect_tcp("127.0.0.1", target) as server:
                moved = anyio.current_time()

                async def pipe(a: anyio.abc.SocketStream, b: anyio.abc.SocketStream) -> None:
                    nonlocal moved
                    try:
                        async for data in a:
                            moved = anyio.current_time()
                            await b.send(data)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        pass
                    tg.cancel_scope.cancel()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(pipe, client, server)
                    tg.start_soon(pipe, server, client)
                    while anyio.current_time() - moved < idle_cut:
                        await anyio.sleep(0.1)
                    cuts.append(anyio.current_time())
                    tg.cancel_scope.cancel()  # cut: both sockets are closed

        await relay.serve(handle)


@params
def test_a_middlebox_that_cuts_held_requests(server: str, loop: str) -> None:
    """Held GETs cut after 1.5 s of silence: the client asks for shorter holds and the
    session carries bytes both ways as before (the server would hold for 5 s)."""

    async def scenario(url: str, listener: Listener) -> None:
        port = int(url.split(":")[2].split("/")[0])
        async with anyio.create_task_group() as tg:
            cuts: list[float] = []
            relay = await tg.start(cutting_relay, port, 1.5, cuts)
            client = await dial(url.replace(f":{port}", f":{relay}"))
            served = await listener.accept()
            await anyio.sleep(6)  # quiet: the first held GET is cut, the next ones are not
            assert 1 <= len(cuts) <= 2, cuts  # (the POST's idle connection may be the other)
            await served.send(b"after the cut")
            with anyio.fail_after(3):
                assert await client.receive() == b"after the cut"
            await client.send(b"and back")
            with anyio.fail_after(3):
                assert await served.receive() == b"and back"
            await client.aclose()
            await served.aclose()
            tg.cancel_scope.cancel()

    run(server, loop, scenario, limits=Limits(poll_timeout=5.0, idle_timeout=15.0))


def test_a_garbled_answer_breaks_the_stream_never_hangs() -> None:
    """A GET answer with a nonsense X-Seq: the client's receive raises BrokenResourceError
    instead of waiting forever."""

    async def main() -> None:
        with anyio.fail_after(20):
            listener = Listener(limits=FAST)

            async def garbling(scope: Any, receive: Any, send: Any) -> None:
                async def garbled_send(message: Any) -> None:
                    if message["type"] == "http.response.start" and message["status"] == 200:
                        headers = [
                            (n, b"12x" if n == b"x-seq" else v) for n, v in message["headers"]
                        ]
                        message = {**message, "headers": headers}
                    await send(message)

                await listener(scope, receive, garbled_send)

            async with listener, serving("hypercorn", "trio", garbling) as url:  # type: ignore[arg-type]
                client = await dial(url)
                served = await listener.accept()
                await served.send(b"bytes")
                with pytest.raises(anyio.BrokenResourceError, match="nonsense"):
                    await client.receive()
                await anyio.aclose_forcefully(client)
                await served.aclose()

    anyio.run(main, backend="trio")


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_a_pump_that_dies_says_so(loop: str) -> None:
    """ptth/httpsock/_tasks.py: an unforeseen exception reaches the owner; stop() waits."""
    from ptth.httpsock._tasks import Pump

    async def main() -> None:
        seen: list[BaseException] = []

        async def boom() -> None:
            await anyio.sleep(0)
            raise RuntimeError("boom")

        async def forever() -> None:
            await anyio.sleep_forever()

        failing = Pump(boom, seen.append)
        with anyio.fail_after(5):
            while failing.running:
                await anyio.sleep(0.01)
        assert isinstance(failing.error, RuntimeError) and seen == [failing.error]
        waiting = Pump(forever, seen.append)
        await anyio.sleep(0.01)
        with anyio.fail_after(5):
            await waiting.stop()  # cancelled, and not an error
        assert not waiting.running and waiting.error is None and len(seen) == 1

    anyio.run(main, backend=loop)


def test_dial_names_what_refused_it() -> None:
    """A server that is not httpsock (its 404 lacks the listener's no-store mark) is named as
    such; an answer in that shape through a proxy is the proxy's (ForwardProxyError)."""

    async def main() -> None:
        async def not_httpsock(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                await serve_lifespan(receive, send)
                return
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"<html>secret page</html>"})

        with anyio.fail_after(20):
            async with serving("hypercorn", "trio", not_httpsock) as url:  # type: ignore[arg-type]
                with pytest.raises(HandshakeRefused) as refused:
                    await dial(url, trust_env=False)
                assert refused.value.status == 401
                assert "not an httpsock server" in refused.value.reason
                assert "secret page" not in str(refused.value)
                # The same answer from something given as the proxy: the proxy refused.
                port = url.split(":")[2].split("/")[0]
                with pytest.raises(ForwardProxyError) as by_proxy:
                    await dial("http://192.0.2.1:9/", proxy=f"http://u:pw@127.0.0.1:{port}")
                assert by_proxy.value.proxy_status == 401
                message = str(by_proxy.value)
                assert "proxy authentication required" in message and "pw" not in message

    anyio.run(main, backend="trio")

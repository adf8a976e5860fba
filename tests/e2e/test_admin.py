"""The admin listener against a real router and a real backend: /metrics values after real
requests, /healthz, /readyz while draining, /api/status, the inspector's masking, the
server-sent events, and that none of it is on the public port."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator

import h2.exceptions
import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

import ptth
from ptth.errors import ConfigError
from ptth.types import Receive, Scope, Send
from router.admin import admin_address
from router.config import load_config
from tests.e2e.test_faults import (
    fake_backend,
    fake_tunnels,
    router_with_real_backend,
    wait_until,
)
from tests.support import (
    RunningRouter,
    make_hello_app,
    read_body,
    require_module,
    serve_lifespan,
    start_router,
)

SECRET = "s3cr3t-value"


def options(instance: str) -> ptth.BackendOptions:
    return ptth.BackendOptions(instance=instance, liveness=ptth.Liveness(interval=0.2))


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics page by (name, labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def scrape(router: RunningRouter) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with httpx.AsyncClient(base_url=router.addresses.admin_url) as admin:
        response = await admin.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(response.text)


@pytest.mark.timeout(30)
async def test_metrics_count_real_requests_tunnels_and_reconnects() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        backend = await ptth_backend(nursery, router, "alpha")
        async with httpx.AsyncClient(base_url=router.url) as client:
            for _ in range(3):
                assert (await client.get("/a")).text == "bar"
            assert (await client.post("/echo", content=b"x" * 1000)).text == "x" * 1000
        found = await scrape(router)
        requests = "ptth_requests_total"
        assert value(found, requests, service="default", code="2xx", method="GET") == 3
        assert value(found, requests, service="default", code="2xx", method="POST") == 1
        assert value(found, "ptth_request_bytes_total", service="default") == 1000
        assert value(found, "ptth_response_bytes_total", service="default") == 3 * 3 + 1000
        assert value(found, "ptth_request_duration_seconds_count", service="default") == 4
        assert value(found, "ptth_request_headers_seconds_count", service="default") == 4
        assert (
            value(found, "ptth_request_duration_seconds_bucket", service="default", le="+Inf") == 4
        )
        assert 0 < value(found, "ptth_request_duration_seconds_sum", service="default") < 4
        assert value(found, "ptth_tunnels", service="default", state="ready") == 1
        assert value(found, "ptth_tunnels_registered_total", service="default") == 1
        assert value(found, "ptth_requests_in_flight") == 0
        assert value(found, "ptth_requests_queued") == 0
        assert value(found, "ptth_tunnel_reconnects_total", service="default") == 0
        # The backend pings every 0.2 s of silence, the router answers, and the router's own
        # PINGs (ping_interval) give the RTT.
        tunnel = router.router.registry.tunnels()[0]
        await backend.stop()
        with trio.fail_after(5):
            while router.tunnel_count():
                await trio.sleep(0.01)
        found = await scrape(router)
        assert value(found, "ptth_tunnels", service="default", state="ready") == 0
        assert value(found, "ptth_tunnels_lost_total", service="default") == 1
        # The same instance back: a reconnect.
        await ptth_backend(nursery, router, "alpha")
        found = await scrape(router)
        assert value(found, "ptth_tunnel_reconnects_total", service="default") == 1
        assert value(found, "ptth_tunnels_registered_total", service="default") == 2
        assert tunnel.tunnel_id not in {t.tunnel_id for t in router.router.registry.tunnels()}
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_tunnel_rtt_from_pings_and_handshake_refusals() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, ping_interval=0.1)
        await ptth_backend(nursery, router, "alpha")
        tunnel = router.router.registry.tunnels()[0]
        with trio.fail_after(5):
            while tunnel.connection.rtt is None:
                await trio.sleep(0.05)
        found = await scrape(router)
        rtt = value(
            found,
            "ptth_tunnel_rtt_seconds",
            service="default",
            instance="alpha",
            tunnel=tunnel.tunnel_id,
        )
        assert 0 < rtt < 1
        # A handshake without an upgrade is refused (426): counted with its reason.
        host, port = router.addresses.tunnel or ("", 0)
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(
                b"POST /.well-known/ptth HTTP/1.1\r\nHost: r\r\nContent-Length: 0\r\n\r\n"
            )
            with trio.fail_after(5):
                answer = await stream.receive_some(100)
        status = answer.split()[1].decode()
        found = await scrape(router)
        refused = {
            labels: v
            for (name, labels), v in found.items()
            if name == "ptth_handshake_refusals_total"
        }
        assert len(refused) == 1
        [(labels, count)] = refused.items()
        assert dict(labels)["status"] == status and count == 1
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_status_json_lists_services_tunnels_and_rates() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, ping_interval=0.1)
        await ptth_backend(nursery, router, "alpha")
        async with httpx.AsyncClient(base_url=router.url) as client:
            for _ in range(5):
                await client.get("/x")
        await trio.sleep(1.2)  # one rate sample after the requests
        async with httpx.AsyncClient(base_url=router.addresses.admin_url) as admin:
            status = (await admin.get("/api/status")).json()
        assert status["router"]["ready"] is True
        assert status["router"]["front_end"] == router.url
        [service] = status["services"]
        assert service["name"] == "default"
        assert service["requests_total"] == 5 and service["errors_total"] == 0
        assert service["requests_per_second"] > 0
        [tunnel] = service["tunnels"]
        assert tunnel["instance"] == "alpha"
        assert tunnel["address"].startswith("127.0.0.1")
        assert tunnel["age"] > 1
        assert tunnel["in_flight"] == 0
        assert tunnel["weight"] == 1.0
        assert tunnel["draining"] is False
        assert tunnel["rtt_ms"] is not None and tunnel["rtt_ms"] >= 0
        nursery.cancel_scope.cancel()


async def secret_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await serve_lifespan(receive, send)
        return
    await read_body(receive)
    await send(
        {
            "type": "http.response.start",
            "status": 201,
            "headers": [(b"set-cookie", f"sid={SECRET}".encode()), (b"x-kept", b"visible")],
        }
    )
    await send({"type": "http.response.body", "body": b"the response"})


@pytest.mark.timeout(30)
@pytest.mark.parametrize("bodies", [False, True])
async def test_inspector_masks_secrets_and_keeps_bodies_only_when_asked(bodies: bool) -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, inspect_bodies=bodies)
        nursery.start_soon(
            lambda: ptth.serve(secret_app, router.tunnel, options=options("secretive"))
        )
        await router.wait_tunnels(1)
        async with httpx.AsyncClient(base_url=router.addresses.admin_url) as admin:
            async with admin.stream("GET", "/api/events") as events:
                lines = events.aiter_lines()
                assert await next_event(lines) == "status"
                async with httpx.AsyncClient(base_url=router.url) as client:
                    response = await client.post(
                        f"/login?user=ann&token={SECRET}",
                        content=b"form",
                        headers={
                            "authorization": f"Bearer {SECRET}",
                            "cookie": f"a={SECRET}",
                            "proxy-authorization": f"Basic {SECRET}",
                        },
                    )
                assert response.status_code == 201
                pushed = ""
                with trio.fail_after(5):
                    while not pushed:
                        if await next_event(lines) == "request":
                            pushed = last_data
            listed = (await admin.get("/api/requests")).text
            page = (await admin.get("/")).text + (await admin.get("/page.js")).text
        for text in (pushed, listed, page):
            assert SECRET not in text
        [item] = json.loads(listed)["requests"]
        assert json.loads(pushed) == item
        assert item["method"] == "POST" and item["status"] == 201
        assert item["path"] == "/login?user=ann&token=(masked)"
        assert item["instance"] == "secretive" and item["service"] == "default"
        assert item["bytes_in"] == 4
        request_headers = dict(item["request_headers"])
        for name in ("authorization", "cookie", "proxy-authorization"):
            assert request_headers[name] == "(masked)"
        response_headers = dict(item["response_headers"])
        assert response_headers["set-cookie"] == "(masked)"
        assert response_headers["x-kept"] == "visible"
        if bodies:
            assert item["request_body"] == "form"
            assert item["response_body"] == "the response"
        else:
            assert item["request_body"] is None and item["response_body"] is None
        nursery.cancel_scope.cancel()


last_data = ""


async def next_event(lines: AsyncIterator[str]) -> str:
    """The next server-sent event's name; its data goes to ``last_data``."""
    global last_data
    name = ""
    async for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            last_data = line[6:]
        elif not line and name:
            return name
    raise AssertionError("the event stream ended")


@pytest.mark.timeout(30)
async def test_healthz_and_readyz_503_while_draining() -> None:
    release = trio.Event()
    entered = trio.Event()

    async def slow_app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        entered.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"late"})

    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, drain_timeout=10)
        nursery.start_soon(lambda: ptth.serve(slow_app, router.tunnel, options=options("slow")))
        await router.wait_tunnels(1)
        async with httpx.AsyncClient(base_url=router.addresses.admin_url) as admin:
            assert (await admin.get("/healthz")).status_code == 200
            ready = await admin.get("/readyz")
            assert (ready.status_code, ready.text) == (200, "ready\n")
            async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
                answers: list[str] = []

                async def call() -> None:
                    answers.append((await client.get("/slow")).text)

                nursery.start_soon(call)
                await entered.wait()
                router.router.shutdown()
                with trio.fail_after(5):
                    while (await admin.get("/readyz")).status_code != 503:
                        await trio.sleep(0.01)
                assert (await admin.get("/readyz")).text == "draining\n"
                assert (await admin.get("/healthz")).status_code == 200
                status = (await admin.get("/api/status")).json()
                assert status["router"]["draining"] is True
                assert status["router"]["in_flight"] == 1
                release.set()
                with trio.fail_after(5):
                    while not answers:
                        await trio.sleep(0.01)
                assert answers == ["late"]
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_admin_is_not_on_the_public_port() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        await ptth_backend(nursery, router, "alpha")
        assert router.addresses.admin is not None
        assert router.addresses.admin[1] not in (
            router.addresses.http[1],
            router.addresses.tunnel[1],
        )  # type: ignore[index]
        async with httpx.AsyncClient(base_url=router.url) as client:
            for path in ("/metrics", "/api/status", "/healthz", "/readyz", "/api/events"):
                response = await client.get(path)
                # The app answers: the router's admin paths are the backend's paths here.
                assert (response.status_code, response.text) == (200, "bar"), path
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(20)
async def test_a_name_that_could_be_rebound_is_refused_on_loopback() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        port = router.addresses.admin[1]  # type: ignore[index]
        async with httpx.AsyncClient(base_url=router.addresses.admin_url) as admin:
            for host, status in (
                (f"127.0.0.1:{port}", 200),
                (f"localhost:{port}", 200),
                ("[::1]", 200),
                (f"evil.example:{port}", 403),
                ("evil.example", 403),
                ("", 403),
            ):
                response = await admin.get("/api/status", headers={"host": host})
                assert response.status_code == status, host
        nursery.cancel_scope.cancel()


def test_admin_on_a_public_port_is_refused() -> None:
    # What Router() calls first thing for --admin (a Router built and dropped here would leave
    # its httpsock queue unclosed).
    with pytest.raises(ConfigError, match="public port"):
        admin_address("127.0.0.1:9999", ["127.0.0.1:9999", "127.0.0.1:9998"])
    with pytest.raises(ConfigError, match="public port"):
        admin_address("127.0.0.1:9998", ["127.0.0.1:9999", "0.0.0.0:9998"])
    assert admin_address("127.0.0.1:0", ["127.0.0.1:0", "127.0.0.1:0"]) == ("127.0.0.1", 0)
    assert admin_address("[::1]:8889", ["127.0.0.1:8888", "none"]) == ("::1", 8889)
    assert admin_address("none", ["127.0.0.1:8888"]) is None


@pytest.mark.timeout(20)
async def test_admin_none_turns_it_off() -> None:
    config = load_config(["--admin", "none"], environ={})
    assert config.admin == "none"
    assert load_config([], environ={}).admin == "127.0.0.1:8889"
    assert load_config([], environ={"PTTH_ADMIN": "127.0.0.1:0"}).admin == "127.0.0.1:0"
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, admin="none")
        assert router.addresses.admin is None
        assert router.router.admin is None
        assert router.router.context.observer is None  # nothing is counted at all
        with pytest.raises(LookupError):
            _ = router.addresses.admin_url
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(20)
async def test_an_admin_port_in_use_leaves_the_router_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with trio.open_nursery() as nursery:
            router = await start_router(nursery, admin=f"127.0.0.1:{port}")
            assert router.addresses.admin is None
            assert "admin listener: cannot listen" in caplog.text
            await ptth_backend(nursery, router, "alpha")
            async with httpx.AsyncClient(base_url=router.url) as client:
                assert (await client.get("/")).text == "bar"
            nursery.cancel_scope.cancel()


async def ptth_backend(nursery: trio.Nursery, router: RunningRouter, instance: str) -> Backend:
    before = router.tunnel_count()
    backend = Backend()
    nursery.start_soon(backend.run, router, instance)
    await router.wait_tunnels(before + 1)
    return backend


class Backend:
    """``ptth.serve`` of the hello app that a test can stop (it drains)."""

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.done = trio.Event()

    async def run(self, router: RunningRouter, instance: str) -> None:
        try:
            with self.scope:
                await ptth.serve(make_hello_app(instance), router.tunnel, options=options(instance))
        finally:
            self.done.set()

    async def stop(self) -> None:
        self.scope.cancel()
        await self.done.wait()


@pytest.mark.timeout(20)
async def test_a_flood_that_closes_a_tunnel_is_counted() -> None:
    async with router_with_real_backend() as router:
        async with fake_backend(router) as fake:
            try:
                for i in range(5000):
                    fake.conn.ping(i.to_bytes(8, "big"))
                await fake.flush()
            except (
                trio.BrokenResourceError,
                trio.ClosedResourceError,
                h2.exceptions.ProtocolError,
            ):
                pass  # the router closed before the flood was over
            assert await fake.wait_closed(3) < 3
        await wait_until(lambda: fake_tunnels(router) == 0, timeout=2)
        found = await scrape(router)
        assert (
            value(found, "ptth_flood_guard_trips_total", side="tunnel", kind="PING/SETTINGS flood")
            == 1
        )
        assert value(found, "ptth_tunnels_lost_total", service="fake") == 1
        assert value(found, "ptth_tunnels", service="default", state="ready") == 1


@pytest.mark.timeout(30)
async def test_websocket_sessions_open_and_finished() -> None:
    require_module("websockets", "a WebSocket client")
    from websockets.sync.client import connect

    from tests.e2e.apps_websocket import make_app

    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        nursery.start_soon(lambda: ptth.serve(make_app("ws"), router.tunnel, options=options("ws")))
        await router.wait_tunnels(1)
        url = router.url.replace("http://", "ws://", 1) + "/echo"
        ws = await trio.to_thread.run_sync(
            lambda: connect(url, proxy=None, open_timeout=10).__enter__()  # managed, not legacy
        )
        try:
            await trio.to_thread.run_sync(lambda: ws.send("hello"))
            assert await trio.to_thread.run_sync(lambda: ws.recv(timeout=5)) == "hello"
            found = await scrape(router)
            assert value(found, "ptth_websocket_sessions_open") == 1
            assert value(found, "ptth_requests_in_flight") == 1
        finally:
            await trio.to_thread.run_sync(ws.close)
        with trio.fail_after(5):
            while value(found := await scrape(router), "ptth_websocket_sessions_open"):
                await trio.sleep(0.02)
        assert value(found, "ptth_websocket_sessions_total", service="default", code="1xx") == 1
        assert value(found, "ptth_request_bytes_total", service="default") == 5
        assert value(found, "ptth_response_bytes_total", service="default") == 5
        assert value(found, "ptth_requests_total", service="default", code="1xx", method="GET") == 0
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_two_routers_in_one_process_keep_separate_numbers() -> None:
    async with trio.open_nursery() as nursery:
        first, second = await start_router(nursery), await start_router(nursery)
        await ptth_backend(nursery, first, "one")
        await ptth_backend(nursery, second, "two")
        async with httpx.AsyncClient(base_url=first.url) as client:
            for _ in range(3):
                await client.get("/")
        get = {"service": "default", "code": "2xx", "method": "GET"}
        assert value(await scrape(first), "ptth_requests_total", **get) == 3
        assert value(await scrape(second), "ptth_requests_total", **get) == 0
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(20)
async def test_a_users_ping_flood_is_counted_on_the_user_side() -> None:
    from hyperframe.frame import PingFrame, SettingsFrame

    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        stream = await trio.open_tcp_stream(*router.addresses.http)
        async with stream:
            flood = b"".join(
                PingFrame(0, opaque_data=i.to_bytes(8, "big")).serialize() for i in range(5000)
            )
            preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize()
            try:
                await stream.send_all(preface + flood)
                with trio.fail_after(5):
                    while await stream.receive_some(65536):
                        pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # closed (with a reset) before we read it all: the flood was cut
        with trio.fail_after(5):
            while not value(
                found := await scrape(router),
                "ptth_flood_guard_trips_total",
                side="user",
                kind="PING/SETTINGS flood",
            ):
                await trio.sleep(0.02)
        assert (
            value(found, "ptth_flood_guard_trips_total", side="tunnel", kind="PING/SETTINGS flood")
            == 0
        )
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(20)
async def test_the_admin_listener_answers_only_get_and_head() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        async with httpx.AsyncClient(base_url=router.addresses.admin_url) as admin:
            response = await admin.post("/metrics", content=b"x" * 100_000)
            assert (response.status_code, response.headers["allow"]) == (405, "GET")
            assert (await admin.get("/nope")).status_code == 404
            head = await admin.head("/api/status")
            assert head.status_code == 200 and head.content == b""
            assert (await admin.get("/healthz")).text == "ok\n"  # the connection was reused
        stream = await trio.open_tcp_stream(*router.addresses.admin)  # type: ignore[misc]
        async with stream:
            await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
            with trio.fail_after(5):
                answer = await stream.receive_some(1000)
        assert answer.startswith(b"HTTP/1.1 400 ")
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_queued_requests_and_a_draining_tunnel_are_shown() -> None:
    release = trio.Event()
    entered = trio.Event()

    async def slow_app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        entered.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, queue_timeout=20)
        backend = trio.CancelScope()
        one_stream = ptth.BackendOptions(
            instance="narrow", max_concurrent_streams=1, max_connections=1
        )

        async def serve() -> None:
            with backend:
                await ptth.serve(slow_app, router.tunnel, options=one_stream)

        nursery.start_soon(serve)
        await router.wait_tunnels(1)
        answers: list[str] = []
        async with httpx.AsyncClient(base_url=router.url, timeout=20) as client:

            async def call() -> None:
                answers.append((await client.get("/")).text)

            nursery.start_soon(call)
            await entered.wait()
            nursery.start_soon(call)  # the tunnel's one stream is taken: this one waits
            with trio.fail_after(5):
                while not value(found := await scrape(router), "ptth_requests_queued"):
                    await trio.sleep(0.02)
            assert value(found, "ptth_requests_queued") == 1
            assert value(found, "ptth_requests_in_flight") == 2
            assert (
                value(
                    found,
                    "ptth_tunnel_in_flight",
                    service="default",
                    instance="narrow",
                    tunnel=router.router.registry.tunnels()[0].tunnel_id,
                )
                == 1
            )
            # The backend drains (GOAWAY) with a request still running: its tunnel is draining.
            backend.cancel()
            with trio.fail_after(5):
                while not value(
                    found := await scrape(router),
                    "ptth_tunnels",
                    service="default",
                    state="draining",
                ):
                    await trio.sleep(0.02)
            assert value(found, "ptth_tunnels", service="default", state="ready") == 0
            async with httpx.AsyncClient(base_url=router.addresses.admin_url) as admin:
                status = (await admin.get("/api/status")).json()
            [tunnel] = status["services"][0]["tunnels"]
            assert tunnel["draining"] is True and tunnel["instance"] == "narrow"
            release.set()
            with trio.fail_after(10):
                while len(answers) < 2:
                    await trio.sleep(0.02)
        assert "done" in answers  # the other found no live tunnel once this one drained (503)
        found = await scrape(router)
        assert value(found, "ptth_tunnels", service="default", state="draining") == 0
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_garbage_on_the_admin_port_never_hurts_the_router(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import random

    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        host, port = router.addresses.admin  # type: ignore[misc]
        rng = random.Random(8)
        payloads = [rng.randbytes(rng.randrange(1, 4000)) for _ in range(30)]
        payloads += [
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X: " + b"y" * 20000 + b"\r\n\r\n",
            b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",  # then gone at once
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nab",
        ]
        for payload in payloads:
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                try:
                    await stream.send_all(payload)
                    with trio.move_on_after(0.2):
                        await stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        async with httpx.AsyncClient(base_url=router.addresses.admin_url) as admin:
            assert (await admin.get("/healthz")).status_code == 200
        await ptth_backend(nursery, router, "alpha")
        async with httpx.AsyncClient(base_url=router.url) as client:
            assert (await client.get("/")).text == "bar"
        assert "admin listener" not in caplog.text  # no error, no traceback: each was handled
        nursery.cancel_scope.cancel()

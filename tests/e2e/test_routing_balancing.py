"""Routing, balancing and the router's error mapping, end to end.

Real sockets on 127.0.0.1: an in-process router (hypercorn front end + tunnel port) and
in-process backends (``ptth.serve``), called with httpx over HTTP/1.1 and h2c. The tests of what
the app sees (disconnects, errors, lifespan, scope) run the helper on both loops
(``helper_loop``); routing and balancing are the router's and run it on trio only.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

import anyio
import httpx
import pytest
import trio

from ptth import BackendOptions
from ptth.errors import ConfigError, HandshakeRefused, LifespanError
from ptth.types import ASGIApp, Receive, Scope, Send
from tests.support import (
    RunningBackend,
    RunningRouter,
    ThreadSafeEvent,
    make_hello_app,
    read_body,
    serve_lifespan,
    start_backend,
    start_router,
)

# -- helpers -------------------------------------------------------------------------------


async def send_text(send: Send, status: int, text: str, name: str = "app") -> None:
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
                (b"x-backend", name.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def fetch_many(
    client: httpx.AsyncClient, count: int, concurrency: int, path: str = "/"
) -> list[httpx.Response]:
    """``count`` GETs of ``path`` with ``concurrency`` requests in flight at a time."""
    responses: list[httpx.Response] = []
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            responses.append(await client.get(path))

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return responses


async def wait_done(backend: RunningBackend, timeout: float = 5.0) -> BaseException | None:
    with trio.fail_after(timeout):
        await backend.done.wait()
    return backend.error


async def wait_in_flight(router: RunningRouter, count: int, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while sum(t.in_flight for t in router.router.registry.tunnels()) < count:
            await trio.sleep(0.005)


async def stop_all(*backends: RunningBackend) -> None:
    for backend in backends:
        await backend.stop()
        assert backend.error is None, backend.error


# -- 1, 2: balancing -----------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_three_backends_share_300_requests() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        names = ["b0", "b1", "b2"]
        backends = [await start_backend(nursery, make_hello_app(n), router.tunnel) for n in names]
        await router.wait_tunnels(3)
        async with httpx.AsyncClient(base_url=router.url) as client:
            responses = await fetch_many(client, 300, concurrency=10)
        assert len(responses) == 300
        assert all((r.status_code, r.text) == (200, "bar") for r in responses)
        counts = Counter(r.headers["x-backend"] for r in responses)
        assert set(counts) == set(names)
        assert min(counts.values()) >= 60, counts  # each at least 20%
        assert sum(t.served for t in router.router.registry.tunnels()) == 300
        await stop_all(*backends)
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_weighted_backend_gets_more_requests() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        heavy = await start_backend(nursery, make_hello_app("heavy"), router.tunnel, weight=3)
        light = await start_backend(nursery, make_hello_app("light"), router.tunnel, weight=1)
        await router.wait_tunnels(2)
        assert sorted(t.weight for t in router.router.registry.tunnels()) == [1.0, 3.0]
        async with httpx.AsyncClient(base_url=router.url) as client:
            responses = await fetch_many(client, 400, concurrency=10)
        assert all(r.status_code == 200 for r in responses)
        counts = Counter(r.headers["x-backend"] for r in responses)
        assert counts["heavy"] + counts["light"] == 400
        assert counts["heavy"] > 0.55 * 400, counts  # ~3:1 expected (about 72% measured)
        assert counts["light"] > 0.10 * 400, counts  # a lighter weight is not starvation
        await stop_all(heavy, light)
        nursery.cancel_scope.cancel()


# -- 3: routing ----------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_host_and_path_prefix_routing() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        specs: list[tuple[str, dict[str, Any]]] = [
            ("default", {}),
            ("exact", {"service": "exact", "hosts": ["api.example.com"]}),
            ("apiv2", {"service": "apiv2", "hosts": ["api.example.com"], "path_prefix": "/v2"}),
            ("wild", {"service": "wild", "hosts": ["*.example.com"]}),
            ("docs", {"service": "docs", "path_prefix": "/docs"}),
            ("docsapi", {"service": "docsapi", "path_prefix": "/docs/api/"}),
        ]
        backends = [
            await start_backend(nursery, make_hello_app(name), router.tunnel, **kwargs)
            for name, kwargs in specs
        ]
        await router.wait_tunnels(len(specs))
        cases = [
            ("api.example.com", "/x", "exact"),
            ("API.Example.COM:8080", "/", "exact"),  # case and port do not matter
            ("api.example.com", "/v2", "apiv2"),
            ("api.example.com", "/v2/items?q=1", "apiv2"),
            ("api.example.com", "/v20", "exact"),  # prefixes match whole segments only
            ("foo.example.com", "/x", "wild"),
            ("a.b.example.com", "/v2", "wild"),
            ("example.com", "/x", "default"),  # "*.example.com" does not cover the apex
            ("other.test", "/docs", "docs"),
            ("other.test", "/docs/x", "docs"),
            ("other.test", "/docs/api", "docsapi"),  # longest prefix wins
            ("other.test", "/docs/api/v1/x", "docsapi"),
            ("other.test", "/docsx", "default"),
            ("other.test", "/", "default"),
            ("api.example.com", "/docs/api", "exact"),  # a host claim beats host-less ones
            ("nothing.invalid", "/anything", "default"),
        ]
        async with httpx.AsyncClient(base_url=router.url) as client:
            for host, path, expected in cases:
                response = await client.get(path, headers={"host": host})
                assert response.status_code == 200, (host, path, response.text)
                assert response.headers["x-backend"] == expected, (host, path)
        await stop_all(*backends)
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(20)
async def test_unknown_host_without_catch_all_is_404_naming_the_host() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, default_service=None)
        backend = await start_backend(
            nursery, make_hello_app("api"), router.tunnel, service="api", hosts=["api.test"]
        )
        await router.wait_tunnels(1)
        async with httpx.AsyncClient(base_url=router.url) as client:
            response = await client.get("/", headers={"host": "api.test"})
            assert (response.status_code, response.headers["x-backend"]) == (200, "api")
            response = await client.get("/x", headers={"host": "nowhere.test"})
            assert response.status_code == 404
            assert "nowhere.test" in response.text
        await backend.stop()
        nursery.cancel_scope.cancel()


# -- 4: no tunnel, claim grace -------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_service_without_tunnel_is_503_with_retry_after() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        async with httpx.AsyncClient(base_url=router.url) as client:
            response = await client.get("/")
            assert response.status_code == 503
            assert int(response.headers["retry-after"]) >= 1
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(20)
async def test_claim_grace_gives_503_then_falls_through_to_catch_all() -> None:
    grace = 1.0
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, grace=grace)
        fallback = await start_backend(nursery, make_hello_app("catchall"), router.tunnel)
        app = await start_backend(
            nursery, make_hello_app("app"), router.tunnel, service="app", hosts=["app.test"]
        )
        await router.wait_tunnels(2)
        headers = {"host": "app.test"}
        async with httpx.AsyncClient(base_url=router.url) as client:
            response = await client.get("/", headers=headers)
            assert response.headers["x-backend"] == "app"
            stopped_at = trio.current_time()
            await app.stop()
            assert app.error is None
            assert router.tunnel_count("app") == 0
            response = await client.get("/", headers=headers)
            assert response.status_code == 503, response.text
            assert "retry-after" in response.headers
            with trio.fail_after(grace + 2):
                while response.status_code == 503:
                    await trio.sleep(0.05)
                    response = await client.get("/", headers=headers)
            elapsed = trio.current_time() - stopped_at
            assert elapsed >= grace * 0.9, elapsed
            assert (response.status_code, response.headers["x-backend"]) == (200, "catchall")
        await fallback.stop()
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(20)
async def test_claim_grace_then_404_without_catch_all() -> None:
    grace = 0.5
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, grace=grace, default_service=None)
        app = await start_backend(
            nursery, make_hello_app("app"), router.tunnel, service="app", hosts=["app.test"]
        )
        await router.wait_tunnels(1)
        headers = {"host": "app.test"}
        async with httpx.AsyncClient(base_url=router.url) as client:
            assert (await client.get("/", headers=headers)).status_code == 200
            await app.stop()
            response = await client.get("/", headers=headers)
            assert response.status_code == 503
            assert "retry-after" in response.headers
            await trio.sleep(grace + 0.1)
            response = await client.get("/", headers=headers)
            assert response.status_code == 404
            assert "app.test" in response.text
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(20)
async def test_backend_returning_within_grace_takes_its_claim_back() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, grace=10)
        first = await start_backend(
            nursery, make_hello_app("first"), router.tunnel, service="app", hosts=["app.test"]
        )
        await router.wait_tunnels(1)
        await first.stop()
        assert router.tunnel_count() == 0
        second = await start_backend(
            nursery, make_hello_app("second"), router.tunnel, service="app", hosts=["app.test"]
        )
        await router.wait_tunnels(1, service="app")
        async with httpx.AsyncClient(base_url=router.url) as client:
            response = await client.get("/", headers={"host": "app.test"})
            assert (response.status_code, response.headers["x-backend"]) == (200, "second")
        await second.stop()
        nursery.cancel_scope.cancel()


# -- 5: conflicting claims -----------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_conflicting_host_claim_is_refused_with_409(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Issue 10: a 409 is retried with backoff (the holder's claim may expire), not fatal.
    caplog.set_level(logging.INFO, logger="ptth.backend")

    def refusals() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "ptth.backend" and "refused the tunnel: 409" in r.getMessage()
        ]

    async def wait_refusals(count: int) -> None:
        with trio.fail_after(5):
            while len(refusals()) < count:
                await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, grace=2)
        owner = await start_backend(
            nursery, make_hello_app("a"), router.tunnel, service="a", hosts=["shared.test"]
        )
        await router.wait_tunnels(1)
        # Another instance of the same service joins the pool.
        peer = await start_backend(
            nursery, make_hello_app("a2"), router.tunnel, service="a", hosts=["shared.test"]
        )
        await router.wait_tunnels(2, service="a")

        # Host names are case-insensitive: a differently cased claim is the same claim.
        intruder = await start_backend(
            nursery,
            make_hello_app("b"),
            router.tunnel,
            options=BackendOptions(service="b", hosts=("SHARED.test",), backoff_cap=0.3),
        )
        await wait_refusals(2)
        line = refusals()[0]
        assert "; retrying in " in line and line.endswith("(the holder's claim may expire)")
        assert "\n" not in line
        assert not intruder.done.is_set()  # still trying
        assert router.tunnel_count("b") == 0

        # While the claim is in its grace period, it still belongs to "a".
        await stop_all(owner, peer)
        assert router.tunnel_count() == 0
        seen = len(refusals())
        await wait_refusals(seen + 1)
        assert router.tunnel_count("b") == 0
        # Once it has expired, the retrying backend gets the host.
        await router.wait_tunnels(1, service="b", timeout=5)
        assert not intruder.done.is_set()

        # A different host is fine for "b".
        other = await start_backend(
            nursery, make_hello_app("b"), router.tunnel, service="b", hosts=["other.test"]
        )
        await router.wait_tunnels(2, service="b")
        await stop_all(other, intruder)
        nursery.cancel_scope.cancel()


# -- 6: token ------------------------------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize("token", [None, "wrong", "s3cret-but-longer", "S3CRET"])
async def test_bad_or_missing_token_is_refused_with_401(token: str | None) -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, token="s3cret")
        started = trio.current_time()
        kwargs: dict[str, Any] = {} if token is None else {"token": token}
        backend = await start_backend(nursery, make_hello_app("b"), router.tunnel, **kwargs)
        error = await wait_done(backend, timeout=3)
        assert isinstance(error, HandshakeRefused), error
        assert error.status == 401
        assert trio.current_time() - started < 2  # refused for good, not retried with backoff
        assert router.tunnel_count() == 0
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("token", ["", "with space", "new\nline", "é"])
async def test_unsendable_token_is_a_config_error(token: str) -> None:
    # Such a token cannot go into an Authorization header: fail at once, never loop retrying.
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, token="s3cret")
        backend = await start_backend(nursery, make_hello_app("b"), router.tunnel, token=token)
        error = await wait_done(backend, timeout=2)
        assert isinstance(error, ConfigError), error
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(20)
async def test_correct_token_is_accepted() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, token="s3cret")
        backend = await start_backend(nursery, make_hello_app("b"), router.tunnel, token="s3cret")
        await router.wait_tunnels(1)
        async with httpx.AsyncClient(base_url=router.url) as client:
            response = await client.get("/")
            assert (response.status_code, response.text) == (200, "bar")
        await stop_all(backend)
        nursery.cancel_scope.cancel()


# -- 7, 8: timeouts and queueing -----------------------------------------------------------


def make_slow_app(delay: float, disconnected: ThreadSafeEvent | None = None) -> ASGIApp:
    """ "/slow" answers after ``delay`` s (or returns early when the router resets the stream);
    anything else answers at once."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        await read_body(receive)
        if scope["path"] == "/slow":
            with anyio.move_on_after(delay):
                while (await receive())["type"] != "http.disconnect":
                    pass
                if disconnected is not None:
                    disconnected.set()
                return
        await send_text(send, 200, "done")

    return app


@pytest.mark.timeout(20)
async def test_slow_backend_gives_504_after_response_timeout(helper_loop: str) -> None:
    disconnected = ThreadSafeEvent()
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, response_timeout=0.5)
        app = make_slow_app(5.0, disconnected)
        backend = await start_backend(nursery, app, router.tunnel, loop=helper_loop)
        await router.wait_tunnels(1)
        async with httpx.AsyncClient(base_url=router.url) as client:
            started = trio.current_time()
            response = await client.get("/slow")
            elapsed = trio.current_time() - started
            assert response.status_code == 504
            assert 0.4 <= elapsed < 1.5, elapsed
            # The router gave up on the stream: the app hears about it.
            with trio.fail_after(2):
                await disconnected.wait()
            response = await client.get("/fast")
            assert (response.status_code, response.text) == (200, "done")
        await stop_all(backend)
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(20)
async def test_full_tunnel_past_queue_timeout_gives_503() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, queue_timeout=0.5)
        backend = await start_backend(
            nursery, make_slow_app(1.5), router.tunnel, max_concurrent_streams=1, max_connections=1
        )
        await router.wait_tunnels(1)
        assert router.router.registry.tunnels()[0].max_streams == 1
        results: dict[str, tuple[int, float]] = {}
        async with httpx.AsyncClient(base_url=router.url) as client:

            async def call(name: str, path: str) -> None:
                started = trio.current_time()
                response = await client.get(path)
                results[name] = (response.status_code, trio.current_time() - started)
                if name == "second":
                    assert "retry-after" in response.headers

            async with trio.open_nursery() as requests:
                requests.start_soon(call, "first", "/slow")
                await wait_in_flight(router, 1)
                # The first request holds the only stream slot for 1.5 s; the second gives up
                # after the 0.5 s queue timeout, long before the slot frees.
                requests.start_soon(call, "second", "/slow")
        assert results["first"][0] == 200
        assert results["second"][0] == 503
        assert 0.4 <= results["second"][1] < 1.2, results
        await stop_all(backend)
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(20)
async def test_full_tunnel_queues_until_a_slot_frees() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, queue_timeout=3.0)
        backend = await start_backend(
            nursery, make_slow_app(0.3), router.tunnel, max_concurrent_streams=1, max_connections=1
        )
        await router.wait_tunnels(1)
        results: dict[str, tuple[int, float]] = {}
        async with httpx.AsyncClient(base_url=router.url) as client:

            async def call(name: str) -> None:
                started = trio.current_time()
                response = await client.get("/slow")
                results[name] = (response.status_code, trio.current_time() - started)

            async with trio.open_nursery() as requests:
                requests.start_soon(call, "first")
                await wait_in_flight(router, 1)
                requests.start_soon(call, "second")
        assert results["first"][0] == 200
        assert results["second"][0] == 200
        # The second waited for the first's slot, then took its own 0.3 s.
        assert results["second"][1] >= 0.4, results
        await stop_all(backend)
        nursery.cancel_scope.cancel()


# -- 9: app errors -------------------------------------------------------------------------


def make_failing_app() -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        await read_body(receive)
        if scope["path"] == "/early":
            raise RuntimeError("boom before the response")
        if scope["path"] in ("/late", "/late-now"):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})
            if scope["path"] == "/late":
                await anyio.sleep(0.1)  # let the first bytes reach the user
            raise RuntimeError("boom mid-body")
        await send_text(send, 200, "ok")

    return app


@pytest.mark.timeout(20)
@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
async def test_app_errors_map_to_500_or_an_aborted_response(http2: bool, helper_loop: str) -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        backend = await start_backend(nursery, make_failing_app(), router.tunnel, loop=helper_loop)
        await router.wait_tunnels(1)
        async with httpx.AsyncClient(
            base_url=router.url, http1=not http2, http2=http2, timeout=5
        ) as client:
            response = await client.get("/early")
            assert response.status_code == 500
            assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
            assert (await client.get("/")).text == "ok"

            for path in ("/late", "/late-now"):
                with pytest.raises(httpx.RemoteProtocolError):  # incomplete chunked body / RST
                    await client.get(path)
                response = await client.get("/")
                assert (response.status_code, response.text) == (200, "ok")
        await stop_all(backend)
        nursery.cancel_scope.cancel()


# -- 10: lifespan --------------------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_lifespan_startup_failure_raises_and_registers_nothing(helper_loop: str) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "lifespan"
        message = await receive()
        assert message["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        backend = await start_backend(nursery, app, router.tunnel, loop=helper_loop)
        error = await wait_done(backend)
        assert isinstance(error, LifespanError), error
        assert "no database" in str(error)
        await trio.sleep(0.1)
        assert router.tunnel_count() == 0
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(20)
async def test_cancel_during_a_hung_startup_returns_promptly(helper_loop: str) -> None:
    started = ThreadSafeEvent()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        started.set()
        await anyio.sleep_forever()  # never answers lifespan.startup

    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        backend = await start_backend(nursery, app, router.tunnel, loop=helper_loop)
        with trio.fail_after(2):
            await started.wait()
        with trio.fail_after(2):
            await backend.stop()
        assert backend.error is None
        assert router.tunnel_count() == 0
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(20)
async def test_app_without_lifespan_support_is_served(helper_loop: str) -> None:
    hello = make_hello_app("nolifespan")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            raise ValueError("lifespan not supported")
        await hello(scope, receive, send)

    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        backend = await start_backend(nursery, app, router.tunnel, loop=helper_loop)
        await router.wait_tunnels(1)
        async with httpx.AsyncClient(base_url=router.url) as client:
            response = await client.get("/")
            assert (response.status_code, response.headers["x-backend"]) == (200, "nolifespan")
        await stop_all(backend)
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(20)
async def test_lifespan_startup_and_shutdown_run_in_order(helper_loop: str) -> None:
    events: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send, events)
            return
        await read_body(receive)
        events.append("request")
        await send_text(send, 200, "ok")

    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        backend = await start_backend(nursery, app, router.tunnel, loop=helper_loop)
        await router.wait_tunnels(1)
        assert events == ["startup"]
        async with httpx.AsyncClient(base_url=router.url) as client:
            assert (await client.get("/")).status_code == 200
        await stop_all(backend)
        assert events == ["startup", "request", "shutdown"]
        nursery.cancel_scope.cancel()


# -- 11, 12: the scope the app sees --------------------------------------------------------


def make_scope_app() -> ASGIApp:
    """Answers with its ASGI scope (bytes decoded as latin-1) as JSON."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        body = await read_body(receive)
        payload = {
            "type": scope["type"],
            "method": scope["method"],
            "path": scope["path"],
            "raw_path": scope["raw_path"].decode("latin-1"),
            "query_string": scope["query_string"].decode("latin-1"),
            "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]],
            "http_version": scope["http_version"],
            "scheme": scope["scheme"],
            "client": scope["client"],
            "server": scope["server"],
            "root_path": scope["root_path"],
            "body": body.decode("latin-1"),
        }
        data = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": data})

    return app


def header_values(seen: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in seen["headers"] if key == name]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
async def test_scope_seen_by_the_app(http2: bool, helper_loop: str) -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        backend = await start_backend(nursery, make_scope_app(), router.tunnel, loop=helper_loop)
        await router.wait_tunnels(1)
        authority = router.url.removeprefix("http://")
        async with httpx.AsyncClient(base_url=router.url, http1=not http2, http2=http2) as client:
            response = await client.get(
                "/a%20b/caf%C3%A9/x%2Fy?x=1&y=%20z", headers={"x-test": "yes"}
            )
            assert response.status_code == 200
            seen = response.json()
            assert seen["type"] == "http"
            assert seen["method"] == "GET"
            assert seen["path"] == "/a b/café/x/y"
            assert seen["raw_path"] == "/a%20b/caf%C3%A9/x%2Fy"
            assert seen["query_string"] == "x=1&y=%20z"
            assert header_values(seen, "host") == [authority]
            assert header_values(seen, "x-test") == ["yes"]
            assert header_values(seen, "x-forwarded-proto") == ["http"]
            assert header_values(seen, "x-forwarded-host") == [authority]
            # The user's hop, from the router's Forwarded element: version, client port, server.
            assert seen["http_version"] == ("2" if http2 else "1.1")
            assert seen["scheme"] == "http"
            assert seen["client"][0] == "127.0.0.1" and seen["client"][1] > 0
            assert seen["server"] == list(router.addresses.http)
            assert seen["root_path"] == ""

            response = await client.put("/put", content=b"payload")
            seen = response.json()
            assert (seen["method"], seen["path"], seen["query_string"]) == ("PUT", "/put", "")
            assert seen["body"] == "payload"

            response = await client.get("/h", headers={"host": "Named.Example:81"})
            assert header_values(response.json(), "host") == ["Named.Example:81"]
        await stop_all(backend)
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(20)
async def test_root_path_from_backend_options(helper_loop: str) -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        options = BackendOptions(root_path="/mount")
        backend = await start_backend(
            nursery, make_scope_app(), router.tunnel, loop=helper_loop, options=options
        )
        await router.wait_tunnels(1)
        async with httpx.AsyncClient(base_url=router.url) as client:
            # As uvicorn's --root-path: a proxy in front removed /mount, and the scope's path is
            # the full path again (Starlette and Django cut root_path off it to route).
            seen = (await client.get("/x%20y")).json()
            assert seen["root_path"] == "/mount"
            assert (seen["path"], seen["raw_path"]) == ("/mount/x y", "/mount/x%20y")
        await stop_all(backend)
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(20)
async def test_spoofed_forwarding_headers_are_replaced() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        backend = await start_backend(nursery, make_scope_app(), router.tunnel)
        await router.wait_tunnels(1)
        authority = router.url.removeprefix("http://")
        spoof = {
            "x-forwarded-for": "1.2.3.4",
            "x-forwarded-proto": "https",
            "x-forwarded-host": "evil.test",
            "forwarded": "for=1.2.3.4;proto=https",
        }
        async with httpx.AsyncClient(base_url=router.url) as client:
            seen = (await client.get("/", headers=spoof)).json()
        assert seen["client"][0] == "127.0.0.1"
        assert header_values(seen, "x-forwarded-for") == ["127.0.0.1"]
        assert header_values(seen, "x-forwarded-proto") == ["http"]
        assert header_values(seen, "x-forwarded-host") == [authority]
        assert header_values(seen, "forwarded") == []
        assert seen["scheme"] == "http"
        await stop_all(backend)
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(20)
async def test_forwarding_headers_from_a_trusted_proxy_are_kept() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, trusted_proxies=("127.0.0.1",))
        backend = await start_backend(nursery, make_scope_app(), router.tunnel)
        await router.wait_tunnels(1)
        headers = {"x-forwarded-for": "1.2.3.4", "x-forwarded-proto": "https"}
        async with httpx.AsyncClient(base_url=router.url) as client:
            seen = (await client.get("/", headers=headers)).json()
        assert seen["client"][0] == "1.2.3.4"
        assert header_values(seen, "x-forwarded-for") == ["1.2.3.4, 127.0.0.1"]
        assert seen["scheme"] == "https"
        await stop_all(backend)
        nursery.cancel_scope.cancel()

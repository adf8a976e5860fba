"""Apps living under a path prefix: ``--strip-prefix`` (Ptth-Strip-Prefix) and ``--root-path``.

A real router, real frameworks (Starlette, Django) served by ``ptth.serve`` in process, and a real
HTTP client. A backend that claims ``/chat`` with ``strip_prefix`` gets ``/chat/count?q=1`` as
``/count?q=1`` plus ``X-Forwarded-Prefix: /chat``; the helper turns that into an ASGI scope with
mount semantics, as uvicorn does for ``--root-path``: ``root_path`` ``/chat`` and ``path``
``/chat/count`` (the full path). Starlette and Django cut ``root_path`` off ``path`` to route
(``get_route_path``, ``path_info``), so the app routes ``/count`` and builds user-facing URLs
(``url_for``, ``reverse``) under ``/chat``.

Django's ASGI handler is asyncio-only, so the Django app is served by a ``python -m ptth
--loop asyncio`` child process; Starlette is served in process (on trio, through anyio).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

import ptth
from ptth import BackendOptions
from tests.e2e.agent_support import REGISTERED, hypercorn_upstream, start_agent
from tests.support import RunningRouter, child, require_module, start_backend, start_router

require_module("starlette", reason="Starlette is not installed")
require_module("django", reason="Django is not installed")
require_module("websockets", reason="the websockets client is not installed")
from websockets.sync.client import connect as ws_connect  # noqa: E402 (after the availability check)

from tests.e2e.apps_prefix import starlette_app  # noqa: E402 (after the availability check)

FRAMEWORKS = ["starlette", "django"]
DJANGO = "tests.e2e.apps_prefix:django_app"
SPOOF = {"x-forwarded-prefix": "/evil"}  # a user's own X-Forwarded-Prefix must never count


@asynccontextmanager
async def serving(
    framework: str,
    router_overrides: dict[str, Any] | None = None,
    *,
    path_prefix: str | None = None,
    strip_prefix: bool = False,
    root_path: str = "",
) -> AsyncIterator[RunningRouter]:
    """A router and one backend serving ``framework``'s app: Starlette in process, Django as a
    ``python -m ptth --loop asyncio`` child with the same settings as flags."""
    async with trio.open_nursery() as nursery:
        overrides = {"default_service": None, **(router_overrides or {})}
        router = await start_router(nursery, **overrides)
        if framework == "starlette":
            options = BackendOptions(
                path_prefix=path_prefix, strip_prefix=strip_prefix, root_path=root_path
            )
            handle = await start_backend(nursery, starlette_app, router.tunnel, options=options)
            await router.wait_tunnels(1)
            try:
                yield router
            finally:
                await handle.stop()
                assert handle.error is None
        else:
            args = ["-m", "ptth", DJANGO, "--router", router.tunnel, "--loop", "asyncio"]
            args += ["--path-prefix", path_prefix] if path_prefix else []
            args += ["--strip-prefix"] if strip_prefix else []
            args += ["--root-path", root_path] if root_path else []
            async with child(nursery, *args) as proc:
                await proc.wait_for(REGISTERED)
                yield router
                assert proc.process.poll() is None, proc.text()
                assert "Traceback" not in proc.text(), proc.text()
        nursery.cancel_scope.cancel()


async def get(router: RunningRouter, path: str, http2: bool = False, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=router.url, http1=not http2, http2=http2) as client:
        return await client.get(path, **kw)


def route_path(seen: dict[str, Any]) -> str:
    """What the framework routed on: Starlette's get_route_path, Django's path_info."""
    return str(seen.get("route_path", seen.get("path_info")))


def prefix_header(seen: dict[str, Any]) -> list[str]:
    value = seen["forwarded_prefix"]
    return value if isinstance(value, list) else [] if value is None else [value]


# -- --strip-prefix --------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
async def test_app_under_a_stripped_prefix_routes_and_builds_user_urls(
    framework: str, http2: bool
) -> None:
    async with serving(framework, path_prefix="/chat", strip_prefix=True) as router:
        response = await get(router, "/chat/count?q=1", http2, headers=SPOOF)
        assert response.status_code == 200, response.text
        seen = response.json()
        assert seen["view"] == "count"
        assert route_path(seen) == "/count"
        assert seen["path"] == "/chat/count"  # ASGI path is the full path, as uvicorn's
        assert seen.get("root_path", seen.get("script_name")) == "/chat"
        assert seen["query"] == "q=1"
        assert seen["count_url"] == f"{router.url}/chat/count"
        assert seen["home_url"] == f"{router.url}/chat/"
        assert prefix_header(seen) == ["/chat"]  # the router's, not the user's "/evil"
        if framework == "starlette":
            assert seen["raw_path"] == "/chat/count"
            assert seen["url"] == f"{router.url}/chat/count?q=1"

        for path in ("/chat", "/chat/", "/chat?x=1"):  # the prefix alone is the app's "/"
            seen = (await get(router, path, http2)).json()
            assert (seen["view"], route_path(seen), seen["path"]) == ("home", "/", "/chat/")

        assert (await get(router, "/chatroom")).status_code == 404  # not under the prefix
        assert (await get(router, "/count")).status_code == 404


@pytest.mark.timeout(30)
async def test_a_tunnel_without_strip_prefix_still_gets_the_full_path() -> None:
    async with serving("starlette", path_prefix="/count") as router:
        seen = (await get(router, "/count", headers=SPOOF)).json()
        assert (seen["path"], seen["root_path"], route_path(seen)) == ("/count", "", "/count")
        assert prefix_header(seen) == []  # no strip, no prefix: the user's value is dropped
        assert seen["count_url"] == f"{router.url}/count"


@pytest.mark.timeout(30)
async def test_websocket_under_a_stripped_prefix() -> None:
    async with serving("starlette", path_prefix="/chat", strip_prefix=True) as router:
        url = router.url.replace("http://", "ws://", 1) + "/chat/ws?x=1"

        def talk() -> dict[str, Any]:
            with ws_connect(
                url, proxy=None, open_timeout=10, close_timeout=5, additional_headers=SPOOF
            ) as ws:
                return dict(json.loads(ws.recv(timeout=10)))

        seen = await trio.to_thread.run_sync(talk)
        assert (seen["view"], seen["route_path"]) == ("ws", "/ws")
        assert (seen["path"], seen["root_path"], seen["query"]) == ("/chat/ws", "/chat", "x=1")
        assert seen["forwarded_prefix"] == ["/chat"]
        assert seen["count_url"] == f"{router.url}/chat/count"


# -- --root-path -----------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_root_path_alone_mounts_the_app_as_uvicorn_does(framework: str) -> None:
    # A proxy in front of the router removed /outer: the router sees /count, the user /outer/count.
    async with serving(framework, {"default_service": "default"}, root_path="/outer") as router:
        seen = (await get(router, "/count?q=1", headers=SPOOF)).json()
        assert (seen["view"], route_path(seen), seen["path"]) == ("count", "/count", "/outer/count")
        assert seen.get("root_path", seen.get("script_name")) == "/outer"
        assert seen["count_url"] == f"{router.url}/outer/count"
        assert prefix_header(seen) == []


@pytest.mark.timeout(30)
@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_root_path_comes_before_the_stripped_prefix(framework: str) -> None:
    prefix = {"path_prefix": "/chat", "strip_prefix": True}
    async with serving(framework, root_path="/outer/", **prefix) as router:
        seen = (await get(router, "/chat/count")).json()
        assert (route_path(seen), seen["path"]) == ("/count", "/outer/chat/count")
        assert seen["count_url"] == f"{router.url}/outer/chat/count"
        assert prefix_header(seen) == ["/chat"]


@pytest.mark.timeout(30)
async def test_a_trusted_proxys_prefix_is_kept_and_extended() -> None:
    trusted = {"trusted_proxies": ("127.0.0.1",)}
    async with serving("starlette", trusted, path_prefix="/chat", strip_prefix=True) as router:
        seen = (await get(router, "/chat/count", headers={"x-forwarded-prefix": "/outer"})).json()
        assert (seen["root_path"], seen["path"]) == ("/outer/chat", "/outer/chat/count")
        assert prefix_header(seen) == ["/outer/chat"]
        assert seen["count_url"] == f"{router.url}/outer/chat/count"


# -- agent mode --------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheme", ["http", "h2c"])
async def test_agent_mode_forwards_the_stripped_path_and_the_prefix(scheme: str) -> None:
    app = "tests.e2e.apps_agent:app"
    async with trio.open_nursery() as nursery, hypercorn_upstream(nursery, app) as upstream:
        router = await start_router(nursery, default_service=None)
        agent = await start_agent(
            nursery, f"{scheme}://{upstream}", router.tunnel, path_prefix="/chat", strip_prefix=True
        )
        await router.wait_tunnels(1)
        response = await get(router, "/chat/hello?q=1", headers=SPOOF)
        assert response.status_code == 200, response.text
        seen = response.json()
        assert (seen["path"], seen["raw_path"], seen["query"]) == ("/hello", "/hello", "q=1")
        assert [v for n, v in seen["headers"] if n == "x-forwarded-prefix"] == ["/chat"]
        await agent.stop()
        assert agent.error is None
        nursery.cancel_scope.cancel()


# -- refusals and the CLI ----------------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_strip_prefix_without_a_prefix_is_a_config_error_and_a_400() -> None:
    with pytest.raises(ptth.ConfigError, match="Ptth-Strip-Prefix needs a Ptth-Path-Prefix"):
        await ptth.serve(starlette_app, "127.0.0.1:1", strip_prefix=True)
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        host, port = router.tunnel.rsplit(":", 1)
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream(host, int(port))
            async with stream:
                await stream.send_all(
                    b"POST /.well-known/ptth HTTP/1.1\r\nHost: r\r\nConnection: Upgrade\r\n"
                    b"Upgrade: reverse\r\nALPN: h2\r\nContent-Length: 0\r\n"
                    b"Ptth-Strip-Prefix: 1\r\n\r\n"
                )
                answer = b""
                while chunk := await stream.receive_some(65536):
                    answer += chunk
        assert answer.startswith(b"HTTP/1.1 400 "), answer
        assert b"Ptth-Strip-Prefix needs a Ptth-Path-Prefix" in answer
        assert router.tunnel_count() == 0
        nursery.cancel_scope.cancel()


APP = "tests.e2e.apps_prefix:starlette_app"


@pytest.mark.timeout(60)
async def test_cli_flags_strip_prefix_and_root_path() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, default_service=None)
        args = ["-m", "ptth", APP, "--router", router.tunnel, "--path-prefix", "/chat"]
        async with child(nursery, *args, "--strip-prefix", "--root-path", "/outer") as proc:
            await proc.wait_for(REGISTERED)
            seen = (await get(router, "/chat/count")).json()
            assert (seen["route_path"], seen["root_path"]) == ("/count", "/outer/chat")
            assert seen["count_url"] == f"{router.url}/outer/chat/count"
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((APP, "--strip-prefix"), "Ptth-Strip-Prefix needs a Ptth-Path-Prefix"),
        (("--to", "http://127.0.0.1:1", "--root-path", "/x"), "--root-path is for an app"),
    ],
)
async def test_cli_refuses_meaningless_prefix_flags(args: tuple[str, ...], message: str) -> None:
    async with trio.open_nursery() as nursery:
        async with child(nursery, "-m", "ptth", *args, "--router", "127.0.0.1:1") as proc:
            with trio.fail_after(30):
                code = await proc.process.wait()
            await proc.wait_for(re.compile(re.escape(message).encode()))
        assert code == 2, proc.text()
        nursery.cancel_scope.cancel()

"""The helper behind a real forward proxy (issue 9, item 5): tinyproxy, started by each test
from a generated config, between the backend and the router's tunnel port.

Checked: the tunnel opens through ``CONNECT`` (tinyproxy logs it) with Basic auth from the
proxy URL; a wrong password is one readable log line per attempt, retried, never showing the
password; the environment's ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` are honoured; a port the
proxy forbids is named; ``python -m ptth --proxy URL`` works and keeps the password out of its log.
"""

from __future__ import annotations

import base64
import functools
import logging
import re
from pathlib import Path

import httpx
import pytest
import trio

import ptth._backend
from ptth import BackendOptions
from tests.e2e.agent_support import hypercorn_upstream, start_agent
from tests.e2e.test_tunnel_tls import make_certs
from tests.e2e.tools_support import connects_logged, tinyproxy
from tests.support import child, free_port, make_hello_app, start_backend, start_router

PASSWORD = "s3cret-pa55"


def _options(proxy: str | None, **kwargs: object) -> BackendOptions:
    return BackendOptions(
        service="default", proxy=proxy, backoff_base=0.05, backoff_cap=0.3, **kwargs
    )  # type: ignore[arg-type]


async def _get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.get(url + "/hello")


def _proxy_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "proxy" in r.getMessage()]


async def test_backend_registers_through_tinyproxy_with_basic_auth(
    tmp_path: Path, helper_loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ptth")
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        port = router.addresses.tunnel[1]
        async with tinyproxy(nursery, tmp_path, [port], basic_auth=("user", PASSWORD)) as (
            url,
            proc,
        ):
            proxy = url.replace("http://", f"http://user:{PASSWORD}@")
            backend = await start_backend(
                nursery,
                make_hello_app("b"),
                router.tunnel,
                loop=helper_loop,
                options=_options(proxy),
            )
            await router.wait_tunnels(1)
            response = await _get(router.url)
            assert response.status_code == 200 and response.text == "bar"
            assert connects_logged(proc, port) == 1, proc.text()
            await backend.stop()
            assert backend.error is None
        nursery.cancel_scope.cancel()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "through proxy http://***@127.0.0.1:" in text
    assert PASSWORD not in text


async def test_wrong_password_is_one_line_per_attempt_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ptth")
    wrong = "not-the-password"
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        port = router.addresses.tunnel[1]
        async with tinyproxy(nursery, tmp_path, [port], basic_auth=("user", PASSWORD)) as (
            url,
            _proc,
        ):
            proxy = url.replace("http://", f"http://user:{wrong}@")
            backend = await start_backend(
                nursery, make_hello_app("b"), router.tunnel, options=_options(proxy)
            )
            with trio.fail_after(10):
                while (
                    len([r for r in caplog.records if "authentication required" in r.getMessage()])
                    < 3
                ):
                    await trio.sleep(0.05)
            assert router.tunnel_count() == 0
            assert not backend.done.is_set()  # still retrying: a 407 is not fatal
            await backend.stop()
        nursery.cancel_scope.cancel()
    failures = [r for r in caplog.records if "authentication required" in r.getMessage()]
    for record in failures:
        message = record.getMessage()
        assert record.levelno == logging.WARNING
        assert "\n" not in message
        assert "proxy authentication required" in message
        assert "retrying in" in message
        assert f"router 127.0.0.1:{port}" in message
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert wrong not in everything and PASSWORD not in everything
    assert base64.b64encode(f"user:{wrong}".encode()).decode() not in everything


async def test_environment_proxy_used_and_no_proxy_bypasses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("http_proxy", "https_proxy", "no_proxy", "NO_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        port = router.addresses.tunnel[1]
        async with tinyproxy(nursery, tmp_path, [port]) as (url, proc):
            # HTTP_PROXY (upper case) for a plain router: through the proxy.
            monkeypatch.setenv("HTTP_PROXY", url)
            first = await start_backend(
                nursery, make_hello_app("a"), router.tunnel, options=_options(None)
            )
            await router.wait_tunnels(1)
            assert connects_logged(proc, port) == 1
            await first.stop()

            # NO_PROXY lists the router's address: dialled directly, the proxy never sees it.
            monkeypatch.setenv("NO_PROXY", "example.com, 127.0.0.0/8")
            second = await start_backend(
                nursery, make_hello_app("b"), router.tunnel, options=_options(None)
            )
            await router.wait_tunnels(1)
            assert connects_logged(proc, port) == 1
            await second.stop()

            # HTTPS_PROXY is for tls:// routers only; a dead one does not stop a tcp:// router.
            monkeypatch.delenv("NO_PROXY")
            monkeypatch.delenv("HTTP_PROXY")
            monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{free_port()}")
            third = await start_backend(
                nursery, make_hello_app("c"), router.tunnel, options=_options(None)
            )
            await router.wait_tunnels(1)
            assert (await _get(router.url)).status_code == 200
            await third.stop()

            # proxy="" (--proxy none) wins over the environment.
            monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
            fourth = await start_backend(
                nursery, make_hello_app("d"), router.tunnel, options=_options("")
            )
            await router.wait_tunnels(1)
            await fourth.stop()
            assert connects_logged(proc, port) == 1
        nursery.cancel_scope.cancel()


async def test_forbidden_port_and_dead_proxy_are_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ptth")
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        # The proxy allows CONNECT to another port only: tinyproxy answers 403.
        async with tinyproxy(nursery, tmp_path, [free_port()]) as (url, _proc):
            backend = await start_backend(
                nursery, make_hello_app("b"), router.tunnel, options=_options(url)
            )
            with trio.fail_after(10):
                while not any("403" in line for line in _proxy_lines(caplog)):
                    await trio.sleep(0.05)
            await backend.stop()
        dead = f"http://127.0.0.1:{free_port()}"
        backend = await start_backend(
            nursery, make_hello_app("b"), router.tunnel, options=_options(dead)
        )
        with trio.fail_after(10):
            while not any("cannot connect to proxy" in line for line in _proxy_lines(caplog)):
                await trio.sleep(0.05)
        await backend.stop()
        nursery.cancel_scope.cancel()
    lines = _proxy_lines(caplog)
    forbidden = next(line for line in lines if "403" in line)
    assert "forbids this destination" in forbidden
    assert any(f"cannot connect to proxy {dead}" in line for line in lines)


async def test_cli_proxy_flag(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        port = router.addresses.tunnel[1]
        async with tinyproxy(nursery, tmp_path, [port], basic_auth=("user", PASSWORD)) as (
            url,
            proc,
        ):
            proxy = url.replace("http://", f"http://user:{PASSWORD}@")
            async with child(
                nursery,
                "-m",
                "ptth",
                "tests.e2e.apps_drain:app",
                "--router",
                router.tunnel,
                "--proxy",
                proxy,
                "--loop",
                "asyncio",
            ) as helper:
                await helper.wait_for(re.compile(rb"registered with"))
                await router.wait_tunnels(1)
                assert connects_logged(proc, port) == 1
                assert b"through proxy http://***@127.0.0.1:" in helper.output
                assert PASSWORD.encode() not in helper.output
        nursery.cancel_scope.cancel()


async def test_tls_router_through_https_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tls:// takes HTTPS_PROXY; the TLS session runs inside the CONNECT tunnel, the router's
    certificate checked against its name as if dialled directly."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    certs = make_certs(tmp_path, "tunnel")
    async with trio.open_nursery() as nursery:
        router = await start_router(
            nursery, tunnel_tls_cert=str(certs.cert), tunnel_tls_key=str(certs.key)
        )
        port = router.addresses.tunnel[1]
        async with tinyproxy(nursery, tmp_path, [port]) as (url, proc):
            monkeypatch.setenv("HTTPS_PROXY", url)
            backend = await start_backend(
                nursery,
                make_hello_app("tls"),
                f"tls://localhost:{port}",
                options=_options(None, ca_file=str(certs.ca_pem)),
            )
            await router.wait_tunnels(1)
            assert (await _get(router.url)).headers["x-backend"] == "tls"
            # The proxy saw the name (it resolves it), not an address the helper looked up.
            assert b"CONNECT localhost:%d " % port in proc.output, proc.text()
            await backend.stop()
        nursery.cancel_scope.cancel()


async def test_ws_router_through_proxy(tmp_path: Path) -> None:
    """ws:// (the front end's WebSocket tunnels) over the proxy's CONNECT as well."""
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        front = router.addresses.http[1]
        async with tinyproxy(nursery, tmp_path, [front]) as (url, proc):
            backend = await start_backend(
                nursery,
                make_hello_app("ws"),
                f"ws://127.0.0.1:{front}",
                options=_options(url),
            )
            await router.wait_tunnels(1)
            assert (await _get(router.url)).headers["x-backend"] == "ws"
            assert connects_logged(proc, front) == 1
            await backend.stop()
        nursery.cancel_scope.cancel()


async def test_httpsock_router_through_proxy(tmp_path: Path) -> None:
    """http:// (httpsock: plain HTTP requests) goes through the proxy as ordinary proxied
    requests, not CONNECT: what a proxy that allows nothing else still passes."""
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        front = router.addresses.http[1]
        async with tinyproxy(nursery, tmp_path, []) as (url, proc):
            backend = await start_backend(
                nursery,
                make_hello_app("hs"),
                f"http://127.0.0.1:{front}",
                options=_options(url),
            )
            await router.wait_tunnels(1)
            assert (await _get(router.url)).headers["x-backend"] == "hs"
            assert re.search(rb"POST http://127\.0\.0\.1:%d/" % front, proc.output), proc.text()
            assert connects_logged(proc, front) == 0
            await backend.stop()
        nursery.cancel_scope.cancel()


async def test_silent_proxy_is_a_named_timeout(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A proxy that accepts and never answers CONNECT: one line naming the proxy and the
    deadline (shortened here), then a retry."""
    caplog.set_level(logging.INFO, logger="ptth")
    monkeypatch.setattr(ptth._backend, "HANDSHAKE_TIMEOUT", 0.3)
    accepted: list[trio.SocketStream] = []

    async def silent(stream: trio.SocketStream) -> None:
        accepted.append(stream)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, silent, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        router = await start_router(nursery)
        backend = await start_backend(
            nursery,
            make_hello_app("b"),
            router.tunnel,
            options=_options(f"http://user:{PASSWORD}@127.0.0.1:{port}"),
        )
        with trio.fail_after(10):
            while len([m for m in _proxy_lines(caplog) if "within 0.3 s" in m]) < 2:
                await trio.sleep(0.05)
        await backend.stop()
        for stream in accepted:
            await stream.aclose()
        nursery.cancel_scope.cancel()
    line = next(m for m in _proxy_lines(caplog) if "within 0.3 s" in m)
    assert f"no tunnel through proxy http://***@127.0.0.1:{port} within 0.3 s" in line
    assert "retrying in" in line and PASSWORD not in line


async def test_agent_mode_through_proxy(tmp_path: Path) -> None:
    """``serve_upstream(..., proxy=)``: agent mode dials through the proxy too."""
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        port = router.addresses.tunnel[1]
        async with (
            tinyproxy(nursery, tmp_path, [port]) as (url, proc),
            hypercorn_upstream(nursery, "tests.e2e.apps_agent:app") as upstream,
        ):
            agent = await start_agent(nursery, f"http://{upstream}", router.tunnel, proxy=url)
            await router.wait_tunnels(1)
            assert connects_logged(proc, port) == 1
            async with httpx.AsyncClient(timeout=5) as client:
                assert (await client.get(router.url + "/status/299")).status_code == 299
            await agent.stop()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "scheme",
    ["http", "ws"],
)
async def test_wrong_password_never_logged_on_other_transports(
    tmp_path: Path, scheme: str, caplog: pytest.LogCaptureFixture
) -> None:
    """httpsock (httpx's own proxy support) and ws:// (CONNECT): a refused password is logged
    without the password or its Basic encoding, and retried."""
    caplog.set_level(logging.DEBUG)
    wrong = "wr0ng-pa55"
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        front = router.addresses.http[1]
        async with tinyproxy(nursery, tmp_path, [front], basic_auth=("user", PASSWORD)) as (
            url,
            _proc,
        ):
            proxy = url.replace("http://", f"http://user:{wrong}@")
            backend = await start_backend(
                nursery,
                make_hello_app("b"),
                f"{scheme}://127.0.0.1:{front}",
                options=_options(proxy),
            )
            with trio.fail_after(10):
                while len([m for m in _proxy_lines(caplog) if "retrying in" in m]) < 2:
                    if backend.done.is_set():
                        break
                    await trio.sleep(0.05)
            assert not backend.done.is_set(), backend.error  # a proxy's refusal is retried
            assert router.tunnel_count() == 0
            await backend.stop()
        nursery.cancel_scope.cancel()
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert "proxy authentication required" in everything
    assert wrong not in everything
    assert base64.b64encode(f"user:{wrong}".encode()).decode() not in everything

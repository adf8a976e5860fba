"""A router name that resolves to several addresses (issue 9, item 6): each address is dialled
as a router of its own, the name is looked up again, and an address that leaves DNS has its
tunnels drained (a request in flight on it still completes). Two in-process routers listen on
127.0.0.1 and 127.0.0.2 with the same tunnel port; the helper's resolver is replaced so that
``routers.test`` resolves to what the test says."""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable

import httpx
import pytest
import trio

import ptth._backend
from ptth import BackendOptions
from ptth._targets import resolve
from tests.e2e.apps_drain import make_app
from tests.support import ThreadSafeEvent, start_backend, start_router

NAME = "routers.test"


def _port_free_on_both() -> int:
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.2", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free on both 127.0.0.1 and 127.0.0.2")


def _fake_dns(
    monkeypatch: pytest.MonkeyPatch, answer: list[str]
) -> Callable[[str, int], Awaitable[list[str]]]:
    async def resolver(host: str, port: int) -> list[str]:
        assert host == NAME
        if not answer:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(answer)

    monkeypatch.setattr(ptth._backend, "_resolver", resolver)
    return resolver


def _options() -> BackendOptions:
    return BackendOptions(resolve_interval=0.2, backoff_base=0.05, backoff_cap=0.3)


async def test_each_address_is_a_router_and_a_vanished_one_drains(
    monkeypatch: pytest.MonkeyPatch, helper_loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ptth")
    answer = ["127.0.0.1", "127.0.0.2"]
    _fake_dns(monkeypatch, answer)
    port = _port_free_on_both()
    started = ThreadSafeEvent()
    async with trio.open_nursery() as nursery:
        one = await start_router(nursery, tunnel=f"127.0.0.1:{port}")
        two = await start_router(nursery, tunnel=f"127.0.0.2:{port}")
        backend = await start_backend(
            nursery,
            make_app("b", started=started),
            f"{NAME}:{port}",
            loop=helper_loop,
            options=_options(),
        )
        await one.wait_tunnels(1)
        await two.wait_tunnels(1)
        async with httpx.AsyncClient(timeout=10) as client:
            for router in (one, two):
                assert (await client.get(router.url + "/")).status_code == 200

            # A slow request in flight on the first router, then its address leaves DNS.
            slow: list[httpx.Response] = []

            async def call_slow() -> None:
                slow.append(await client.get(one.url + "/slow?s=1"))

            nursery.start_soon(call_slow)
            await started.wait()
            answer.remove("127.0.0.1")
            with trio.fail_after(10):
                while one.tunnel_count() or not slow:
                    await trio.sleep(0.02)
            assert slow[0].status_code == 200  # drained, not cut
            assert two.tunnel_count() == 1
            await trio.sleep(0.6)  # a few more lookups: nothing dials the vanished address
            assert one.tunnel_count() == 0

            # A lookup that fails keeps the addresses known so far.
            answer.clear()
            await trio.sleep(0.6)
            assert two.tunnel_count() == 1

            # The address comes back: dialled again.
            answer.extend(["127.0.0.2", "127.0.0.1"])
            await one.wait_tunnels(1)
            assert two.tunnel_count() == 1
            assert (await client.get(one.url + "/")).status_code == 200
        await backend.stop()
        assert backend.error is None
        nursery.cancel_scope.cancel()
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"{NAME}:{port} (127.0.0.1): no longer in DNS; draining" in m for m in messages)
    assert any(f"registered with {NAME}:{port} (127.0.0.2)" in m for m in messages)
    failures = [m for m in messages if "cannot resolve" in m]
    assert len(failures) == 1, failures  # one line while it fails, not one per lookup
    assert "keeping 1 known address(es)" in failures[0]


async def test_localhost_is_dialled_as_one_router(caplog: pytest.LogCaptureFixture) -> None:
    """``localhost`` is one machine: dialled by name (whichever of its addresses answers), not
    one router per address, so a router on 127.0.0.1 alone gives no failing ::1 connector."""
    caplog.set_level(logging.INFO, logger="ptth")
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, tunnel="127.0.0.1:0")
        port = router.addresses.tunnel[1]
        backend = await start_backend(
            nursery, make_app("b"), f"localhost:{port}", options=_options()
        )
        await router.wait_tunnels(1)
        await trio.sleep(0.5)  # a few resolve intervals
        await backend.stop()
        nursery.cancel_scope.cancel()
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"registered with localhost:{port} (service" in m for m in messages)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_real_resolver_gives_one_target_per_address() -> None:
    """The lookup itself (ptth/_targets.py resolve) on a name this machine knows."""
    found = await resolve("localhost", 80)
    expected = {info[4][0] for info in socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)}
    assert set(found) == expected and len(found) == len(expected)

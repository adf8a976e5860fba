"""Shared test helpers: an in-process router and backends on 127.0.0.1 with ephemeral ports."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import importlib
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio.from_thread
import pytest
import trio

import ptth
from ptth.types import ASGIApp, Receive, Scope, Send
from router.config import RouterConfig
from router.server import Router, RouterAddresses

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class RunningRouter:
    router: Router
    addresses: RouterAddresses
    scope: trio.CancelScope

    @property
    def url(self) -> str:
        return self.addresses.http_url

    @property
    def tunnel(self) -> str:
        return self.addresses.tunnel_addr

    def tunnel_count(self, service: str | None = None) -> int:
        tunnels = self.router.registry.tunnels()
        if service is not None:
            tunnels = [t for t in tunnels if t.service == service]
        return len(tunnels)

    async def wait_tunnels(
        self, count: int, service: str | None = None, timeout: float = 10
    ) -> None:
        with trio.fail_after(timeout):
            while self.tunnel_count(service) < count:
                await trio.sleep(0.01)


async def start_router(nursery: trio.Nursery, **overrides: Any) -> RunningRouter:
    """A router on 127.0.0.1:0 (both ports); ``overrides`` are RouterConfig fields."""
    fields: dict[str, Any] = {
        "http": "127.0.0.1:0",
        "tunnel": "127.0.0.1:0",
        "admin": "127.0.0.1:0",
        "access_log": False,
    }
    fields.update(overrides)
    config = dataclasses.replace(RouterConfig(), **fields)
    router = Router(config)
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[RouterAddresses]) -> None:
        with scope:
            await router.serve(task_status=task_status)

    addresses = await nursery.start(run)
    return RunningRouter(router, addresses, scope)


HELPER_LOOPS = ("trio", "asyncio")
"""The loops :func:`start_backend` can run the helper on (the ``helper_loop`` fixture's values)."""
HELPER_THREAD = "ptth-asyncio-helper"
"""The name of the thread an asyncio helper's loop runs in (joined before ``done`` is set)."""


@dataclass
class RunningBackend:
    """A ``serve`` call running in the background; the same handle on every loop.

    ``error`` is what ``serve`` raised (``None`` if it returned); ``done`` is set once it
    returned, whichever loop it ran on.
    """

    scope: trio.CancelScope
    done: trio.Event
    error: BaseException | None = None
    loop: str = "trio"
    # asyncio only: set once the helper's loop has run the cancellation.
    cancel_delivered: trio.Event | None = None

    async def cancel(self) -> None:
        """Cancel ``serve`` (it drains) and return once it saw the cancellation, not the drain.

        On trio that is the next scheduling round; on asyncio, once the helper's loop (in its
        own thread) ran the cancellation, so that what the test does next happens while the
        backend drains, as it would on trio.
        """
        self.scope.cancel()
        if self.cancel_delivered is None:
            await trio.sleep(0)
        else:
            await self.cancel_delivered.wait()

    async def stop(self) -> None:
        """Cancel ``serve`` (which drains) and wait for it to return."""
        self.scope.cancel()
        await self.done.wait()


async def start_serving(
    nursery: trio.Nursery,
    serve: Callable[..., Awaitable[None]],
    *args: Any,
    loop: str = "trio",
    **kwargs: Any,
) -> RunningBackend:
    """Run ``serve(*args, **kwargs)`` in the background; errors are kept on the handle, not raised.

    ``loop="trio"`` runs it in ``nursery``, on the test's own trio loop. ``loop="asyncio"`` runs
    it on an asyncio event loop in a thread of its own (an anyio blocking portal, open for the
    backend's life), as an asyncio program awaiting ``ptth.serve`` would. Either way cancelling
    ``nursery`` or calling :meth:`RunningBackend.stop` cancels ``serve``, which drains, and waits
    for it to return. On asyncio the app runs in that other thread: it must not touch the test's
    trio objects (use :class:`ThreadSafeEvent` to signal the test).
    """
    if loop == "trio":
        handle = RunningBackend(trio.CancelScope(), trio.Event())
        nursery.start_soon(_serve_on_trio, handle, serve, args, kwargs)
    elif loop == "asyncio":
        handle = RunningBackend(trio.CancelScope(), trio.Event(), loop=loop)
        handle.cancel_delivered = trio.Event()
        await nursery.start(_serve_on_asyncio, handle, serve, args, kwargs)
    else:
        raise ValueError(f"loop must be one of {HELPER_LOOPS}, got {loop!r}")
    return handle


async def _serve_on_trio(
    handle: RunningBackend,
    serve: Callable[..., Awaitable[None]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    try:
        with handle.scope:
            await serve(*args, **kwargs)
    except Exception as exc:
        handle.error = exc
    finally:
        handle.done.set()


async def _serve_on_asyncio(
    handle: RunningBackend,
    serve: Callable[..., Awaitable[None]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    token = trio.lowlevel.current_trio_token()
    returned = trio.Event()

    async def in_loop() -> None:  # on the asyncio loop, in the portal's thread
        try:
            await serve(*args, **kwargs)
        except Exception as exc:
            handle.error = exc  # read by the test only once ``done`` is set

    def on_done(_: concurrent.futures.Future[None]) -> None:  # any thread
        with suppress(trio.RunFinishedError):
            token.run_sync_soon(returned.set)

    portal_cm = anyio.from_thread.start_blocking_portal(backend="asyncio", name=HELPER_THREAD)
    portal = await trio.to_thread.run_sync(portal_cm.__enter__)
    future: concurrent.futures.Future[None] | None = None
    try:
        future = await trio.to_thread.run_sync(portal.start_task_soon, in_loop)
        future.add_done_callback(on_done)
        task_status.started()
        with handle.scope:
            await returned.wait()  # serve returned (or failed) on its own
    finally:
        # Cancelling the future cancels ``serve`` (which drains); leaving the portal waits for
        # it to return, then stops the loop and joins its thread.
        with trio.CancelScope(shield=True):
            if future is not None:
                future.cancel()
                # The loop runs its callbacks in order: once this no-op ran, so did the cancel.
                await trio.to_thread.run_sync(portal.call, _no_op)
            assert handle.cancel_delivered is not None
            handle.cancel_delivered.set()
            await trio.to_thread.run_sync(portal_cm.__exit__, None, None, None)
        handle.done.set()


def _no_op() -> None:
    pass


async def start_backend(
    nursery: trio.Nursery,
    app: ASGIApp,
    router_addr: str | list[str],
    *,
    loop: str = "trio",
    **kwargs: Any,
) -> RunningBackend:
    """``ptth.serve`` on ``loop`` (see :func:`start_serving`)."""
    return await start_serving(nursery, ptth.serve, app, router_addr, loop=loop, **kwargs)


class ThreadSafeEvent:
    """An event an app sets on whichever loop serves it, and the trio test waits for.

    A ``trio.Event`` (or an ``anyio.Event`` made in the test, which is one) belongs to the test's
    loop and is not thread-safe: an app on the asyncio helper thread must not set it. This one
    may be set from any thread, the test's included. Make it inside the test (it needs the
    running trio loop).
    """

    def __init__(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._flag = threading.Event()
        self._event = trio.Event()

    def set(self) -> None:
        self._flag.set()
        with suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._event.set)

    def is_set(self) -> bool:
        return self._flag.is_set()

    async def wait(self) -> None:
        await self._event.wait()


# -- sample apps ---------------------------------------------------------------------------


async def serve_lifespan(receive: Receive, send: Send, events: list[str] | None = None) -> None:
    """Answer an ASGI ``lifespan`` scope: complete startup, then shutdown (and return).

    ``events``, if given, records ``"startup"`` and ``"shutdown"`` as they arrive.
    """
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if events is not None:
                events.append("startup")
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if events is not None:
                events.append("shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return


async def read_body(receive: Receive) -> bytes:
    """The whole request body (what arrived, if the user disconnects first)."""
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return body
        body += bytes(message.get("body", b""))
        if not message.get("more_body", False):
            return body


def make_hello_app(name: str) -> ASGIApp:
    """GET anything -> 200 "bar" with X-Backend: name; POST echoes the body."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        body = await read_body(receive)
        payload = body if scope["method"] == "POST" else b"bar"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"x-backend", name.encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    return app


def deterministic_chunk(index: int, size: int) -> bytes:
    seed = hashlib.sha256(index.to_bytes(8, "big")).digest()
    return (seed * (size // len(seed) + 1))[:size]


# -- processes -----------------------------------------------------------------------------


@dataclass
class Child:
    """A child process whose merged stdout/stderr is drained into ``output`` continuously."""

    process: trio.Process
    output: bytearray = field(default_factory=bytearray)
    changed: trio.Event = field(default_factory=trio.Event)

    @property
    def pid(self) -> int:
        return self.process.pid

    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    async def drain(self) -> None:
        assert self.process.stdout is not None
        async for data in self.process.stdout:
            self.output += data
            self.changed.set()
            self.changed = trio.Event()

    async def wait_for(self, pattern: re.Pattern[bytes], timeout: float = 20) -> re.Match[bytes]:
        with trio.move_on_after(timeout):
            while True:
                match = pattern.search(self.output)
                if match is not None:
                    return match
                if self.process.poll() is not None:
                    await trio.sleep(0.1)  # let the last output arrive
                    match = pattern.search(self.output)
                    if match is not None:
                        return match
                    break
                with trio.move_on_after(0.2):
                    await self.changed.wait()
        raise AssertionError(f"{pattern.pattern!r} not seen; child output:\n{self.text()}")


@asynccontextmanager
async def child(nursery: trio.Nursery, *args: str, **env: str) -> AsyncIterator[Child]:
    """``python *args`` from the repo root; killed and reaped on the way out."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT), **env)
    process = await trio.lowlevel.open_process(
        [sys.executable, *args],
        cwd=str(ROOT),
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    handle = Child(process)
    nursery.start_soon(handle.drain)
    try:
        yield handle
    finally:
        with trio.CancelScope(shield=True):
            if process.poll() is None:
                process.kill()
            await process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def spawn(*args: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A child Python process that is always killed and reaped."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    if env:
        full_env.update(env)
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port}")


def require_tool(name: str, package: str | None = None) -> str:
    """The tool's path; skip when missing, except in CI where a missing tool fails the test."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install {package or name})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI must have it")
        pytest.skip(message)
    return path


def require_module(name: str, reason: str) -> ModuleType:
    """``pytest.importorskip`` that refuses to skip in CI: a green CI never hides a test."""
    if os.environ.get("CI") == "true":
        return importlib.import_module(name)
    module: ModuleType = pytest.importorskip(name, reason=reason)
    return module

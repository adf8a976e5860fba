"""``python -m router --workers 2``: every backend reaches every worker (ARCHITECTURE.md,
"Several cores"); a dead worker is restarted and re-covered; SIGTERM drains every worker."""

from __future__ import annotations

import os
import re
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

import ptth._backend
from ptth._workers import WorkerBook
from ptth.proto.handshake import WorkerInfo
from ptth.types import Receive, Scope, Send
from router.config import RouterConfig
from router.workers import Supervisor
from tests.support import Child, child, make_hello_app, serve_lifespan, start_backend

pytestmark = pytest.mark.timeout(90)

TOKENS = """
[[token]]
name = "test"
token = "workers-test-token"
services = ["*"]
hosts = ["*"]
"""

READY = re.compile(rb"front end on (http://[\d.]+:\d+), tunnel port on ([\d.]+:\d+): \d+ workers")
STARTED = re.compile(rb"worker (\d) started \(pid (\d+)\)")


def registrations(output: bytes, worker: int) -> int:
    return len(re.findall(rb"worker %d router\.tunnel: tunnel \w+: registered" % worker, output))


def both_covered(router: Child) -> bool:
    return bool(registrations(router.output, 0) and registrations(router.output, 1))


def served_by(output: bytes) -> Counter[int]:
    return Counter(int(m) for m in re.findall(rb"worker (\d) router\.access", output))


@asynccontextmanager
async def router_child(
    nursery: trio.Nursery, *flags: str, workers: int = 2
) -> AsyncIterator[tuple[Child, str, str]]:
    """The supervisor and its workers on ephemeral ports: (child, front-end URL, tunnel)."""
    args = ["--workers", str(workers), "--http", "127.0.0.1:0", "--tunnel", "127.0.0.1:0", *flags]
    async with child(nursery, "-m", "router", *args, "--drain-timeout", "5") as router:
        match = await router.wait_for(READY)
        yield router, match.group(1).decode(), match.group(2).decode()


async def wait_until(predicate: Callable[[], object], timeout: float = 20) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


async def fresh_requests(url: str, count: int) -> list[int]:
    """Each on a new connection, so the kernel spreads them over the workers' sockets."""
    statuses = []
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:
        for _ in range(count):
            response = await client.get(f"{url}/foo")
            statuses.append(response.status_code)
    return statuses


async def test_a_backend_covers_every_worker_and_recovers_a_restarted_one() -> None:
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        router, url, tunnel = await stack.enter_async_context(router_child(nursery))
        backend = await start_backend(nursery, make_hello_app("b1"), tunnel)
        await wait_until(lambda: both_covered(router))
        statuses = await fresh_requests(url, 40)
        assert statuses == [200] * 40
        spread = served_by(router.output)
        assert spread[0] > 0 and spread[1] > 0, spread
        assert registrations(router.output, 0) == registrations(router.output, 1) == 1

        pids = {int(i): int(pid) for i, pid in STARTED.findall(router.output)}
        mark = len(router.output)
        os.kill(pids[1], signal.SIGKILL)
        await router.wait_for(re.compile(rb"worker 1 \(pid \d+\) was killed by SIGKILL; restart"))
        # Right away, while worker 1 is down: connections hashed to its socket wait in the
        # backlog, and the new worker takes them once the backend has re-covered it, so even
        # these get 200 (ARCHITECTURE.md, "Several cores").
        statuses = await fresh_requests(url, 30)
        assert statuses == [200] * 30
        assert registrations(router.output[mark:], 1) == 1
        after = served_by(router.output[mark:])
        assert after[0] > 0 and after[1] > 0, after
        assert registrations(router.output[mark:], 0) == 0  # worker 0's tunnel never dropped
        await backend.stop()
        nursery.cancel_scope.cancel()


async def test_a_backend_dialling_the_front_end_port_covers_every_worker() -> None:
    """The front end's port is shared too (ARCHITECTURE.md, "Tunnels on the front end's
    port"): the same 421 dance covers both workers through it."""
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        router, url, _ = await stack.enter_async_context(router_child(nursery))
        front = url.removeprefix("http://")
        backend = await start_backend(nursery, make_hello_app("b1"), f"tcp://{front}")
        await wait_until(lambda: both_covered(router))
        assert await fresh_requests(url, 20) == [200] * 20
        await trio.sleep(0.5)
        assert registrations(router.output, 0) == registrations(router.output, 1) == 1
        await backend.stop()
        nursery.cancel_scope.cancel()


async def test_extra_tunnels_open_to_the_worker_whose_tunnels_are_full() -> None:
    """Each worker routes over its own tunnels, so on-demand extras are per worker
    (ptth/_workers.py): 10 long requests over 2 workers, 2 streams per tunnel, all reach the
    app before the router's 5 s queue timeout, through extras registered with their worker."""
    arrived = 0
    release = trio.Event()

    async def hold(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal arrived
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        arrived += 1
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        router, url, tunnel = await stack.enter_async_context(router_child(nursery))
        backend = await start_backend(
            nursery, hold, tunnel, max_concurrent_streams=2, max_connections=8
        )
        await wait_until(lambda: both_covered(router))
        results: list[int] = []

        async def one() -> None:
            async with httpx.AsyncClient(timeout=15) as client:
                results.append((await client.get(f"{url}/long")).status_code)

        async with trio.open_nursery() as users:
            for _ in range(10):
                users.start_soon(one)
            await wait_until(lambda: arrived == 10, timeout=4)
            release.set()
        assert results == [200] * 10
        assert registrations(router.output, 0) + registrations(router.output, 1) >= 5
        await backend.stop()
        nursery.cancel_scope.cancel()


async def test_three_workers_sharing_one_socket_are_all_covered() -> None:
    """``--reuse-port false``: whichever worker wakes first accepts; dials still reach all."""
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        router, url, tunnel = await stack.enter_async_context(
            router_child(nursery, "--reuse-port", "false", workers=3)
        )
        assert b"3 workers (one shared socket)" in router.output
        backend = await start_backend(nursery, make_hello_app("b1"), tunnel, connections=2)
        await wait_until(lambda: all(registrations(router.output, i) >= 2 for i in range(3)))
        assert await fresh_requests(url, 20) == [200] * 20
        await trio.sleep(0.5)  # any surplus tunnel has been drained and not replaced
        text = router.text()
        for i in range(3):  # surplus ones may be closed before their registration is logged
            up = set(re.findall(rf"worker {i} router\.tunnel: tunnel (\w+): registered", text))
            lost = set(re.findall(rf"worker {i} router\.tunnel: tunnel (\w+): lost", text))
            assert len(up - lost) == 2, text
        await backend.stop()
        nursery.cancel_scope.cancel()


async def test_sighup_reaches_every_worker_and_sigterm_drains_them(tmp_path: Path) -> None:
    arrived = 0

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal arrived
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        arrived += 1
        await trio.sleep(1.5)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS)
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        router, url, tunnel = await stack.enter_async_context(
            router_child(nursery, "--tokens", str(tokens))
        )
        backend = await start_backend(nursery, slow, tunnel, token="workers-test-token")
        await wait_until(lambda: both_covered(router))
        # A broken tokens file and SIGHUP: each worker says it keeps the old one (and lives).
        tokens.write_text("[[token]\n")
        router.process.send_signal(signal.SIGHUP)
        for worker in (0, 1):
            await router.wait_for(
                re.compile(rb"worker %d router\.tunnel: tokens file not" % worker)
            )
        results: list[int] = []

        async def one() -> None:
            async with httpx.AsyncClient(timeout=15) as client:
                results.append((await client.get(f"{url}/slow")).status_code)

        async with trio.open_nursery() as users:
            for _ in range(16):
                users.start_soon(one)
            await wait_until(lambda: arrived == 16, timeout=10)
            router.process.send_signal(signal.SIGTERM)
        assert results == [200] * 16
        with trio.fail_after(20):
            status = await router.process.wait()
        assert status == 0
        text = router.text()
        assert (
            "worker 0 router: router stopped" in text and "worker 1 router: router stopped" in text
        )
        assert served_by(router.output)[0] > 0 and served_by(router.output)[1] > 0
        await backend.stop()
        nursery.cancel_scope.cancel()


class _OldHelperBook(WorkerBook):
    """What a helper from before ``--workers`` does: no Ptth-Covered-Workers, worker fields
    ignored (one tunnel per slot, wherever it lands)."""

    def covered(self, key: tuple[str, int]) -> tuple[str, ...]:
        return ()

    def registered(self, key: tuple[str, int], worker: WorkerInfo | None) -> bool:
        return super().registered(key, None)


async def test_an_old_helper_reaches_one_worker_and_is_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ptth._backend, "WorkerBook", _OldHelperBook)
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        router, url, tunnel = await stack.enter_async_context(router_child(nursery))
        backend = await start_backend(nursery, make_hello_app("old"), tunnel)
        await wait_until(lambda: registrations(router.output, 0) + registrations(router.output, 1))
        await trio.sleep(1)  # no second tunnel follows
        held = [w for w in (0, 1) if registrations(router.output, w)]
        assert len(held) == 1
        statuses = Counter(await fresh_requests(url, 30))
        # The worker it reached serves it; the other has no tunnel for it (503, as any router
        # with no backend for the service).
        assert statuses[200] > 0 and set(statuses) <= {200, 503}, statuses
        assert set(served_by(router.output)) >= {held[0]}
        await backend.stop()
        nursery.cancel_scope.cancel()


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody has reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_workers_outlive_idle_threads_and_drain_when_the_supervisor_is_killed() -> None:
    """Workers once died 10 s after their start, when trio retired the idle thread that had
    spawned them (PR_SET_PDEATHSIG follows the parent thread). Now the supervisor's pipe tells
    them it is gone, and only then."""
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        router, _, _ = await stack.enter_async_context(router_child(nursery))
        await trio.sleep(11)
        assert b"shutting down" not in router.output and b"exited" not in router.output
        pids = [int(pid) for _, pid in STARTED.findall(router.output)]
        router.process.kill()
        # Not router.wait_for: it stops looking once the supervisor has exited.
        said = re.compile(rb"worker \d router: the supervisor is gone")
        await wait_until(lambda: len(said.findall(router.output)) == 2, timeout=10)
        await wait_until(lambda: all(gone(pid) for pid in pids), timeout=10)
        nursery.cancel_scope.cancel()


class _CrashingSupervisor(Supervisor):
    def command(self, worker: object, *, restarted: bool = False) -> list[str]:
        return [sys.executable, "-c", "import sys; sys.exit(3)"]


async def test_the_supervisor_gives_up_on_workers_that_keep_crashing_at_start() -> None:
    config = RouterConfig(http="127.0.0.1:0", tunnel="127.0.0.1:0", drain_timeout=1)
    supervisor = _CrashingSupervisor(config, [], 2)
    supervisor.restart_base = 0.01
    try:
        with trio.fail_after(30):
            status = await supervisor.run()
    finally:
        supervisor.close()
    assert status == 1 and supervisor.gave_up

"""Bodies stream through the router both ways, with bounded memory and end-to-end backpressure.

The memory tests run the router as a subprocess (``python -m router``) so that its RSS can be
read from ``/proc/<pid>/status`` while a transfer is in flight. Tunnel windows are 4 MiB per
stream and 16 MiB per connection, so nothing in the router should grow anywhere near the size
of the body.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest
import trio

from tests.e2e.apps_streaming import DELAY, Progress, expected_sha256, make_app
from tests.support import Child, child, deterministic_chunk, start_backend, start_router

MiB = 1024 * 1024
# Peak RSS growth allowed in the router over its warmed-up baseline during a transfer
# (measured: under 5 MiB; a router that acknowledged tunnel data on arrival grew by 170 MiB
# on the 200 MiB download and by 63 MiB with the slow reader).
RSS_BUDGET = 64 * MiB
SLOW_READER_RSS_BUDGET = 32 * MiB
CLIENT_RCVBUF = 256 * 1024

_ADDRESS_LINE = re.compile(rb"front end on (http://\S+), tunnel port on (\S+)")


# -- subprocess helpers --------------------------------------------------------------------


@dataclass
class RouterProcess:
    child: Child
    url: str
    tunnel: str


@asynccontextmanager
async def router_process(nursery: trio.Nursery) -> AsyncIterator[RouterProcess]:
    args = ("-m", "router", "--http", "127.0.0.1:0", "--tunnel", "127.0.0.1:0")
    async with child(nursery, *args, "--access-log", "false") as proc:
        match = await proc.wait_for(_ADDRESS_LINE)
        yield RouterProcess(proc, match[1].decode(), match[2].decode())


def rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@dataclass
class RssMonitor:
    """Samples a process's RSS every ``interval`` seconds while running."""

    pid: int
    interval: float = 0.02
    baseline: int = 0
    peak: int = 0
    samples: int = 0
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    def start(self, nursery: trio.Nursery) -> None:
        self.baseline = self.peak = rss(self.pid)
        nursery.start_soon(self.run)

    def stop(self) -> None:
        """One last sample, then no more: the process may be killed from now on."""
        self.peak = max(self.peak, rss(self.pid))
        self.scope.cancel()

    async def run(self) -> None:
        with self.scope:
            while True:
                self.peak = max(self.peak, rss(self.pid))
                self.samples += 1
                await trio.sleep(self.interval)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


async def wait_routable(client: httpx.AsyncClient, timeout: float = 15) -> None:
    """Until a request reaches a backend (the router answers 503 before a tunnel registers)."""
    with trio.fail_after(timeout):
        while True:
            response = await client.get("/two-chunks")
            if response.status_code == 200:
                return
            await trio.sleep(0.05)


async def warm_up(client: httpx.AsyncClient) -> None:
    """A few medium transfers, so the baseline includes imports and steady-state buffers."""
    for _ in range(3):
        response = await client.get("/download", params={"size": 8 * MiB})
        assert response.status_code == 200
        assert len(response.content) == 8 * MiB


def report(line: str) -> None:
    """Measurements go to stderr: visible with ``pytest -s`` and in failure reports."""
    print(f"[streaming] {line}", file=sys.stderr)


# -- tests ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_ten_mib_upload_is_hashed_while_streaming(helper_loop: str) -> None:
    size = 10 * MiB
    upload_chunk = 100_000  # not a divisor of the window sizes, on purpose
    sizes = [min(upload_chunk, size - off) for off in range(0, size, upload_chunk)]
    expected = hashlib.sha256()
    for index, length in enumerate(sizes):
        expected.update(deterministic_chunk(index, length))

    async def body() -> AsyncIterator[bytes]:
        for index, length in enumerate(sizes):
            yield deterministic_chunk(index, length)

    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, max_body_size=64 * MiB)
        backend = await start_backend(nursery, make_app(), router.tunnel, loop=helper_loop)
        await router.wait_tunnels(1)
        for http2 in (False, True):
            async with httpx.AsyncClient(
                base_url=router.url, http1=not http2, http2=http2, timeout=30
            ) as client:
                response = await client.post("/sha256", content=body())
                assert response.status_code == 200, response.text
                assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
                result = json.loads(response.content)
                assert result["size"] == size
                assert result["sha256"] == expected.hexdigest()
                # The app saw the body in pieces, not as one buffered blob.
                assert result["chunks"] > 10
        await backend.stop()
        assert backend.error is None
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(240)
async def test_two_hundred_mib_download_keeps_router_memory_bounded() -> None:
    size = 200 * MiB
    expected = expected_sha256(size)
    async with trio.open_nursery() as nursery:
        async with router_process(nursery) as router:
            app_spec = "tests.e2e.apps_streaming:app"
            async with (
                child(nursery, "-m", "ptth", app_spec, "--router", router.tunnel),
                httpx.AsyncClient(base_url=router.url, timeout=60) as client,
            ):
                await wait_routable(client)
                await warm_up(client)
                monitor = RssMonitor(router.child.pid)
                monitor.start(nursery)
                digest = hashlib.sha256()
                received = 0
                started = trio.current_time()
                async with client.stream("GET", "/download", params={"size": size}) as response:
                    assert response.status_code == 200
                    async for data in response.aiter_raw():
                        digest.update(data)
                        received += len(data)
                elapsed = trio.current_time() - started
                monitor.stop()
        nursery.cancel_scope.cancel()
    report(
        f"200 MiB download: {elapsed:.2f} s ({size / MiB / elapsed:.0f} MiB/s); router RSS "
        f"baseline {monitor.baseline / MiB:.1f} MiB, peak {monitor.peak / MiB:.1f} MiB, "
        f"growth {monitor.growth / MiB:.1f} MiB"
    )
    assert received == size
    assert digest.hexdigest() == expected
    assert monitor.samples >= 10, "the RSS monitor hardly ran during the transfer"
    assert monitor.growth < RSS_BUDGET, (
        f"router RSS grew by {monitor.growth / MiB:.1f} MiB during a 200 MiB download"
    )


@pytest.mark.timeout(120)
async def test_slow_reader_slows_the_backend_and_router_memory_stays_bounded(
    helper_loop: str,
) -> None:
    size = 64 * MiB
    slow_for = 2.0
    pause = 0.1
    progress = Progress()
    async with trio.open_nursery() as nursery:
        async with router_process(nursery) as router:
            backend = await start_backend(
                nursery, make_app(progress), router.tunnel, loop=helper_loop
            )
            # A fixed receive buffer: Linux would otherwise autotune the client's socket
            # buffer (up to tcp_rmem's max, 32 MiB here), which is the kernel's memory, not
            # the router's, and would make the numbers below depend on the machine's load.
            transport = httpx.AsyncHTTPTransport(
                socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)]
            )
            async with httpx.AsyncClient(
                base_url=router.url, timeout=60, transport=transport
            ) as client:
                await wait_routable(client)
                await warm_up(client)
                monitor = RssMonitor(router.child.pid)
                monitor.start(nursery)
                sent_at: dict[float, int] = {}
                received_at: dict[float, int] = {}
                digest = hashlib.sha256()
                received = 0

                async def sample_progress(start: float) -> None:
                    for mark in (1.0, slow_for):
                        await trio.sleep_until(start + mark)
                        sent_at[mark] = progress.sent
                        received_at[mark] = received

                async with client.stream("GET", "/download", params={"size": size}) as response:
                    assert response.status_code == 200
                    start = trio.current_time()
                    nursery.start_soon(sample_progress, start)
                    async for data in response.aiter_raw():
                        digest.update(data)
                        received += len(data)
                        if trio.current_time() - start < slow_for:
                            await trio.sleep(pause)
                        elif slow_for not in sent_at:
                            await trio.sleep(0.01)  # let the sampler run first
                monitor.stop()
            await backend.stop()
            assert backend.error is None
        nursery.cancel_scope.cancel()
    in_flight = sent_at[slow_for] - received_at[slow_for]
    report(
        f"slow reader (64 MiB): backend had sent {sent_at[1.0] / MiB:.1f} MiB after 1 s, "
        f"{sent_at[slow_for] / MiB:.1f} MiB after {slow_for:g} s (reader had "
        f"{received_at[slow_for] / MiB:.1f} MiB); router RSS baseline "
        f"{monitor.baseline / MiB:.1f} MiB, peak {monitor.peak / MiB:.1f} MiB, growth "
        f"{monitor.growth / MiB:.1f} MiB"
    )
    assert received == size
    assert digest.hexdigest() == expected_sha256(size)
    # Only the buffers between the app and the reader fill: the tunnel stream window
    # (4 MiB), the router's socket send buffer (up to tcp_wmem's max, 4 MiB), the client's
    # fixed receive buffer, httpx's read. Nowhere near the 64 MiB body, which an unthrottled
    # backend sends in well under a second.
    assert sent_at[1.0] < 16 * MiB, f"backend sent {sent_at[1.0] / MiB:.1f} MiB in 1 s"
    # The backend runs ahead of the reader by those buffers only (load on the machine can
    # only shrink this, so it is not timing-sensitive).
    assert in_flight < 16 * MiB, f"{in_flight / MiB:.1f} MiB in flight with a slow reader"
    assert monitor.samples >= 10, "the RSS monitor hardly ran during the transfer"
    assert monitor.growth < SLOW_READER_RSS_BUDGET, (
        f"router RSS grew by {monitor.growth / MiB:.1f} MiB with a slow reader"
    )


@pytest.mark.timeout(30)
@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
async def test_response_chunks_arrive_as_produced(http2: bool, helper_loop: str) -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        backend = await start_backend(nursery, make_app(), router.tunnel, loop=helper_loop)
        await router.wait_tunnels(1)
        async with httpx.AsyncClient(base_url=router.url, http1=not http2, http2=http2) as client:
            await client.get("/two-chunks")  # connection set up outside the measurement
            arrivals: list[tuple[float, bytes]] = []
            started = trio.current_time()
            async with client.stream("GET", "/two-chunks") as response:
                assert response.status_code == 200
                async for data in response.aiter_raw():
                    arrivals.append((trio.current_time() - started, data))
        await backend.stop()
        nursery.cancel_scope.cancel()
    assert b"".join(data for _, data in arrivals) == b"firstsecond"
    first_at = next(t for t, data in arrivals if data)
    second_at = arrivals[-1][0]
    assert arrivals[0][1] == b"first", arrivals
    assert first_at < 0.3, f"first chunk after {first_at:.3f} s: it was held back"
    assert second_at >= DELAY - 0.1, f"second chunk after {second_at:.3f} s"

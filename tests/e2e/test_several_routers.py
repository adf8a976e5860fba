"""Three routers behind a real HAProxy (issue 9, items 6 and 8), all real processes.

Each backend (``python -m ptth``) is given the three routers' tunnel ports and keeps a tunnel to
every one; HAProxy (HTTP mode, health checks through each router, ``retry-on`` and
``option redispatch``) spreads wrk's load over the three front ends. Killing one router
(SIGKILL) loses at most the requests in flight on it and traffic continues with no
reconfiguration; the killed router, restarted on the same ports, gets its tunnels back by
itself. Rolling restarts of every backend and of every router, one by one, under at least
200 requests/s, lose no request at all.
"""

from __future__ import annotations

import re
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from tests.e2e.cluster_support import REGISTERED_ROUTER, Cluster, wait_serving
from tests.e2e.tools_support import haproxy, wrk
from tests.support import require_tool

pytestmark = pytest.mark.timeout(90)

CONNECTIONS = 16
MIN_RATE = 200.0


@asynccontextmanager
async def three_routers(
    tmp_path: Path, backends: int = 2
) -> AsyncIterator[tuple[Cluster, str, trio.Nursery]]:
    require_tool("haproxy")
    require_tool("wrk")
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery)
        try:
            await cluster.add_routers(3)
            for i in range(backends):
                await cluster.start_backend(f"b{i}")
            async with haproxy(nursery, tmp_path, [s.front for s in cluster.routers]) as (
                url,
                _proc,
            ):
                await wait_serving(url)
                yield cluster, url, nursery
        finally:
            with trio.CancelScope(shield=True):
                await cluster.aclose()
            nursery.cancel_scope.cancel()


async def _direct(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.get(url + "/hello")


async def test_killing_one_router_loses_only_its_in_flight_requests(tmp_path: Path) -> None:
    async with three_routers(tmp_path) as (cluster, url, nursery):
        victim = cluster.routers[0]
        assert victim.member is not None
        async with wrk(nursery, url + "/hello", connections=CONNECTIONS) as load:
            await trio.sleep(3)
            victim.member.proc.process.send_signal(signal.SIGKILL)
            await victim.member.proc.process.wait()
            await trio.sleep(4)
            result = await load.stop()
        print(result.summary)
        await victim.member.close()
        # At most one request per wrk connection can have been in flight on the dead router.
        assert result.failed <= CONNECTIONS, result.output
        assert result.rate >= MIN_RATE, result.output
        # The others still serve, and HAProxy (no reconfiguration) keeps sending them traffic.
        for _ in range(20):
            assert (await _direct(url)).status_code == 200

        # Restarted on the same ports, the router gets every backend's tunnel back unaided.
        member = await cluster.start_router(victim)
        await member.wait_count(REGISTERED_ROUTER, len(cluster.backends))
        response = await _direct(victim.url)
        assert response.status_code == 200
        assert response.headers["x-backend"] in {"b0", "b1"}
        for backend in cluster.backends:
            # Each backend reconnected on its own: the tunnels to the two others never dropped.
            assert (
                backend.count(re.compile(rb"registered with 127\.0\.0\.1:%d" % victim.tunnel)) == 2
            )
            for other in cluster.routers[1:]:
                pattern = re.compile(rb"registered with 127\.0\.0\.1:%d" % other.tunnel)
                assert backend.count(pattern) == 1, backend.proc.text()


@pytest.mark.parametrize(
    "replacement_first", [True, False], ids=["replace-then-stop", "stop-then-replace"]
)
async def test_rolling_restart_of_every_backend_under_load(
    tmp_path: Path, replacement_first: bool
) -> None:
    """The load goes to one router's front end directly, not through HAProxy, so that no
    retry of HAProxy's can hide a request the drain lost."""
    async with three_routers(tmp_path) as (cluster, _url, nursery):
        direct = cluster.routers[0].url
        async with wrk(nursery, direct + "/hello", connections=CONNECTIONS) as load:
            await trio.sleep(2)
            for i, old in enumerate(list(cluster.backends)):
                # SIGTERM: GOAWAY on every tunnel, no new streams, in-flight ones finish, exit.
                # Either the replacement registers with every router first, or the other
                # backend carries the load meanwhile.
                if replacement_first:
                    await cluster.start_backend(f"b{i}-new")
                await old.terminate()
                cluster.backends.remove(old)
                if not replacement_first:
                    await cluster.start_backend(f"b{i}-new")
                assert b"Traceback" not in bytes(old.proc.output), old.proc.text()
            await trio.sleep(2)
            result = await load.stop()
        print(result.summary)
        assert result.failed == 0, result.output
        assert result.rate >= MIN_RATE, result.output
        response = await _direct(direct)
        assert response.headers["x-backend"].endswith("-new")


async def test_rolling_restart_of_every_router_behind_haproxy_under_load(
    tmp_path: Path,
) -> None:
    async with three_routers(tmp_path) as (cluster, url, nursery):
        async with wrk(nursery, url + "/hello", connections=CONNECTIONS) as load:
            await trio.sleep(2)
            for slot in cluster.routers:
                assert slot.member is not None
                # SIGTERM: the router closes its front-end listener (HAProxy's checks fail,
                # a refused connection is retried elsewhere), finishes in-flight requests,
                # then drains its tunnels; the backends redial the same port.
                await slot.member.terminate()
                member = await cluster.start_router(slot)
                await member.wait_count(REGISTERED_ROUTER, len(cluster.backends))
                await wait_serving(slot.url, n=5)
                await trio.sleep(1)  # HAProxy's "rise 2" at 250 ms checks
            await trio.sleep(2)
            result = await load.stop()
        print(result.summary)
        assert result.failed == 0, result.output
        assert result.rate >= MIN_RATE, result.output

"""1 GiB each way through one tunnel, checksummed, with the router's peak memory reported.

Issue 3 item 5. The router runs as a subprocess so its RSS can be sampled; the numbers are
printed (``pytest -s``) and recorded in benchmarks/README.md, never asserted as speeds.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from tests.e2e.apps_streaming import CHUNK, expected_sha256
from tests.e2e.test_streaming import RSS_BUDGET, RssMonitor, report, wait_routable
from tests.support import child, deterministic_chunk

GiB = 1024**3
MiB = 1024**2
_ADDRESS_LINE = re.compile(rb"front end on (http://\S+), tunnel port on (\S+)")


async def upload_body(size: int) -> AsyncIterator[bytes]:
    for index, offset in enumerate(range(0, size, CHUNK)):
        yield deterministic_chunk(index, min(CHUNK, size - offset))


@pytest.mark.timeout(300)
async def test_one_gib_up_and_down_through_one_tunnel() -> None:
    size = GiB
    expected = expected_sha256(size)  # the same deterministic bytes both ways
    router_args = ("-m", "router", "--http", "127.0.0.1:0", "--tunnel", "127.0.0.1:0")
    async with trio.open_nursery() as nursery:
        async with child(nursery, *router_args, "--access-log", "false", "--max-body", "0") as r:
            match = await r.wait_for(_ADDRESS_LINE)
            url, tunnel = match[1].decode(), match[2].decode()
            app_spec = "tests.e2e.apps_streaming:app"
            async with (
                child(nursery, "-m", "ptth", app_spec, "--router", tunnel),
                httpx.AsyncClient(base_url=url, timeout=120) as client,
            ):
                await wait_routable(client)
                monitor = RssMonitor(r.pid)
                monitor.start(nursery)

                started = trio.current_time()
                response = await client.post("/sha256", content=upload_body(size))
                up_seconds = trio.current_time() - started
                assert response.status_code == 200, response.text
                uploaded = json.loads(response.content)

                digest = hashlib.sha256()
                received = 0
                started = trio.current_time()
                async with client.stream("GET", "/download", params={"size": size}) as stream:
                    assert stream.status_code == 200
                    async for data in stream.aiter_raw():
                        digest.update(data)
                        received += len(data)
                down_seconds = trio.current_time() - started
                monitor.stop()
        nursery.cancel_scope.cancel()
    report(
        f"1 GiB upload {up_seconds:.1f} s ({size / 1e6 / up_seconds:.0f} MB/s), "
        f"download {down_seconds:.1f} s ({size / 1e6 / down_seconds:.0f} MB/s); router RSS "
        f"{monitor.baseline / MiB:.1f} -> peak {monitor.peak / MiB:.1f} MiB"
    )
    assert uploaded["size"] == size and uploaded["sha256"] == expected
    assert received == size and digest.hexdigest() == expected
    assert monitor.growth < RSS_BUDGET

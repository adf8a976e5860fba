"""The examples stay runnable: ``make demo`` end to end, and the example app through a tunnel."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
import pytest
import trio

from examples.backend import make_app
from tests.support import ROOT, start_backend, start_router


@pytest.mark.timeout(90)
def test_demo_runs_router_backends_and_load_test() -> None:
    result = subprocess.run(
        [sys.executable, "examples/demo.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=80,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert re.search(r"^\[demo\] router: front end on http://127\.0\.0\.1:\d+", out, re.M)
    assert re.search(r"^\[demo\] status page on http://127\.0\.0\.1:\d+ ", out, re.M), out
    assert re.search(r"^errors\s+0$", out, re.M)
    assert re.search(r"^statuses\s+200=200$", out, re.M)
    backends = re.search(r"^backends\s+(.*)$", out, re.M)
    assert backends is not None
    assert "backend-1=" in backends[1] and "backend-2=" in backends[1]
    assert out.rstrip().endswith("[demo] router and backends stopped")


@pytest.mark.timeout(20)
async def test_example_app_through_the_tunnel() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        backend = await start_backend(nursery, make_app("example-1"), router.tunnel)
        await router.wait_tunnels(1)
        async with httpx.AsyncClient(base_url=router.url) as client:
            response = await client.get("/foo")
            assert (response.status_code, response.text) == (200, "bar")
            assert response.headers["x-backend"] == "example-1"
            assert response.headers["content-type"].startswith("text/plain")
            missing = await client.get("/bar")
            assert missing.status_code == 404
            assert missing.headers["x-backend"] == "example-1"
        await backend.stop()
        assert backend.error is None
        nursery.cancel_scope.cancel()

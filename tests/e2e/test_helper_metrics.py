"""The helper's own metrics (``BackendOptions.metrics`` / ``python -m ptth --metrics``)."""

from __future__ import annotations

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

import ptth
from ptth.metrics import failure_reason
from tests.support import free_port, make_hello_app, start_backend, start_router


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.timeout(30)
async def test_helper_metrics_count_tunnels_requests_and_failures(helper_loop: str) -> None:
    port = free_port()
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        dead = f"127.0.0.1:{free_port()}"  # nothing listens: every dial fails
        await start_backend(
            nursery,
            make_hello_app("m"),
            [router.tunnel, dead],
            loop=helper_loop,
            options=ptth.BackendOptions(metrics=f"127.0.0.1:{port}", backoff_cap=0.2),
        )
        await router.wait_tunnels(1)
        async with httpx.AsyncClient(timeout=10) as client:
            for i in range(5):
                assert (await client.get(f"{router.url}/x/{i}")).status_code == 200
            await trio.sleep(0.5)  # the dead router's dials fail meanwhile
            scrape = await client.get(f"http://127.0.0.1:{port}/metrics")
            assert scrape.status_code == 200
            assert scrape.headers["content-type"].startswith("text/plain")
            assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
            assert (await client.get(f"http://127.0.0.1:{port}/other")).status_code == 404
        values = samples(scrape.text)
        live = router.tunnel
        assert (
            values[("ptth_helper_requests_total", (("kind", "http"), ("status_class", "2xx")))] == 5
        )
        assert values[("ptth_helper_tunnels", (("router", live),))] == 1
        assert values[("ptth_helper_tunnels_registered_total", (("router", live),))] == 1
        assert values[("ptth_helper_in_flight", (("kind", "http"),))] == 0
        failed = [
            value
            for (name, labels), value in values.items()
            if name == "ptth_helper_dial_failures_total" and ("router", dead) in labels
        ]
        assert failed and sum(failed) >= 1
        nursery.cancel_scope.cancel()


def test_failure_reasons_are_bounded_labels() -> None:
    from ptth.errors import HandshakeRefused

    assert failure_reason(TimeoutError()) == "timeout"
    assert failure_reason(ConnectionRefusedError()) == "connect"
    assert failure_reason(HandshakeRefused(503, "busy")) == "refused_503"
    assert failure_reason(ValueError("x" * 1000)) == "other"


@pytest.mark.timeout(40)
async def test_cli_metrics_flag() -> None:
    """``python -m ptth APP --router ADDR --metrics 127.0.0.1:0``: says where, and serves them."""
    import re

    from tests.support import child

    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        async with child(
            nursery,
            "-m",
            "ptth",
            "tests.e2e.apps_identities:app",
            "--router",
            router.tunnel,
            "--metrics",
            "127.0.0.1:0",
        ) as helper:
            where = await helper.wait_for(re.compile(rb"metrics on http://([\d.]+:\d+)/metrics"))
            await router.wait_tunnels(1)
            async with httpx.AsyncClient(timeout=10) as client:
                assert (await client.get(f"{router.url}/")).status_code < 500
                scrape = await client.get(f"http://{where.group(1).decode()}/metrics")
            values = samples(scrape.text)
            assert values[("ptth_helper_tunnels", (("router", router.tunnel),))] == 1
            assert (
                sum(v for (name, _), v in values.items() if name == "ptth_helper_requests_total")
                == 1
            )
        nursery.cancel_scope.cancel()

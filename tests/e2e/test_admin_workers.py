"""With ``--workers N`` every worker has its own admin listener: the configured port plus the
worker's index (ARCHITECTURE.md, "Operations: the admin listener")."""

from __future__ import annotations

import signal

import httpx
import pytest

from tests.support import free_port, spawn, wait_port


@pytest.mark.timeout(40)
def test_each_worker_listens_on_the_admin_port_plus_its_index() -> None:
    http, tunnel, admin = free_port(), free_port(), free_port()
    with spawn(
        "-m",
        "router",
        *("--workers", "2", "--http", f"127.0.0.1:{http}", "--tunnel", f"127.0.0.1:{tunnel}"),
        *("--admin", f"127.0.0.1:{admin}", "--log-level", "WARNING"),
    ) as proc:
        for port in (admin, admin + 1):
            wait_port(port, timeout=20)
            assert httpx.get(f"http://127.0.0.1:{port}/readyz").text == "ready\n"
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            assert "# TYPE ptth_requests_in_flight gauge" in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0

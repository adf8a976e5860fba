"""Real third-party servers started by tests: tinyproxy (forward proxy) and HAProxy (load
balancer), each from a generated config on a free port, killed and reaped on the way out."""

from __future__ import annotations

import re
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from tests.support import Child, free_port, require_tool


@asynccontextmanager
async def tool(nursery: trio.Nursery, *argv: str) -> AsyncIterator[Child]:
    """Any executable (not Python), its merged output drained into the handle."""
    process = await trio.lowlevel.open_process(
        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
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


async def wait_listening(port: int, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while True:
            try:
                sock = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)
                continue
            await sock.aclose()
            return


@asynccontextmanager
async def tinyproxy(
    nursery: trio.Nursery,
    tmp: Path,
    connect_ports: Sequence[int],
    *,
    basic_auth: tuple[str, str] | None = None,
) -> AsyncIterator[tuple[str, Child]]:
    """tinyproxy on 127.0.0.1:free port, CONNECT allowed to ``connect_ports`` only; yields its
    URL (without credentials) and the process, whose output is its log (LogLevel Connect)."""
    binary = require_tool("tinyproxy")
    port = free_port()
    lines = [
        f"Port {port}",
        "Listen 127.0.0.1",
        "Timeout 30",
        "LogLevel Connect",
        "MaxClients 200",
        "Allow 127.0.0.1",
        *(f"ConnectPort {p}" for p in connect_ports),
    ]
    if basic_auth is not None:
        lines.append(f"BasicAuth {basic_auth[0]} {basic_auth[1]}")
    conf = tmp / f"tinyproxy-{port}.conf"
    conf.write_text("\n".join(lines) + "\n")
    async with tool(nursery, binary, "-d", "-c", str(conf)) as proc:
        await wait_listening(port)
        yield f"http://127.0.0.1:{port}", proc


def connects_logged(proc: Child, port: int) -> int:
    """How many ``CONNECT 127.0.0.1:port`` requests tinyproxy logged."""
    return len(re.findall(rf"CONNECT 127\.0\.0\.1:{port} ".encode(), bytes(proc.output)))

"""Real third-party servers started by tests: tinyproxy (forward proxy) and HAProxy (load
balancer), each from a generated config on a free port, killed and reaped on the way out."""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
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


def haproxy_config(front_port: int, servers: Sequence[int], *, health_host: str) -> str:
    """HAProxy in HTTP mode in front of routers' front ends (README, "Running several routers").

    A router is healthy when ``/health`` answers 200 *through it* (so one that is restarting and
    has no tunnel yet gets no traffic); a refused connection (a draining router closed its
    listener), an empty response or a 502/503/504 is retried on another router (``retry-on``,
    ``option redispatch``); a check every 250 ms marks a dead or draining router down after two
    failures (a refused connection fails at once), each check allowed 2 s on a busy machine.
    """
    lines = [
        "global",
        "    maxconn 4000",
        "defaults",
        "    mode http",
        "    timeout connect 1s",
        "    timeout client 30s",
        "    timeout server 30s",
        "    timeout queue 5s",
        # Without it a check times out after `inter`: a router slow for 250 ms on a busy
        # machine would be marked down, and all three at once means 503 for everyone.
        "    timeout check 2s",
        "    retries 3",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response response-timeout 502 503 504",
        "backend routers",
        "    balance roundrobin",
        "    option httpchk",
        f"    http-check send meth GET uri /health ver HTTP/1.1 hdr Host {health_host}",
        "    http-check expect status 200",
        "    default-server check inter 250ms fall 2 rise 2",
        *(f"    server r{i} 127.0.0.1:{port}" for i, port in enumerate(servers)),
        "frontend users",
        f"    bind 127.0.0.1:{front_port}",
        "    default_backend routers",
    ]
    return "\n".join(lines) + "\n"


@asynccontextmanager
async def haproxy(
    nursery: trio.Nursery, tmp: Path, servers: Sequence[int], *, health_host: str = "app.test"
) -> AsyncIterator[tuple[str, Child]]:
    """HAProxy (``-db``: foreground) on 127.0.0.1:free port; yields its URL and the process."""
    binary = require_tool("haproxy")
    port = free_port()
    conf = tmp / f"haproxy-{port}.cfg"
    conf.write_text(haproxy_config(port, servers, health_host=health_host))
    async with tool(nursery, binary, "-f", str(conf), "-db") as proc:
        await wait_listening(port)
        yield f"http://127.0.0.1:{port}", proc


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    socket_errors: int
    non_2xx: int
    output: str

    @property
    def failed(self) -> int:
        return self.socket_errors + self.non_2xx

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def summary(self) -> str:
        return (
            f"wrk: {self.requests} requests in {self.seconds:.1f} s ({self.rate:.0f}/s), "
            f"{self.failed} failed"
        )


def parse_wrk(output: str) -> WrkResult:
    """wrk's summary: requests and duration, socket errors (connect, read, write, timeout)
    and non-2xx/3xx responses; a summary that is not there fails the test."""
    done = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", output)
    assert done is not None, f"no wrk summary in:\n{output}"
    seconds = float(done.group(2)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[done.group(3)]
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    socket_errors = sum(int(n) for n in errors.groups()) if errors else 0
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        int(done.group(1)), seconds, socket_errors, int(bad.group(1)) if bad else 0, output
    )


class Wrk:
    """wrk running against a URL until :meth:`stop` (SIGINT makes it print its summary)."""

    def __init__(self, proc: Child) -> None:
        self.proc = proc

    async def stop(self) -> WrkResult:
        self.proc.process.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            await self.proc.process.wait()
        await trio.sleep(0.1)
        return parse_wrk(self.proc.text())


@asynccontextmanager
async def wrk(
    nursery: trio.Nursery, url: str, *, connections: int = 16, threads: int = 1
) -> AsyncIterator[Wrk]:
    """Load on ``url`` (keep-alive, ``connections`` at once, 5 s timeout per request)."""
    binary = require_tool("wrk")
    argv = [binary, f"-t{threads}", f"-c{connections}", "-d600s", "--timeout", "5s", url]
    async with tool(nursery, *argv) as proc:
        yield Wrk(proc)

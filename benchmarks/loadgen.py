"""Fallback clients for benchmarks/run.py, used when h2load or curl is not installed.

* :func:`http1_load`: ``concurrency`` keep-alive HTTP/1.1 connections (h11), each sending one
  request at a time until ``requests`` have been issued in total; per-request latency in seconds.
  It is pure Python, so on a small machine it competes with the servers for CPU: its numbers are
  lower bounds, and only comparable with other runs of the same generator.
* :func:`download`: one GET on a raw trio socket that counts body bytes (no copies kept).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11
import trio

__all__ = ["DownloadResult", "LoadResult", "download", "http1_load"]


@dataclass
class LoadResult:
    requests: int
    duration: float
    latencies: list[float] = field(default_factory=list)  # seconds, one per completed response
    statuses: Counter[int] = field(default_factory=Counter)
    body_bytes: int = 0
    errors: int = 0  # transport failures (the request got no complete response)


@dataclass
class DownloadResult:
    status: int
    body_bytes: int
    seconds: float


def _target(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"only http:// URLs are supported, got {url!r}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, parts.port or 80, path


async def http1_load(
    url: str, requests: int, concurrency: int, timeout: float = 10.0
) -> LoadResult:
    host, port, path = _target(url)
    request = h11.Request(
        method="GET", target=path, headers=[("Host", f"{host}:{port}"), ("User-Agent", "loadgen")]
    )
    result = LoadResult(requests=requests, duration=0.0)
    issued = 0

    async def connection() -> None:
        nonlocal issued
        stream: trio.SocketStream | None = None
        conn = h11.Connection(h11.CLIENT)
        try:
            while issued < requests:
                issued += 1  # no await between the check and the increment: atomic in trio
                if stream is None or conn.our_state is not h11.IDLE:
                    if stream is not None:
                        await stream.aclose()
                    stream = await trio.open_tcp_stream(host, port)
                    conn = h11.Connection(h11.CLIENT)
                started = time.perf_counter()
                try:
                    with trio.fail_after(timeout):
                        status = await _exchange(stream, conn, request, result)
                except (OSError, trio.BrokenResourceError, trio.TooSlowError, h11.ProtocolError):
                    result.errors += 1
                    await stream.aclose()
                    stream = None
                    continue
                result.latencies.append(time.perf_counter() - started)
                result.statuses[status] += 1
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
        finally:
            if stream is not None:
                await stream.aclose()

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(min(concurrency, requests)):
            nursery.start_soon(connection)
    result.duration = time.perf_counter() - started
    return result


async def _exchange(
    stream: trio.SocketStream, conn: h11.Connection, request: h11.Request, result: LoadResult
) -> int:
    await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
    status = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            if not data:
                raise trio.BrokenResourceError("server closed the connection")
            conn.receive_data(data)
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            result.body_bytes += len(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return status
        elif isinstance(event, h11.ConnectionClosed):
            raise trio.BrokenResourceError("server closed the connection")


async def download(url: str, timeout: float = 300.0) -> DownloadResult:
    """GET ``url`` over HTTP/1.1 (``Connection: close``) and count the body bytes."""
    host, port, path = _target(url)
    started = time.perf_counter()
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            head = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
            await stream.send_all(head.encode())
            buffer = b""
            while b"\r\n\r\n" not in buffer:
                data = await stream.receive_some(65536)
                if not data:
                    raise trio.BrokenResourceError("connection closed inside the response head")
                buffer += data
            header_block, _, body_start = buffer.partition(b"\r\n\r\n")
            lines = header_block.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            length: int | None = None
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
                if name.strip().lower() == "transfer-encoding":
                    raise ValueError("chunked responses are not supported by this reader")
            received = len(body_start)
            while length is None or received < length:
                data = await stream.receive_some(1024 * 1024)
                if not data:
                    break  # closed: short if Content-Length said more
                received += len(data)
    return DownloadResult(status=status, body_bytes=received, seconds=time.perf_counter() - started)

"""``benchmarks/run.py engine``: ptth's HTTP/2 driver against the minimal h2 pair, side by side.

Two implementations of the same exchange, each a server process and a client process joined by
one TCP connection on 127.0.0.1:

* **A, the pair**: the least Python that can speak HTTP/2 with python-hyper h2: blocking sockets
  (each process owns one socket, so no selector is needed; blocking calls beat an event loop's
  readiness round trips), one ``recv_into`` and one ``sendall`` per batch of events (bulk output:
  one per 512 KiB), every h2 validation and normalisation off, the handler inline in the event
  loop. Windows of 16 MiB (connection and stream) and 256 KiB frames. It is the physical limit of
  this stack: what h2 itself costs, plus the sockets.
* **B, ptth**: ``ptth.driver.Connection`` on each side (anyio; run under trio, asyncio and, if
  installed, uvloop): the server's handler runs in a task per stream, the client opens a stream
  per request.
* **before**: the tunnel driver before the rewrite, ``ptth._tunnel.TunnelConnection`` (trio
  only), from a checkout of an older commit (``--before-tree PATH``, by default a ``wt-before``
  worktree beside this checkout if there is one: ``git worktree add ../wt-before e9de2c4``). Its
  children run with ``PYTHONPATH=<that tree>``, the same handler and client code and the old
  default settings; the harness refuses to run it if ``ptth`` resolves to this tree. The table
  then shows after/before too (B under trio against it, the same event loop).

Both serve ``GET /`` with ``:status 200`` and the 3-byte body ``bar``, and ``GET /bulk/N`` with N
bytes. Figures, per implementation: requests/s with 1, 10 and 100 streams kept in flight for a
fixed time; the round trip of one stream at a time (p50, p99: the latencies of the 1-stream run);
MB/s (10^6 bytes/s) of one stream's bulk download, read and discarded as it arrives (so flow
control runs). Every figure is measured for every implementation in turn (A B B B, then the same
reversed), each round on a fresh connection after a warm-up, and the table shows the median of
the rounds; the machine may be shared and noisy, so the CPU each side spent per request (or per
GB) is printed too: it moves much less with the neighbours' load than the rates do.

    .venv/bin/python benchmarks/run.py engine            # 5 rounds, about 100 s
    .venv/bin/python benchmarks/run.py engine --quick    # 1 round, about 15 s
    .venv/bin/python benchmarks/run.py engine --json -   # JSON on stdout, the table on stderr
    .venv/bin/python benchmarks/run.py engine --before-tree ../wt-before   # with "before"

The same file is the child processes' program (``serve``/``client``), and ``profile`` runs py-spy
on ptth's server and client at 100 streams (``benchmarks/engine.py profile --help``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import json
import math
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import anyio
import h2.config
import h2.connection
import h2.events
import h2.settings
from hyperframe.frame import DataFrame
from machine import cpu_seconds, machine

ROOT = Path(__file__).resolve().parent.parent
# "before": a checkout of the tunnel driver before the rewrite, if none is named (--before-tree)
DEFAULT_BEFORE_TREE = ROOT.parent / "wt-before"
BEFORE_MODULE = Path("ptth") / "_tunnel.py"  # what makes a tree the old driver's
KiB = 1024
MiB = 1024 * KiB
FRAME = 256 * KiB  # the pair's max frame size, and the chunk both servers send bulk in
WINDOW = 16 * MiB  # the pair's connection and stream windows
MAX_STREAMS = 1000  # the pair's SETTINGS_MAX_CONCURRENT_STREAMS, as ptth's
RECV_SIZE = 1 * MiB
# Bulk output leaves in sendall calls of 512 KiB, not a window's worth at once. Measured, server
# CPU per GB: 0.7 s at 256-512 KiB, 2.8 s at 1-2 MiB, 1.1 s at 16 MiB; the difference is glibc
# mapping and unmapping h2's big output buffers (gone with MALLOC_MMAP_THRESHOLD_ raised).
SEND_BATCH = 512 * KiB
CHUNK = b"\x5a" * FRAME
REQUEST = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"bench")]
RESPONSE = [(b":status", b"200")]
BODY = b"bar"
BULK = b"/bulk/"
START_TIMEOUT = 30.0
STREAM_COUNTS = (1, 10, 100)


def bulk_request(size: int) -> list[tuple[bytes, bytes]]:
    return [(name, BULK + str(size).encode() if name == b":path" else v) for name, v in REQUEST]


def percentile(sorted_values: list[int], pct: float) -> float:
    """Nearest rank (as in benchmarks/run.py)."""
    if not sorted_values:
        return math.nan
    rank = math.ceil(pct / 100.0 * len(sorted_values))
    return sorted_values[min(max(rank, 1), len(sorted_values)) - 1]


def rps_result(latencies: list[int], seconds: float, ok: bool, completed: int) -> dict[str, Any]:
    """``latencies``: the measured window's; ``completed``: every request, warm-up included."""
    latencies.sort()
    return {
        "requests": len(latencies),
        "completed": completed,
        "seconds": seconds,
        "rps": len(latencies) / seconds if seconds > 0 else 0.0,
        "p50_us": percentile(latencies, 50) / 1000,
        "p99_us": percentile(latencies, 99) / 1000,
        "ok": ok,
    }


# -- A: the minimal h2 pair ---------------------------------------------------------------------


def pair_connection(client_side: bool) -> h2.connection.H2Connection:
    # hyperframe's DATA repr serialises the frame to show 10 bytes; h2 asks for it on every frame
    # it receives (for a trace line nobody logs). ptth cheapens it the same way.
    DataFrame._body_repr = lambda self: f"<{len(self.data)} bytes>"  # type: ignore[method-assign]
    config = h2.config.H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_inbound_headers=False,
        validate_outbound_headers=False,
        normalize_inbound_headers=False,
        normalize_outbound_headers=False,
    )
    conn = h2.connection.H2Connection(config=config)
    codes = h2.settings.SettingCodes
    local = {
        codes.INITIAL_WINDOW_SIZE: WINDOW,
        codes.MAX_FRAME_SIZE: FRAME,
        codes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
    }
    if client_side:
        local[codes.ENABLE_PUSH] = 0
    conn.local_settings = h2.settings.Settings(client=client_side, initial_values=local)
    conn.max_inbound_frame_size = FRAME  # h2 does not take it from local_settings
    conn.initiate_connection()
    conn.increment_flow_control_window(WINDOW - 65535)
    return conn


def receiver(sock: socket.socket) -> Callable[[], memoryview]:
    """``recv`` into one preallocated buffer, handed to h2 as a view (h2 copies it into its own
    buffer at once): ``sock.recv(1 MiB)`` would allocate 1 MiB per call (measured: +50 us on a
    20 us loopback round trip), ``bytes(view)`` would copy every byte once more."""
    buffer = bytearray(RECV_SIZE)
    view = memoryview(buffer)
    recv_into = sock.recv_into

    def receive() -> memoryview:
        return view[: recv_into(buffer)]

    return receive


def pair_serve_connection(sock: socket.socket) -> None:
    conn = pair_connection(client_side=False)
    receive = receiver(sock)
    sock.sendall(conn.data_to_send())
    requested: dict[int, int] = {}  # stream id -> bulk bytes asked for, until the request ends
    sending: dict[int, int] = {}  # stream id -> bulk bytes still to send
    while data := receive():
        for event in conn.receive_data(data):
            kind = type(event)
            if kind is h2.events.StreamEnded:
                sid = event.stream_id
                conn.send_headers(sid, RESPONSE)
                if sid in requested:
                    sending[sid] = requested.pop(sid)
                else:
                    conn.send_data(sid, BODY, end_stream=True)
            elif kind is h2.events.RequestReceived:
                for name, value in event.headers:
                    if name == b":path" and value.startswith(BULK):
                        requested[event.stream_id] = int(value[len(BULK) :])
            elif kind is h2.events.DataReceived:
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        for sid, left in list(sending.items()):
            framed = 0
            while left and (n := min(left, FRAME, conn.local_flow_control_window(sid))) > 0:
                left -= n
                conn.send_data(sid, CHUNK if n == FRAME else CHUNK[:n], end_stream=not left)
                framed += n
                if framed >= SEND_BATCH:
                    sock.sendall(conn.data_to_send())
                    framed = 0
            sending[sid] = left
            if not left:
                del sending[sid]
        if out := conn.data_to_send():
            sock.sendall(out)


def pair_serve(listener: socket.socket) -> None:
    while True:
        sock, _ = listener.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with sock, contextlib.suppress(ConnectionError):
            pair_serve_connection(sock)


def pair_connect(port: int) -> tuple[socket.socket, h2.connection.H2Connection]:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = pair_connection(client_side=True)
    sock.sendall(conn.data_to_send())
    return sock, conn


def pair_rps(port: int, streams: int, duration: float, warmup: float) -> dict[str, Any]:
    sock, conn = pair_connect(port)
    receive = receiver(sock)
    with sock:
        started: dict[int, int] = {}  # stream id -> perf_counter_ns at send
        latencies: list[int] = []
        completed = body = bad = 0

        def start() -> None:
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, REQUEST, end_stream=True)
            started[sid] = time.perf_counter_ns()

        for _ in range(streams):
            start()
        sock.sendall(conn.data_to_send())
        begin = time.perf_counter_ns() + int(warmup * 1e9)
        end = begin + int(duration * 1e9)
        measuring = stopping = False
        t_begin = t_end = 0
        while started:
            data = receive()
            if not data:
                raise ConnectionError("the pair server closed the connection")
            now = time.perf_counter_ns()
            if measuring and now >= end:
                measuring, stopping, t_end = False, True, now
            elif not measuring and not stopping and now >= begin:
                measuring, t_begin = True, now
            for event in conn.receive_data(data):
                kind = type(event)
                if kind is h2.events.DataReceived:
                    body += len(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif kind is h2.events.StreamEnded:
                    completed += 1
                    t0 = started.pop(event.stream_id)
                    if measuring:
                        latencies.append(now - t0)
                    if not stopping:
                        start()
                elif kind is h2.events.ResponseReceived:
                    bad += event.headers[0] != RESPONSE[0]
                elif kind in (h2.events.StreamReset, h2.events.ConnectionTerminated):
                    raise ConnectionError(f"unexpected {event}")
            if out := conn.data_to_send():
                sock.sendall(out)
    ok = not bad and body == 3 * completed
    return rps_result(latencies, (t_end - t_begin) / 1e9, ok, completed)


def pair_bulk(port: int, size: int) -> dict[str, Any]:
    sock, conn = pair_connect(port)
    receive = receiver(sock)
    with sock:
        result: dict[str, Any] = {}
        for label, n in (("warmup", max(size // 16, 4 * MiB)), ("bulk", size)):
            t0 = time.perf_counter()
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, bulk_request(n), end_stream=True)
            sock.sendall(conn.data_to_send())
            received, ended, status = 0, False, b""
            while not ended:
                data = receive()
                if not data:
                    raise ConnectionError("the pair server closed the connection")
                for event in conn.receive_data(data):
                    kind = type(event)
                    if kind is h2.events.DataReceived:
                        received += len(event.data)
                        conn.acknowledge_received_data(event.flow_controlled_length, sid)
                    elif kind is h2.events.StreamEnded:
                        ended = True
                    elif kind is h2.events.ResponseReceived:
                        status = dict(event.headers)[b":status"]
                if out := conn.data_to_send():
                    sock.sendall(out)
            seconds = time.perf_counter() - t0
            if label == "bulk":
                result = bulk_result(received, seconds, status == b"200" and received == n, size)
    return result


def bulk_result(received: int, seconds: float, ok: bool, size: int) -> dict[str, Any]:
    total = received + max(size // 16, 4 * MiB)  # with the warm-up's bytes
    mb_s = received / seconds / 1e6
    return {"bytes": received, "total_bytes": total, "seconds": seconds, "mb_s": mb_s, "ok": ok}


# -- B: ptth.driver.Connection, and "before": ptth._tunnel.TunnelConnection ----------------------


class H2Stream(Protocol):
    """What the handler and the client use of a stream: ``ptth.driver.Stream`` and the old
    ``ptth._stream.TunnelStream`` have the same calls."""

    async def receive_headers(self) -> list[tuple[bytes, bytes]]: ...
    async def receive_data(self) -> bytes: ...
    async def send_headers(self, headers: list[tuple[bytes, bytes]]) -> None: ...
    async def send_data(self, data: bytes, *, end_stream: bool = False) -> None: ...
    async def aclose(self) -> None: ...


class H2Client(Protocol):
    async def open_stream(
        self, headers: list[tuple[bytes, bytes]], *, end_stream: bool = False
    ) -> H2Stream: ...


async def ptth_handler(stream: H2Stream) -> None:
    headers = await stream.receive_headers()
    while await stream.receive_data():
        pass
    await stream.send_headers(RESPONSE)
    path = next((v for n, v in headers if n == b":path"), b"/")
    if not path.startswith(BULK):
        await stream.send_data(BODY, end_stream=True)
        return
    left = int(path[len(BULK) :])
    while left > FRAME:
        await stream.send_data(CHUNK)
        left -= FRAME
    await stream.send_data(CHUNK[:left], end_stream=True)


async def ptth_serve() -> None:
    import ptth
    from ptth.driver import Connection

    async def serve(byte_stream: anyio.abc.ByteStream) -> None:
        async with byte_stream:
            try:
                await Connection(byte_stream, client_side=False, on_stream=ptth_handler).run()
            except Exception:
                traceback.print_exc()  # shown by the harness if a measurement fails

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    print(f"@port {port} {ptth.__file__}", flush=True)
    await listener.serve(serve)


async def ptth_command(port: int, command: dict[str, Any]) -> dict[str, Any]:
    from ptth.driver import Connection

    byte_stream = await anyio.connect_tcp("127.0.0.1", port)
    with anyio.fail_after(command["timeout"]):
        async with byte_stream, anyio.create_task_group() as tg:
            conn = Connection(byte_stream, client_side=True)
            await tg.start(conn.run)
            try:
                return await client_command(conn, command)
            finally:
                await conn.aclose()


async def client_command(conn: H2Client, command: dict[str, Any]) -> dict[str, Any]:
    if command["op"] == "rps":
        streams, duration, warmup = command["streams"], command["duration"], command["warmup"]
        return await ptth_rps(conn, streams, duration, warmup)
    return await ptth_bulk(conn, command["size"])


async def before_serve() -> None:
    """The old driver's server: ``trio.serve_tcp``, a TunnelConnection per connection (its
    handlers run in its own nursery, each stream closed by it after the handler returns)."""
    import functools

    import trio
    from ptth._h2 import H2Settings
    from ptth._tunnel import TunnelConnection

    import ptth

    async def serve(byte_stream: trio.SocketStream) -> None:
        conn = TunnelConnection(
            byte_stream, client_side=False, on_stream=ptth_handler, settings=H2Settings()
        )
        try:
            await conn.run()
        except Exception:
            traceback.print_exc()  # shown by the harness if a measurement fails

    async with trio.open_nursery() as nursery:
        serving = functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1")
        listeners = await nursery.start(serving)
        port = listeners[0].socket.getsockname()[1]
        print(f"@port {port} {ptth.__file__}", flush=True)


async def before_command(port: int, command: dict[str, Any]) -> dict[str, Any]:
    """The old driver's client, under ``trio.run`` (anyio's calls in ptth_rps run on trio)."""
    import trio
    from ptth._h2 import H2Settings
    from ptth._tunnel import TunnelConnection

    byte_stream = await trio.open_tcp_stream("127.0.0.1", port)  # TCP_NODELAY, as trio does
    with trio.fail_after(command["timeout"]):
        async with byte_stream, trio.open_nursery() as nursery:
            conn = TunnelConnection(byte_stream, client_side=True, settings=H2Settings())
            await nursery.start(conn.run)
            try:
                await conn.wait_remote_settings()
                return await client_command(conn, command)
            finally:
                await conn.aclose()


async def ptth_rps(conn: H2Client, streams: int, duration: float, warmup: float) -> dict[str, Any]:
    latencies: list[int] = []
    state = {"measuring": False, "stopping": False, "completed": 0, "body": 0, "bad": 0}

    async def worker() -> None:
        while not state["stopping"]:
            t0 = time.perf_counter_ns()
            stream = await conn.open_stream(REQUEST, end_stream=True)
            headers = await stream.receive_headers()
            body = 0
            while chunk := await stream.receive_data():
                body += len(chunk)
            t1 = time.perf_counter_ns()
            await stream.aclose()
            state["completed"] += 1
            state["body"] += body
            state["bad"] += headers[0] != RESPONSE[0]
            if state["measuring"]:
                latencies.append(t1 - t0)

    async with anyio.create_task_group() as tg:
        for _ in range(streams):
            tg.start_soon(worker)
        await anyio.sleep(warmup)
        state["measuring"], t_begin = True, time.perf_counter()
        await anyio.sleep(duration)
        state["measuring"], state["stopping"], t_end = False, True, time.perf_counter()
    ok = not state["bad"] and state["body"] == 3 * state["completed"]
    return rps_result(latencies, t_end - t_begin, ok, state["completed"])


async def ptth_bulk(conn: H2Client, size: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for label, n in (("warmup", max(size // 16, 4 * MiB)), ("bulk", size)):
        t0 = time.perf_counter()
        stream = await conn.open_stream(bulk_request(n), end_stream=True)
        headers = await stream.receive_headers()
        received = 0
        while chunk := await stream.receive_data():
            received += len(chunk)
        seconds = time.perf_counter() - t0
        await stream.aclose()
        if label == "bulk":
            ok = headers[0] == RESPONSE[0] and received == n
            result = bulk_result(received, seconds, ok, size)
    return result


# -- the child processes -------------------------------------------------------------------------


def backend_options(backend: str) -> tuple[str, dict[str, Any]]:
    if backend == "uvloop":
        return "asyncio", {"use_uvloop": True}
    return backend, {}


def child_serve(impl: str) -> None:
    """Print ``@port N`` (and, but for the pair's, the file ``ptth`` was imported from)."""
    if impl == "pair":
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(16)
            print(f"@port {listener.getsockname()[1]}", flush=True)
            pair_serve(listener)
    elif impl == "before":
        import trio

        trio.run(before_serve)  # glibc's allocator as it was then: the old code did not tune it
    else:
        from ptth.allocator import tune_allocator

        tune_allocator()  # as python -m ptth and python -m router do
        name, options = backend_options(impl)
        anyio.run(ptth_serve, backend=name, backend_options=options)


def child_client(impl: str, port: int) -> None:
    """Read one JSON command per line on stdin, answer each with one ``@result`` line."""
    ready = "@ready"
    if impl == "before":
        import ptth._tunnel  # fail here, before "ready", if it does not import

        ready += f" {ptth.__file__}"
    elif impl != "pair":
        import ptth.driver  # fail here, before "ready", if it does not import
        from ptth.allocator import tune_allocator

        tune_allocator()  # as python -m ptth and python -m router do
        ready += f" {ptth.__file__}"
    print(ready, flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        try:
            if impl == "pair" and command["op"] == "rps":
                result = pair_rps(port, command["streams"], command["duration"], command["warmup"])
            elif impl == "pair":
                result = pair_bulk(port, command["size"])
            elif impl == "before":
                import trio

                result = trio.run(before_command, port, command)
            else:
                name, options = backend_options(impl)
                result = anyio.run(
                    ptth_command, port, command, backend=name, backend_options=options
                )
        except Exception:
            result = {"error": traceback.format_exc()}
        print("@result " + json.dumps(result), flush=True)


# -- the harness ---------------------------------------------------------------------------------


class Worker:
    """A child running this file; a thread queues its ``@`` lines and keeps the last 100 others."""

    def __init__(self, name: str, args: list[str], tree: Path = ROOT) -> None:
        """``tree``: the checkout ``import ptth`` must find (first on ``PYTHONPATH``)."""
        self.name = name
        self.lines: collections.deque[str] = collections.deque(maxlen=100)
        self.messages: queue.Queue[str] = queue.Queue()
        path = os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), *args],
            cwd=ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("@"):
                self.messages.put(line[1:].rstrip("\n"))
            else:
                self.lines.append(line.rstrip("\n"))

    def expect(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                message = self.messages.get(timeout=0.05)
                if message.startswith(prefix):
                    return message[len(prefix) :].strip()
            if self.proc.poll() is not None and self.messages.empty():
                self._reader.join(timeout=1)
                if self.messages.empty():
                    raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail}")
        raise TimeoutError(f"{self.name}: no {prefix!r} within {timeout:g} s\n{self.tail}")

    @property
    def tail(self) -> str:
        return "\n".join(self.lines)

    def request(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        result: dict[str, Any] = json.loads(self.expect("result", timeout))
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=2)
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()


@contextlib.contextmanager
def worker(name: str, args: list[str], tree: Path = ROOT) -> Iterator[Worker]:
    w = Worker(name, args, tree)
    try:
        yield w
    finally:
        w.stop()


def busy_seconds() -> float:
    """CPU time every process on the machine used so far (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


@dataclass
class Impl:
    name: str  # "pair", "before", or an anyio backend for ptth: "trio", "asyncio", "uvloop"
    label: str
    tree: Path = ROOT  # where the children import ptth from
    server: Worker | None = None
    client: Worker | None = None
    ptth_file: str = ""  # ptth.__file__ in the children (but the pair's)

    def measure(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.server is not None and self.client is not None
        pids = (self.server.pid, self.client.pid)
        cpu = [cpu_seconds(pid) for pid in pids]
        busy, t0 = busy_seconds(), time.perf_counter()
        result = self.client.request(dict(command, timeout=timeout), timeout + 10)
        wall = time.perf_counter() - t0
        used = [cpu_seconds(pid) - before for pid, before in zip(pids, cpu, strict=True)]
        if "error" in result:
            raise RuntimeError(
                f"{self.label}: {command['op']} failed in the client:\n{result['error']}\n"
                f"server output:\n{self.server.tail}"
            )
        if not result["ok"]:
            raise RuntimeError(f"{self.label}: wrong responses in {command}: {result}")
        result["cpu_server"], result["cpu_client"] = used[0] / wall, used[1] / wall
        result["cpu_server_s"], result["cpu_client_s"] = used
        result["cpu_other"] = max(0.0, busy_seconds() - busy - sum(used)) / wall
        return result


@dataclass(frozen=True)
class Sizes:
    rounds: int
    duration: float  # seconds per requests/s figure
    warmup: float
    bulk: int  # bytes


FULL = Sizes(rounds=5, duration=1.0, warmup=0.25, bulk=256 * MiB)
QUICK = Sizes(rounds=1, duration=0.5, warmup=0.1, bulk=64 * MiB)

# figure -> (title, unit, which way is better)
FIGURES = {
    "rps1": ("req/s, 1 stream", "req/s", "higher"),
    "rps10": ("req/s, 10 streams", "req/s", "higher"),
    "rps100": ("req/s, 100 streams", "req/s", "higher"),
    "rtt_p50": ("round trip p50, 1 stream", "us", "lower"),
    "rtt_p99": ("round trip p99, 1 stream", "us", "lower"),
    "bulk": ("bulk, 1 stream", "MB/s", "higher"),
}


@dataclass(frozen=True)
class Target:
    text: str
    ratio: float | None = None  # B/A must be >= (higher is better) or <= (lower) this
    absolute: float | None = None  # B itself must be >= this

    def met(self, figure: str, value: float, ratio: float) -> bool:
        if self.absolute is not None:
            return value >= self.absolute
        assert self.ratio is not None
        return ratio <= self.ratio if FIGURES[figure][2] == "lower" else ratio >= self.ratio


TARGETS = {
    "rps10": Target(">= 0.85x", ratio=0.85),
    "rps100": Target(">= 0.85x", ratio=0.85),
    "rtt_p50": Target("<= 1.2x", ratio=1.2),
    "bulk": Target(">= 1,200 MB/s", absolute=1200.0),
}


@dataclass
class Results:
    impls: list[Impl]
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # impl, figure
    cpu: dict[str, dict[str, list[tuple[float, float]]]] = field(default_factory=dict)
    # CPU per unit of work, server and client: us per request, or s per GB of bulk
    cost: dict[str, dict[str, list[tuple[float, float]]]] = field(default_factory=dict)
    other: list[float] = field(default_factory=list)

    def add(self, impl: str, figure: str, value: float, result: dict[str, Any]) -> None:
        self.samples.setdefault(impl, {}).setdefault(figure, []).append(value)
        if figure.startswith("rtt"):
            return  # the 1-stream run's, already counted under rps1
        self.cpu.setdefault(impl, {}).setdefault(figure, []).append(
            (result["cpu_server"], result["cpu_client"])
        )
        if figure == "bulk":
            unit = 1e9 / result["total_bytes"]
        else:
            unit = 1e6 / max(result["completed"], 1)
        self.cost.setdefault(impl, {}).setdefault(figure, []).append(
            (result["cpu_server_s"] * unit, result["cpu_client_s"] * unit)
        )
        self.other.append(result["cpu_other"])

    def median_pair(
        self, table: dict[str, dict[str, list[tuple[float, float]]]], impl: str, figure: str
    ) -> tuple[float, float]:
        values = table[impl][figure]
        return statistics.median(v for v, _ in values), statistics.median(v for _, v in values)

    def median(self, impl: str, figure: str) -> float:
        return statistics.median(self.samples[impl][figure])


def measure_round(
    results: Results, sizes: Sizes, order: list[Impl], settle: Callable[[], None], out: Any
) -> None:
    """Each figure for every implementation in turn (so A and B see the same machine)."""
    for streams in STREAM_COUNTS:
        settle()
        command = {"op": "rps", "streams": streams, "duration": sizes.duration}
        command["warmup"] = sizes.warmup
        parts = []
        for impl in order:
            r = impl.measure(command, timeout=sizes.duration + sizes.warmup + 30)
            results.add(impl.name, f"rps{streams}", r["rps"], r)
            if streams == 1:
                results.add(impl.name, "rtt_p50", r["p50_us"], r)
                results.add(impl.name, "rtt_p99", r["p99_us"], r)
            parts.append(f"{impl.name} {r['rps']:,.0f}")
        print(f"  req/s at {streams:>3} streams: {', '.join(parts)}", file=out, flush=True)
    settle()
    parts = []
    for impl in order:
        r = impl.measure({"op": "bulk", "size": sizes.bulk}, timeout=60 + sizes.bulk / 20e6)
        results.add(impl.name, "bulk", r["mb_s"], r)
        parts.append(f"{impl.name} {r['mb_s']:,.0f}")
    print(f"  bulk MB/s: {', '.join(parts)}", file=out, flush=True)


def other_load(seconds: float) -> float:
    """Share of a core that processes other than ours used over the next ``seconds``."""
    me = os.getpid()
    ours = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    ours = [pid for pid in ours if pid == me or parent_pid(pid) == me]

    def used() -> float:
        total = 0.0
        for pid in ours:
            with contextlib.suppress(OSError):
                total += cpu_seconds(pid)
        return total

    before, busy = used(), busy_seconds()
    time.sleep(seconds)
    return max(0.0, busy_seconds() - busy - (used() - before)) / seconds


def parent_pid(pid: int) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[1])
    return 0


def wait_idle(limit: float, out: Any) -> None:
    """Wait up to ``limit`` s for 1 s in a row where other processes use < 15 % of a core."""
    deadline = time.monotonic() + limit
    other = 0.0
    while time.monotonic() < deadline:
        other = other_load(0.5)
        if other < 0.15 and (other := other_load(0.5)) < 0.15:
            return
    print(f"  (machine still busy: other processes at {other * 100:.0f}%)", file=out, flush=True)


def number(figure: str, value: float) -> str:
    return f"{value:,.1f}" if FIGURES[figure][1] == "us" else f"{value:,.0f}"


AFTER, BEFORE = "trio", "before"  # after/before: ptth under trio over the old driver (trio)
AB_LABEL = "trio/bef"


def after_before(results: Results) -> bool:
    names = {impl.name for impl in results.impls}
    return AFTER in names and BEFORE in names


def report(results: Results, sizes: Sizes, out: Any) -> dict[str, Any]:
    pair, others = results.impls[0], results.impls[1:]
    rounds = f"median of {sizes.rounds} rounds" if sizes.rounds > 1 else "1 round"
    print(
        f"\nengine: A = minimal h2 pair (blocking sockets), B = ptth.driver.Connection; {rounds}, "
        f"{sizes.duration:g} s per req/s figure, {sizes.bulk // MiB} MiB bulk",
        file=out,
    )
    before = next((impl for impl in others if impl.name == BEFORE), None)
    if before is not None:
        print(
            f"before = ptth._tunnel.TunnelConnection at {tree_commit(before.tree)} (trio, "
            f"H2Settings()), from {before.tree}",
            file=out,
        )
    ab = after_before(results)
    header = f"{'figure':<26} {'unit':<6} {pair.label:>12}"
    for impl in others:
        header += f" {impl.label:>14} {'B/A':>5}     "
    if ab:
        header += f" {AB_LABEL:>9}"
    print(header + "  target (B)", file=out)
    summary: dict[str, Any] = {}
    after_over_before: dict[str, Any] = {}
    for figure, (title, unit, _) in FIGURES.items():
        base = results.median(pair.name, figure)
        line = f"{title:<26} {unit:<6} {number(figure, base):>12}"
        target = TARGETS.get(figure)
        for impl in others:
            value = results.median(impl.name, figure)
            ratio = value / base if base else math.nan
            verdict = ""
            if target is not None and impl.name != BEFORE:  # the targets are the product's
                verdict = "ok" if target.met(figure, value, ratio) else "MISS"
            line += f" {number(figure, value):>14} {ratio:>5.2f} {verdict:<4}"
            summary.setdefault(impl.name, {})[figure] = {
                "value": value,
                "ratio": ratio,
                "target": target.text if verdict else None,
                "met": verdict == "ok" if verdict else None,
            }
        if ab:
            old = results.median(BEFORE, figure)
            after_over_before[figure] = results.median(AFTER, figure) / old if old else math.nan
            line += f" {after_over_before[figure]:>9.2f}"
        print(f"{line}  {target.text if target else ''}".rstrip(), file=out)
    if ab:
        print(
            f"{AB_LABEL}: B under trio over before (same loop); above 1 is faster for req/s and "
            "MB/s, below 1 is better for round trips and CPU",
            file=out,
        )
    cpu_after_over_before = print_cpu(results, out)
    other = max(results.other, default=0.0)
    if other > 0.25:
        print(
            f"\nWARNING: other processes used up to {other * 100:.0f}% of a core during the "
            "measurements; the numbers are not from a quiet machine",
            file=out,
        )
    data: dict[str, Any] = {
        "machine": machine(),
        "sizes": {
            "rounds": sizes.rounds,
            "duration_s": sizes.duration,
            "warmup_s": sizes.warmup,
            "bulk_bytes": sizes.bulk,
        },
        "implementations": {impl.name: impl.label for impl in results.impls},
        "ptth_files": {impl.name: impl.ptth_file for impl in others},
        "median": {
            impl.name: {f: results.median(impl.name, f) for f in FIGURES} for impl in results.impls
        },
        "samples": results.samples,
        "cpu_server_client": results.cpu,
        "cpu_per_unit_server_client": results.cost,
        "b_over_a": summary,
        "other_cpu_max": other,
    }
    if before is not None:
        data["before"] = {"tree": str(before.tree), "commit": tree_commit(before.tree)}
    if ab:
        data["after_over_before"] = {
            "median": after_over_before,
            "cpu_per_unit": cpu_after_over_before,
        }
    return data


COST_ROWS = {
    "rps1": "CPU us per request, 1 stream",
    "rps10": "CPU us per request, 10 str.",
    "rps100": "CPU us per request, 100 str.",
    "bulk": "CPU s per GB of bulk",
}


def print_cpu(results: Results, out: Any) -> dict[str, float]:
    """CPU per unit of work (server + client): unlike rates, hardly moved by a busy machine.

    Returns after/before of the sums per figure (empty without both trio and before)."""
    pair, others = results.impls[0], results.impls[1:]
    ab = after_before(results)
    print(
        "\nCPU per unit of work, server + client (median; a busy machine moves it much less "
        "than the rates above):",
        file=out,
    )
    header = f"{'':<30} {pair.label:>16}"
    for impl in others:
        header += f" {impl.label:>16} {'B/A':>5}"
    if ab:
        header += f" {AB_LABEL:>9}"
    print(header, file=out)
    after_over_before: dict[str, float] = {}
    for figure, title in COST_ROWS.items():
        base = sum(results.median_pair(results.cost, pair.name, figure))
        line = f"{title:<30} {cost_text(results, pair.name, figure):>16}"
        for impl in others:
            total = sum(results.median_pair(results.cost, impl.name, figure))
            line += f" {cost_text(results, impl.name, figure):>16} {total / base:>5.2f}"
        if ab:
            after = sum(results.median_pair(results.cost, AFTER, figure))
            after_over_before[figure] = after / sum(
                results.median_pair(results.cost, BEFORE, figure)
            )
            line += f" {after_over_before[figure]:>9.2f}"
        print(line, file=out)
    print("share of a core used (server + client):", file=out)
    for impl in results.impls:
        parts = []
        for figure in COST_ROWS:
            server, client = results.median_pair(results.cpu, impl.name, figure)
            parts.append(f"{figure} {server * 100:.0f}+{client * 100:.0f}%")
        print(f"  {impl.label:<14} {', '.join(parts)}", file=out)
    return after_over_before


def cost_text(results: Results, impl: str, figure: str) -> str:
    server, client = results.median_pair(results.cost, impl, figure)
    if figure == "bulk":
        return f"{server:.2f}+{client:.2f}"
    return f"{server:.0f}+{client:.0f}"


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwind through the ExitStack, which stops every child


def available_backends() -> list[str]:
    backends = ["trio", "asyncio"]
    if importlib.util.find_spec("uvloop") is not None:
        backends.append("uvloop")
    return backends


def start(impls: list[Impl], stack: contextlib.ExitStack) -> None:
    for impl in impls:
        args = ["serve", impl.name]
        impl.server = stack.enter_context(worker(f"{impl.label} server", args, impl.tree))
    for impl in impls:
        assert impl.server is not None
        port, _, server_file = impl.server.expect("port", START_TIMEOUT).partition(" ")
        check_ptth_file(impl, "server", server_file)
        args = ["client", impl.name, port]
        impl.client = stack.enter_context(worker(f"{impl.label} client", args, impl.tree))
    for impl in impls:
        assert impl.client is not None
        impl.ptth_file = impl.client.expect("ready", START_TIMEOUT)
        check_ptth_file(impl, "client", impl.ptth_file)


def check_ptth_file(impl: Impl, role: str, ptth_file: str) -> None:
    """``before`` must run the old tree's code: refuse it if ``ptth`` came from anywhere else."""
    if impl.name != "before":
        return
    where = Path(ptth_file).resolve()
    if not where.is_relative_to(impl.tree.resolve()) or where.is_relative_to(ROOT / "ptth"):
        raise RuntimeError(
            f"before {role}: ptth was imported from {ptth_file or '?'}, not from the before tree "
            f"{impl.tree} (it must not be this checkout, {ROOT})"
        )


def before_tree(path: Path | None) -> Path | None:
    """The tree ``before`` imports ptth from: ``path``, else DEFAULT_BEFORE_TREE if it exists."""
    if path is None:
        if not (DEFAULT_BEFORE_TREE / BEFORE_MODULE).is_file():
            return None
        path = DEFAULT_BEFORE_TREE
    path = path.resolve()
    if not (path / BEFORE_MODULE).is_file():
        raise ValueError(f"{path} has no {BEFORE_MODULE}: not a checkout of the old driver")
    if path == ROOT:
        raise ValueError(f"the before tree {path} is this checkout")
    return path


def tree_commit(tree: Path) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if done.returncode == 0:
            return done.stdout.strip()
    return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="run.py engine", description="ptth's driver vs the minimal h2 pair, side by side."
    )
    parser.add_argument("--quick", action="store_true", help="1 round, 0.5 s, 64 MiB (~15 s)")
    parser.add_argument("--rounds", type=int, help=f"rounds, median reported ({FULL.rounds})")
    parser.add_argument("--duration", type=float, help=f"s per req/s figure ({FULL.duration:g})")
    parser.add_argument("--bulk-mib", type=int, help=f"bulk MiB ({FULL.bulk // MiB})")
    parser.add_argument(
        "--backends",
        help="what to run beside the pair, comma-separated: anyio backends for ptth, and "
        f"'before' (default: {','.join(available_backends())}, after 'before' if there is a "
        "before tree)",
    )
    parser.add_argument(
        "--before-tree",
        type=Path,
        metavar="PATH",
        help="checkout of the old driver (ptth._tunnel) that 'before' imports ptth from "
        f"(default: {DEFAULT_BEFORE_TREE} if it exists)",
    )
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON ('-': stdout)")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each figure, wait up to this long for other processes to go quiet",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    base = QUICK if args.quick else FULL
    sizes = Sizes(
        rounds=args.rounds or base.rounds,
        duration=args.duration or base.duration,
        warmup=base.warmup,
        bulk=args.bulk_mib * MiB if args.bulk_mib else base.bulk,
    )
    out = sys.stderr if args.json == "-" else sys.stdout
    try:
        tree = before_tree(args.before_tree)
    except ValueError as exc:
        parser.error(str(exc))
    backends = args.backends or ",".join(["before"] * bool(tree) + available_backends())
    impls = [Impl("pair", "A: h2 pair")]
    for backend in backends.split(","):
        if backend == "before":
            if tree is None:
                parser.error(f"'before' needs --before-tree (no {DEFAULT_BEFORE_TREE})")
            impls.append(Impl("before", "before", tree=tree))
        elif backend in ("trio", "asyncio", "uvloop"):
            impls.append(Impl(backend, f"B: {backend}"))
        else:
            parser.error(f"unknown backend {backend!r}")
    print(f"machine: {machine()}", file=out)
    results = Results(impls)

    def settle() -> None:
        if args.wait_idle > 0:
            wait_idle(args.wait_idle, out)

    with contextlib.ExitStack() as stack:
        start(impls, stack)
        for impl in impls:
            if impl.name == "before":
                print(f"before: ptth from {impl.ptth_file} ({tree_commit(impl.tree)})", file=out)
        for i in range(sizes.rounds):
            print(f"round {i + 1} of {sizes.rounds}", file=out, flush=True)
            order = impls if i % 2 == 0 else impls[::-1]
            measure_round(results, sizes, order, settle, out)
    data = report(results, sizes, out)
    if args.json == "-":
        print(json.dumps(data, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    return 0


# -- py-spy --------------------------------------------------------------------------------------


def summarise_profile(path: Path, top: int) -> str:
    """Top functions of a py-spy ``--format raw`` file: own time, by package, ptth.* cumulative.

    py-spy counts samples where the process was on a CPU (idle stacks are left out), so shares
    are of the CPU time the process used.
    """
    own: collections.Counter[str] = collections.Counter()
    cumulative: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    total = in_h2 = threads = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # "func (pkg/module.py:123)" -> "func (pkg/module.py)": a function, not a line
        frames = [f.rsplit(":", 1)[0] + ")" if ":" in f else f for f in stack.split(";")]
        if frames[0].startswith("Thread._bootstrap"):
            threads += count  # e.g. asyncio's idle resolver thread, which py-spy calls busy
            continue
        total += count
        own[frames[-1]] += count
        packages[package(frames[-1])] += count
        for frame in set(frames):
            cumulative[frame] += count
        if any(package(f) in H2_PACKAGES for f in frames):
            in_h2 += count
    total = total or 1
    lines = [f"{path.name}: {total} samples on CPU in the main thread ({threads} elsewhere)"]
    lines.append("  own time by package:")
    lines += [f"    {c / total * 100:5.1f}%  {name}" for name, c in packages.most_common(8)]
    lines.append(f"  inside h2 calls (h2, hpack, hyperframe; cumulative): {in_h2 / total:.1%}")
    lines.append(f"  top {top} functions by own time:")
    lines += [f"    {c / total * 100:5.1f}%  {frame}" for frame, c in own.most_common(top)]
    lines.append(f"  top {top} ptth.* functions by cumulative time:")
    ptth = [(f, c) for f, c in cumulative.most_common() if package(f) == "ptth"]
    lines += [f"    {c / total * 100:5.1f}%  {frame}" for frame, c in ptth[:top]]
    return "\n".join(lines)


H2_PACKAGES = frozenset({"h2", "hpack", "hyperframe"})


def package(frame: str) -> str:
    """'decode (hpack/hpack.py)' -> 'hpack'; a module of the standard library is itself."""
    where = frame.rpartition(" (")[2].rstrip(")")
    return where.split("/", 1)[0] if "/" in where else where


def profile(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="engine.py profile", description="py-spy on ptth's server and client under load."
    )
    parser.add_argument(
        "--backend", default="trio", choices=["trio", "asyncio", "uvloop", "pair", "before"]
    )
    parser.add_argument("--before-tree", type=Path, metavar="PATH", help="for --backend before")
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--bulk", action="store_true", help="profile bulk downloads instead")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("/tmp/ptth-engine-profile"))
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    args.out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _terminated)
    impl = Impl(args.backend, args.backend)
    if args.backend == "before":
        try:
            tree = before_tree(args.before_tree)
        except ValueError as exc:
            parser.error(str(exc))
        if tree is None:
            parser.error(f"--backend before needs --before-tree (no {DEFAULT_BEFORE_TREE})")
        impl.tree = tree
    with contextlib.ExitStack() as stack:
        start([impl], stack)
        assert impl.server is not None and impl.client is not None
        warmup = {"op": "rps", "streams": args.streams, "duration": 0.5, "warmup": 0.0}
        impl.measure(warmup, timeout=30)  # imports, first connection: not in the profile
        spies = []
        for role, pid in (("server", impl.server.pid), ("client", impl.client.pid)):
            raw = args.out / f"{args.backend}-{role}.txt"
            spy_args = [py_spy, "record", "--pid", str(pid), "--format", "raw", "--output"]
            spy_args += [str(raw), "--duration", str(int(args.seconds)), "--rate", "200"]
            spy = subprocess.Popen(spy_args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            stack.callback(lambda p=spy: (p.poll() is None and p.kill(), p.wait()))
            spies.append((spy, raw))
        time.sleep(0.5)  # py-spy attaches
        if args.bulk:
            size = int(args.seconds * 800e6) // FRAME * FRAME
            command: dict[str, Any] = {"op": "bulk", "size": size}
        else:
            command = {"op": "rps", "streams": args.streams, "duration": args.seconds + 1}
            command["warmup"] = 0.0
        result = impl.measure(command, timeout=args.seconds + 60)
        print(json.dumps(result), flush=True)
        for spy, raw in spies:
            _, err = spy.communicate(timeout=args.seconds + 30)
            if spy.returncode != 0 or not raw.exists():
                print(f"py-spy failed ({spy.returncode}): {err.decode()}", file=sys.stderr)
                return 1
            print(summarise_profile(raw, args.top), flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "serve":
        child_serve(sys.argv[2])
    elif len(sys.argv) >= 4 and sys.argv[1] == "client":
        child_client(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) >= 2 and sys.argv[1] == "profile":
        sys.exit(profile(sys.argv[2:]))
    else:
        sys.exit(main(sys.argv[1:]))

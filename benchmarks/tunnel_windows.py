"""How HTTP/2 window and frame sizes bound one tunnel's bulk throughput.

Two ``ptth.driver.Connection``s (router side = client, backend side = server) over real TCP on
127.0.0.1, no front end, no ASGI: one stream carries N bytes from the backend to the router,
which consumes (and so acknowledges) as fast as it can. Each setting runs in a fresh pair. The
default row is the engine's own: 256 KiB initial stream windows that grow for a consumer that
keeps up (ARCHITECTURE.md, "The engine").

    .venv/bin/python benchmarks/tunnel_windows.py [--mib 256] [--loop trio|asyncio]
"""

from __future__ import annotations

import argparse
import time

import anyio
import anyio.abc

from ptth.driver import Connection, Stream
from ptth.engine import Settings

KiB = 1024
MiB = 1024 * KiB
REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", b"/")]
FIXED = {"stream_window": 4 * MiB, "max_stream_window": 4 * MiB}

SETTINGS = {
    "RFC defaults (64 KiB windows, 16 KiB frames, no growth)": Settings(
        stream_window=65535,
        max_stream_window=65535,
        connection_window=65535,
        max_frame_size=16 * KiB,
    ),
    "fixed 4 MiB / 16 MiB windows, 64 KiB frames": Settings(**FIXED, max_frame_size=64 * KiB),
    "fixed 4 MiB / 16 MiB windows, 256 KiB frames": Settings(**FIXED, max_frame_size=256 * KiB),
    "default: 256 KiB growing to 16 MiB, 256 KiB frames": Settings(),
    "growing to 16 MiB, 1 MiB frames": Settings(max_frame_size=1 * MiB),
}


async def measure(settings: Settings, size: int) -> float:
    chunk = b"\x5a" * (256 * KiB)

    async def serve(stream: Stream) -> None:
        await stream.receive_headers()
        await stream.send_headers([(b":status", b"200")])
        sent = 0
        while sent < size:
            await stream.send_data(chunk[: min(len(chunk), size - sent)])
            sent += min(len(chunk), size - sent)
        await stream.end()

    async with anyio.create_task_group() as group:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        client_sock = await anyio.connect_tcp("127.0.0.1", port)
        server_sock = await listener.listeners[0].accept()
        await listener.aclose()
        server = Connection(server_sock, client_side=False, settings=settings, on_stream=serve)
        client = Connection(client_sock, client_side=True, settings=settings)
        await group.start(server.run)
        await group.start(client.run)
        await client.wait_remote_settings()
        started = time.perf_counter()
        stream = await client.open_stream(REQUEST, end_stream=True)
        await stream.receive_headers()
        received = 0
        while data := await stream.receive_data():
            received += len(data)
        elapsed = time.perf_counter() - started
        assert received == size
        group.cancel_scope.cancel()
    return size / elapsed / 1e6


async def main(size: int) -> None:
    print(f"one stream, {size // MiB} MiB backend -> router over TCP loopback, one tunnel")
    for name, settings in SETTINGS.items():
        rates = [await measure(settings, size) for _ in range(3)]
        print(f"  {name:55s} {sorted(rates)[1]:7.0f} MB/s (median of 3)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="bytes to move per run, in MiB")
    parser.add_argument("--loop", choices=["trio", "asyncio"], default="trio")
    args = parser.parse_args()
    anyio.run(main, args.mib * MiB, backend=args.loop)

"""How HTTP/2 window and frame sizes bound one tunnel's bulk throughput (issue 2, item 4).

Two TunnelConnections (router side = client, backend side = server) over real TCP on
127.0.0.1, no front end, no ASGI: one stream carries N bytes from the backend to the router,
which consumes (and so acknowledges) as fast as it can. Each setting runs in a fresh pair.

    .venv/bin/python benchmarks/tunnel_windows.py [--mib 256]
"""

from __future__ import annotations

import argparse
import time

import trio

from ptth._h2 import H2Settings
from ptth._stream import TunnelStream
from ptth._tunnel import TunnelConnection

KiB = 1024
MiB = 1024 * KiB
REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", b"/")]

SETTINGS = {
    "RFC defaults (64 KiB windows, 16 KiB frames)": H2Settings(
        stream_window=65535, connection_window=65535, max_frame_size=16 * KiB
    ),
    "1 MiB / 4 MiB windows, 16 KiB frames": H2Settings(
        stream_window=1 * MiB, connection_window=4 * MiB, max_frame_size=16 * KiB
    ),
    "4 MiB / 16 MiB windows, 64 KiB frames": H2Settings(max_frame_size=64 * KiB),
    "4 MiB / 16 MiB windows, 256 KiB frames": H2Settings(max_frame_size=256 * KiB),
    "16 MiB / 16 MiB windows, 128 KiB frames": H2Settings(
        stream_window=16 * MiB, connection_window=16 * MiB, max_frame_size=128 * KiB
    ),
    "4 MiB / 16 MiB windows, 1 MiB frames": H2Settings(max_frame_size=1 * MiB),
}


async def measure(settings: H2Settings, size: int) -> float:
    chunk = b"\x5a" * (256 * KiB)

    async def serve(stream: TunnelStream) -> None:
        await stream.receive_headers()
        await stream.send_headers([(b":status", b"200")])
        sent = 0
        while sent < size:
            await stream.send_data(chunk[: min(len(chunk), size - sent)])
            sent += min(len(chunk), size - sent)
        await stream.end()

    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        accepted: list[trio.SocketStream] = []
        got = trio.Event()

        async def accept() -> None:
            accepted.append(await listeners[0].accept())
            got.set()

        nursery.start_soon(accept)
        client_sock = await trio.open_tcp_stream("127.0.0.1", port)
        await got.wait()
        server = TunnelConnection(
            accepted[0], client_side=False, settings=settings, on_stream=serve
        )
        client = TunnelConnection(client_sock, client_side=True, settings=settings)
        await nursery.start(server.run)
        await nursery.start(client.run)
        await client.wait_remote_settings()
        started = time.perf_counter()
        stream = await client.open_stream(REQUEST, end_stream=True)
        await stream.receive_headers()
        received = 0
        while data := await stream.receive_data():
            received += len(data)
        elapsed = time.perf_counter() - started
        assert received == size
        nursery.cancel_scope.cancel()
        await listeners[0].aclose()
    return size / elapsed / 1e6


async def main(size: int) -> None:
    print(f"one stream, {size // MiB} MiB backend -> router over TCP loopback, one tunnel")
    for name, settings in SETTINGS.items():
        rates = [await measure(settings, size) for _ in range(3)]
        print(f"  {name:55s} {sorted(rates)[1]:7.0f} MB/s (median of 3)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="bytes to move per run, in MiB")
    trio.run(main, parser.parse_args().mib * MiB)

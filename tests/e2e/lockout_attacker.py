"""The lockout attacker of tests/e2e/test_tunnel_lockout.py, as a process of its own.

    python -m tests.e2e.lockout_attacker HOST:PORT SOURCES COUNT

SOURCES is one address (``127.0.0.2``) or a range of the last byte (``127.0.1.1-250``). Keeps
COUNT connections, spread over the sources in turn, to the tunnel port at HOST:PORT that send a
partial handshake head and never finish it, each refilled as soon as it is dropped, until
killed. Every 0.2 s it prints one JSON line of what the connections got (answers by status,
``null`` for a close without an answer) and, once, the first 503 it received. A process of its
own, as a real attacker would be: the router's event loop is not also running the attack.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter

import trio

PARTIAL_HEAD = b"POST /.well-known/ptth HTTP/1.1\r\nHost: x\r\nUpgrade: reverse\r\n"


def sources(spec: str) -> list[str]:
    base, _, last = spec.rpartition(".")
    first, _, end = last.partition("-")
    return [f"{base}.{n}" for n in range(int(first), int(end or first) + 1)]


async def main(host: str, port: int, spec: str, count: int) -> None:
    source_list = sources(spec)
    answers: Counter[str] = Counter()
    first_503: list[str] = []
    state = {"opened": 0, "connect_errors": 0}

    async def one(source: str) -> None:
        while True:
            try:
                sock = await trio.open_tcp_stream(host, port, local_address=source)
            except OSError:
                state["connect_errors"] += 1
                await trio.sleep(0.05)
                continue
            state["opened"] += 1
            received = bytearray()
            try:
                await sock.send_all(PARTIAL_HEAD)  # and never the rest
                while data := await sock.receive_some(65536):
                    received += data
            except (trio.BrokenResourceError, OSError):
                pass
            finally:
                await trio.aclose_forcefully(sock)
            match = re.match(rb"HTTP/1\.1 (\d{3}) ", received)
            status = match.group(1).decode() if match else "null"
            answers[status] += 1
            if status == "503" and not first_503:
                first_503.append(received.decode("latin-1"))

    async def report() -> None:
        while True:
            await trio.sleep(0.2)
            line = {"answers": dict(answers), **state, "first_503": first_503[:1]}
            print(json.dumps(line), flush=True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(report)
        for n in range(count):
            nursery.start_soon(one, source_list[n % len(source_list)])


if __name__ == "__main__":
    address, source, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    target, _, port = address.rpartition(":")
    trio.run(main, target, int(port), source, count)

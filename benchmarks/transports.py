"""One tunnel's throughput by transport (ARCHITECTURE.md, "Transports"): MB/s and requests/s.

A router process and, per transport, one helper process (``python -m ptth benchmarks.app:app``)
with one tunnel: the tunnel port over TCP, the front end's port with the plain handshake, and
``ws://`` on the front end. Per transport: ``curl`` downloads and uploads of ``--mib`` MiB
through the front end (best of ``--runs``), then ``wrk`` (``-c 16``, ``--seconds``) on
``GET /foo`` (3 bytes).
Everything on 127.0.0.1; the numbers include the router's front end and the helper's ASGI app.

    .venv/bin/python benchmarks/transports.py [--mib 50] [--runs 3] [--seconds 3]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def process(*args: str, ready: str, timeout: float = 15) -> Iterator[subprocess.Popen[bytes]]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        seen = b""
        while not re.search(ready.encode(), seen):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{args} not ready:\n{seen.decode(errors='replace')}")
            seen += proc.stdout.readline()
        yield proc
    finally:
        proc.kill()
        proc.wait()


def curl_mbps(args: list[str], field: str) -> float:
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", f"%{{{field}}} %{{http_code}}", *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    assert out[1] == "200", out
    return float(out[0]) / 1e6


def wrk_rps(url: str, seconds: int) -> float:
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", "16", "-d", f"{seconds}s", url],
        check=True,
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert match is not None, out
    if "Non-2xx" in out:
        raise RuntimeError(out)
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    args = parser.parse_args()
    for tool in ("curl", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed")
    http, tunnel = free_port(), free_port()
    size = args.mib * MiB
    base = f"http://127.0.0.1:{http}"
    transports = {
        "tcp (tunnel port)": f"tcp://127.0.0.1:{tunnel}",
        "tcp (front end's port)": f"tcp://127.0.0.1:{http}",
        "ws:// (front end)": f"ws://127.0.0.1:{http}",
    }
    with tempfile.NamedTemporaryFile() as upload:
        upload.write(os.urandom(MiB) * args.mib)
        upload.flush()
        router = ("-m", "router", "--http", f"127.0.0.1:{http}", "--tunnel", f"127.0.0.1:{tunnel}")
        with process(*router, "--access-log", "false", "--log-level", "WARNING", ready=""):
            time.sleep(1.0)
            print(f"{'transport':26} {'down MB/s':>10} {'up MB/s':>10} {'req/s':>10}")
            for name, address in transports.items():
                helper = ("-m", "ptth", "benchmarks.app:app", "--router", address)
                with process(*helper, ready="registered"):
                    down = max(
                        curl_mbps([f"{base}/stream/{size}"], "speed_download")
                        for _ in range(args.runs)
                    )
                    up = max(
                        curl_mbps(
                            ["-X", "PUT", "--data-binary", f"@{upload.name}", f"{base}/upload"],
                            "speed_upload",
                        )
                        for _ in range(args.runs)
                    )
                    rps = wrk_rps(base + "/foo", args.seconds)
                print(f"{name:26} {down:10.0f} {up:10.0f} {rps:10.0f}")


if __name__ == "__main__":
    main()

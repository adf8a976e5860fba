"""One tunnel's throughput through a forward proxy (ARCHITECTURE.md, "Forward proxies").

The same measurements as ``benchmarks/transports.py`` (curl down/upload of ``--mib`` MiB
through the front end, best of ``--runs``; wrk ``-c 16`` on ``GET /foo``), for a helper that
dials the tunnel port directly and through a tinyproxy ``CONNECT`` (and ``ws://`` through it).
tinyproxy runs on 127.0.0.1 from a generated config; everything is on this machine, so the
numbers show what the extra hop costs in CPU, not a network's latency.

    .venv/bin/python benchmarks/proxy.py [--mib 50] [--runs 2] [--seconds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.transports import MiB, curl_mbps, free_port, process, wrk_rps


@contextmanager
def tinyproxy(directory: Path, ports: list[int]) -> Iterator[str]:
    port = free_port()
    conf = directory / "tinyproxy.conf"
    lines = [f"Port {port}", "Listen 127.0.0.1", "Timeout 600", "LogLevel Warning"]
    lines += ["MaxClients 200", "Allow 127.0.0.1", *(f"ConnectPort {p}" for p in ports)]
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(
        ["tinyproxy", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=50)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=3)
    args = parser.parse_args()
    for tool in ("curl", "wrk", "tinyproxy"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed")
    http, tunnel = free_port(), free_port()
    size = args.mib * MiB
    base = f"http://127.0.0.1:{http}"
    with tempfile.TemporaryDirectory() as tmp, tempfile.NamedTemporaryFile() as upload:
        upload.write(os.urandom(MiB) * args.mib)
        upload.flush()
        router = ("-m", "router", "--http", f"127.0.0.1:{http}", "--tunnel", f"127.0.0.1:{tunnel}")
        with (
            process(*router, "--access-log", "false", "--log-level", "WARNING", ready=""),
            tinyproxy(Path(tmp), [tunnel, http]) as proxy,
        ):
            time.sleep(1.0)
            cases = {
                "tcp, direct": (f"tcp://127.0.0.1:{tunnel}", "none"),
                "tcp, via CONNECT proxy": (f"tcp://127.0.0.1:{tunnel}", proxy),
                "ws://, via CONNECT proxy": (f"ws://127.0.0.1:{http}", proxy),
            }
            print(f"{'transport':26} {'down MB/s':>10} {'up MB/s':>10} {'req/s':>10}")
            for name, (address, via) in cases.items():
                helper = ("-m", "ptth", "benchmarks.app:app", "--router", address, "--proxy", via)
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

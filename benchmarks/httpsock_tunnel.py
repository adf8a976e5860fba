"""httpsock tunnels against plain TCP ones, briefly (< 60 s): one router, one backend at a time.

    .venv/bin/python benchmarks/httpsock_tunnel.py [--seconds 5] [--mb 20]

For each transport (``tcp://`` to the tunnel port, ``http://`` to the front end), it starts
``python -m router`` and ``python -m ptth benchmarks.app:app --router ADDR``, then measures a
download and an upload of ``--mb`` MB with curl (MB/s = 10^6 B/s) and ``GET /foo`` with wrk
(10 connections, ``--seconds`` long). Prints one table; ratios are against tcp.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


LINES: dict[int, list[str]] = {}


def start(*args: str) -> subprocess.Popen[str]:
    """A child whose output is read all along (a full pipe would stall its logging)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [PY, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = LINES[proc.pid] = []

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    threading.Thread(target=drain, daemon=True).start()
    return proc


def wait_line(proc: subprocess.Popen[str], pattern: str, timeout: float = 15) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in LINES[proc.pid]:
            match = re.search(pattern, line)
            if match:
                return match
        time.sleep(0.05)
    raise RuntimeError(f"{pattern!r} not seen: {''.join(LINES[proc.pid])}")


def curl_rate(args: list[str]) -> float:
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{speed_download} %{speed_upload}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    return max(float(out[0]), float(out[1])) / 1e6


def wrk_rate(url: str, seconds: int) -> float:
    out = subprocess.run(
        ["wrk", "-t2", "-c10", f"-d{seconds}s", url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert match, out
    return float(match.group(1))


def measure(transport: str, mb: int, seconds: int) -> dict[str, float]:
    router = start(
        "-m", "router", "--http", "127.0.0.1:0", "--tunnel", "127.0.0.1:0", "--access-log", "false"
    )
    backend = None
    try:
        match = wait_line(router, r"front end on http://([\d.:]+), tunnel port on ([\d.:]+)")
        front, tunnel = match.group(1), match.group(2)
        address = f"tcp://{tunnel}" if transport == "tcp" else f"http://{front}"
        backend = start("-m", "ptth", "benchmarks.app:app", "--router", address)
        wait_line(router, r"registered", timeout=20)
        size = mb * 1_000_000
        base = f"http://{front}"
        down = curl_rate([f"{base}/stream/{size}"])
        body = ROOT / ".httpsock-bench-upload"
        body.write_bytes(bytes(size))
        try:
            up = curl_rate(["-T", str(body), f"{base}/upload"])
        finally:
            body.unlink()
        rps = wrk_rate(f"{base}/foo", seconds)
        return {"download MB/s": down, "upload MB/s": up, "GET req/s (wrk c10)": rps}
    finally:
        for proc in (backend, router):
            if proc is not None:
                proc.kill()
                proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--mb", type=int, default=20)
    args = parser.parse_args()
    for tool in ("curl", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed")
    results = {t: measure(t, args.mb, args.seconds) for t in ("tcp", "httpsock")}
    print("| figure | tcp | httpsock | httpsock / tcp |\n| --- | ---: | ---: | ---: |")
    for key in results["tcp"]:
        tcp, hs = results["tcp"][key], results["httpsock"][key]
        print(f"| {key} | {tcp:,.1f} | {hs:,.1f} | x{hs / tcp:.2f} |")


if __name__ == "__main__":
    main()

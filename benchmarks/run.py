#!/usr/bin/env python3
"""``make bench``: the cost of the tunnel, measured side by side in one run on 127.0.0.1.

Two servers run the same ASGI app (``benchmarks/app.py``) at the same time, each its own process:

* **router**: ``python -m router`` plus one backend, ``python -m ptth benchmarks.app:app``;
  users reach the app through the router's front end and one HTTP/2 tunnel;
* **direct**: ``python -m hypercorn --worker-class trio benchmarks.app:app``.

Measured:

a. ``GET /foo`` (3-byte body): requests/s and latency p50/p99, over HTTP/1.1 and h2c, with h2load
   when installed (else ``benchmarks/loadgen.py``, HTTP/1.1 only), plus the CPU the server
   processes used (100 % = one core);
b. a streamed download of 1 GiB (``GET /stream/N``) on one connection, with curl when installed
   (else a raw trio socket reader): MB/s (10^6 bytes/s) and the router's and backend's peak RSS
   (``VmRSS`` sampled every 10 ms from /proc).

``run.py engine [--quick] [--json PATH]`` is another mode: ptth's HTTP/2 driver against a minimal
h2 client/server pair, no router and no ASGI (``benchmarks/engine.py``).

``--quick`` uses 2,000 requests and 256 MiB. Every child is stopped (SIGTERM, then SIGKILL) on
the way out, whatever happens. See benchmarks/README.md for results and how to read them.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import queue
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx
import loadgen
import trio
from machine import cpu_seconds, machine

ROOT = Path(__file__).resolve().parent.parent
APP = "benchmarks.app:app"
ROUTER_READY = re.compile(r"front end on (http://\S+), tunnel port on (\S+)")
START_TIMEOUT = 20.0
RUN_TIMEOUT = 600.0
MIB = 1024 * 1024
CURL_FORMAT = "%{http_code} %{size_download} %{time_total}"


@dataclass(frozen=True)
class Sizes:
    requests: int
    connections: int  # HTTP/1.1 connections, and h2c connections
    streams: int  # h2c: concurrent streams per connection (h2load -m)
    download: int  # bytes


# hypercorn (the router's front end and the direct server alike) closes a connection after 1000
# requests, and h2load does not reconnect an HTTP/2 client: keep requests/connections <= 1000.
FULL = Sizes(requests=10_000, connections=10, streams=10, download=1024 * MIB)
QUICK = Sizes(requests=2_000, connections=10, streams=10, download=256 * MIB)


# -- child processes ------------------------------------------------------------------------


class Child:
    """A child process; a thread keeps its last 200 output lines, so its pipe never fills.

    With ``ready``, the first output line matching it is kept for :meth:`wait_ready`.
    """

    def __init__(
        self,
        name: str,
        args: list[str],
        ready: re.Pattern[str] | None = None,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self.name = name
        self.lines: deque[str] = deque(maxlen=200)
        self._ready_pattern = ready
        self._ready: queue.Queue[re.Match[str]] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            pass_fds=pass_fds,
        )
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        pattern = self._ready_pattern
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if pattern is not None and (match := pattern.search(line)):
                self._ready.put(match)
                pattern = None

    def wait_ready(self, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(queue.Empty):
                return self._ready.get(timeout=0.05)
        raise TimeoutError(f"{self.name} not ready after {timeout:g} s")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = "\n".join(self.lines)
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")

    def stop(self) -> None:
        """SIGTERM (a graceful drain), SIGKILL after 10 s; always reaped."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=2)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def child(
    name: str,
    args: list[str],
    ready: re.Pattern[str] | None = None,
    pass_fds: tuple[int, ...] = (),
) -> Iterator[Child]:
    proc = Child(name, args, ready, pass_fds)
    try:
        yield proc
    finally:
        proc.stop()


def wait_ok(url: str, children: list[Child]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        for c in children:
            c.check_alive()
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {START_TIMEOUT:g} s")
        time.sleep(0.05)


# -- /proc sampling -------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def system_busy_seconds() -> float:
    """CPU time all processes on the machine used so far (every core), from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    """CPU time of this script and its reaped children (h2load, curl)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class CpuMeter:
    """CPU used by ``pids`` during a ``with`` block, and by every other process on the machine.

    ``other`` is what neither the servers nor this script and its clients used: other people's
    work competing for the cores. Shares are per second of wall time (1.0 = one core).
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.shares: dict[str, float] = {}
        self.other = 0.0
        self.wall = 0.0

    def __enter__(self) -> CpuMeter:
        self._servers = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._busy = system_busy_seconds()
        self._own = own_seconds()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._started
        used = {name: cpu_seconds(pid) - self._servers[name] for name, pid in self.pids.items()}
        self.shares = {name: seconds / self.wall for name, seconds in used.items()}
        busy = system_busy_seconds() - self._busy
        mine = own_seconds() - self._own + sum(used.values())
        self.other = max(0.0, busy - mine) / self.wall


class RssSampler:
    """Peak VmRSS of some processes, sampled every ``interval`` seconds by a thread."""

    def __init__(self, pids: dict[str, int], interval: float = 0.01) -> None:
        self.pids = pids
        self.interval = interval
        self.baseline = {name: rss_bytes(pid) for name, pid in pids.items()}
        self.peak = dict(self.baseline)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for name, pid in self.pids.items():
                with contextlib.suppress(OSError):
                    self.peak[name] = max(self.peak[name], rss_bytes(pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- a. requests/s and latency ----------------------------------------------------------------


@dataclass
class LoadRow:
    protocol: str
    target: str
    requests: int
    ok: int
    rps: float
    p50: float  # seconds
    p99: float
    cpu: dict[str, float] = field(default_factory=dict)  # process name -> share of one core
    other: float = 0.0  # CPU that other processes on the machine used meanwhile (1.0 = a core)


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile (the same definition as examples/user.py)."""
    if not sorted_values:
        return math.nan
    rank = math.ceil(pct / 100.0 * len(sorted_values))
    return sorted_values[min(max(rank, 1), len(sorted_values)) - 1]


def h2load(url: str, protocol: str, sizes: Sizes, requests: int) -> tuple[int, float, list[float]]:
    """(responses that are the expected 3-byte body, req/s, sorted latencies in seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        log_file = Path(tmp) / "requests.tsv"
        args = ["h2load", "-n", str(requests), "-c", str(sizes.connections)]
        if protocol == "HTTP/1.1":
            args += ["--h1", "-m", "1"]
        else:
            args += ["-m", str(sizes.streams)]
        args += [f"--log-file={log_file}", url]
        out = subprocess.run(args, capture_output=True, text=True, timeout=RUN_TIMEOUT).stdout
        rows = [line.split("\t") for line in log_file.read_text().splitlines() if line]
    rps_match = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done", out)
    data = re.search(r"traffic: .*?, .*? headers .*?, \S+ \((\d+)\) data", out)
    if not (rps_match and done and data):
        raise RuntimeError(f"cannot parse h2load output:\n{out}")
    # h2load --h1 never sees hypercorn's status line ("HTTP/1.1 200 " has an empty reason phrase,
    # so it records status 0 and counts every response as failed). What proves success instead:
    # every request completed and the body bytes add up to N x "bar" (any error body differs).
    completed = int(done[1])
    ok = completed if int(data[1]) == 3 * completed else 0
    if protocol != "HTTP/1.1":
        ok = sum(1 for row in rows if row[1] == "200")
    latencies = sorted(int(row[2]) / 1e6 for row in rows)
    return ok, float(rps_match[1]), latencies


def trio_load(url: str, sizes: Sizes, requests: int) -> tuple[int, float, list[float]]:
    result = trio.run(loadgen.http1_load, url, requests, sizes.connections)
    ok = result.statuses.get(200, 0)
    if result.body_bytes != 3 * ok:
        ok = 0
    return ok, requests / result.duration, sorted(result.latencies)


def measure_load(
    protocol: str, target: str, url: str, sizes: Sizes, generator: str, pids: dict[str, int]
) -> LoadRow:
    def run(requests: int) -> tuple[int, float, list[float]]:
        if generator == "h2load":
            return h2load(url, protocol, sizes, requests)
        return trio_load(url, sizes, requests)

    run(min(1000, sizes.requests))  # warm-up: connections, caches, the tunnel's windows
    with CpuMeter(pids) as meter:
        ok, rps, latencies = run(sizes.requests)
    return LoadRow(
        protocol=protocol,
        target=target,
        requests=sizes.requests,
        ok=ok,
        rps=rps,
        p50=percentile(latencies, 50),
        p99=percentile(latencies, 99),
        cpu=meter.shares,
        other=meter.other,
    )


# -- b. bulk download -----------------------------------------------------------------------


@dataclass
class DownloadRow:
    target: str
    size: int
    received: int
    seconds: float
    rss: dict[str, tuple[int, int]]  # process -> (baseline, peak) bytes
    cpu: dict[str, float]
    other: float

    @property
    def mb_per_s(self) -> float:
        return self.received / self.seconds / 1e6 if self.seconds else 0.0


def curl_download(url: str) -> tuple[int, int, float]:
    out = subprocess.run(
        [*f"curl -s -o /dev/null --max-time {RUN_TIMEOUT:.0f}".split(), "-w", CURL_FORMAT, url],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT + 10,
    ).stdout.split()
    return int(out[0]), int(out[1]), float(out[2])


def trio_download(url: str) -> tuple[int, int, float]:
    result = trio.run(loadgen.download, url, RUN_TIMEOUT)
    return result.status, result.body_bytes, result.seconds


def measure_download(
    target: str, base: str, size: int, client: str, pids: dict[str, int]
) -> DownloadRow:
    url = f"{base}/stream/{size}"
    fetch = curl_download if client == "curl" else trio_download
    fetch(f"{base}/stream/{16 * MIB}")  # warm-up
    with CpuMeter(pids) as meter, RssSampler(pids) as sampler:
        status, received, seconds = fetch(url)
    if status != 200 or received != size:
        raise RuntimeError(f"{target}: download got status {status}, {received} of {size} bytes")
    rss = {name: (sampler.baseline[name], sampler.peak[name]) for name in pids}
    return DownloadRow(target, size, received, seconds, rss, meter.shares, meter.other)


# -- report ---------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def cpu_text(cpu: dict[str, float], other: float) -> str:
    used = " + ".join(f"{name} {share * 100:.0f}%" for name, share in cpu.items())
    return f"{used}  (other processes {other * 100:.0f}%)"


def print_load(rows: list[LoadRow], generator: str, sizes: Sizes, rounds: int) -> None:
    median = f", median of {rounds} rounds" if rounds > 1 else ""
    print(f"\na. GET /foo, {sizes.requests} requests per round{median}, generator: {generator}")
    print(
        f"{'protocol':<9} {'concurrency':<13} {'path':<7} {'req/s':>8} {'p50':>9} {'p99':>9} "
        f"{'ok':>6}  CPU (100% = one core)"
    )
    for row in rows:
        if row.protocol == "HTTP/1.1":
            conc = f"{sizes.connections} conn"
        else:
            conc = f"{sizes.connections} conn x {sizes.streams}"
        print(
            f"{row.protocol:<9} {conc:<13} {row.target:<7} {row.rps:>8.0f} {ms(row.p50):>9} "
            f"{ms(row.p99):>9} {row.ok:>6}  {cpu_text(row.cpu, row.other)}"
        )
    for protocol in dict.fromkeys(r.protocol for r in rows):
        pair = {r.target: r for r in rows if r.protocol == protocol}
        if "router" in pair and "direct" in pair:
            r, d = pair["router"], pair["direct"]
            print(
                f"{protocol:<9} router/direct: req/s x{r.rps / d.rps:.2f}, "
                f"p50 x{r.p50 / d.p50:.2f}, p99 x{r.p99 / d.p99:.2f}"
            )


def print_download(rows: list[DownloadRow], client: str) -> None:
    size = rows[0].size
    print(f"\nb. streamed download of {size // MIB} MiB on one connection, client: {client}")
    print(f"{'path':<7} {'MB/s':>8} {'seconds':>8}  peak RSS (baseline -> peak)")
    for row in rows:
        rss = ", ".join(
            f"{name} {base / MIB:.0f} -> {peak / MIB:.0f} MiB"
            for name, (base, peak) in row.rss.items()
        )
        print(f"{row.target:<7} {row.mb_per_s:>8.0f} {row.seconds:>8.2f}  {rss}")
        print(f"{'':<7} {'':>8} {'':>8}  CPU: {cpu_text(row.cpu, row.other)}")
    pair = {r.target: r for r in rows}
    if "router" in pair and "direct" in pair:
        print(f"router/direct: MB/s x{pair['router'].mb_per_s / pair['direct'].mb_per_s:.2f}")


# -- main -----------------------------------------------------------------------------------


def wait_idle(pids: dict[str, int], limit: float) -> float:
    """Wait up to ``limit`` s for 2 s in a row where other processes use < 15 % of a core.

    Returns the last 1-second sample of that other load (shown when the wait ran out).
    """
    deadline = time.monotonic() + limit
    quiet = 0
    other = 0.0
    while time.monotonic() < deadline:
        with CpuMeter(pids) as meter:
            time.sleep(1.0)
        other = meter.other
        quiet = quiet + 1 if other < 0.15 else 0
        if quiet >= 2:
            break
    return other


def median_load(rows: list[LoadRow]) -> LoadRow:
    """Per-metric median over rounds; ``ok`` is the worst round, CPU shares the mean."""
    first = rows[0]
    return LoadRow(
        protocol=first.protocol,
        target=first.target,
        requests=first.requests,
        ok=min(r.ok for r in rows),
        rps=statistics.median(r.rps for r in rows),
        p50=statistics.median(r.p50 for r in rows),
        p99=statistics.median(r.p99 for r in rows),
        cpu={k: statistics.fmean(r.cpu[k] for r in rows) for k in first.cpu},
        other=statistics.fmean(r.other for r in rows),
    )


@dataclass
class Servers:
    router_url: str
    tunnel: str
    direct_url: str
    children: list[Child]
    routed: dict[str, int]  # the processes a request through the router costs
    alone: dict[str, int]  # the direct server


def start_servers(stack: contextlib.ExitStack) -> Servers:
    # Both router ports are 0; the router logs where they landed ("front end on ...").
    router_args = "-m router --http 127.0.0.1:0 --tunnel 127.0.0.1:0 --log-level INFO"
    router_args += " --access-log false"
    router = stack.enter_context(child("router", router_args.split(), ready=ROUTER_READY))
    ready = router.wait_ready(START_TIMEOUT)
    router_url, tunnel = ready[1], ready[2]
    backend_args = f"-m ptth {APP} --router {tunnel} --instance bench --log-level WARNING"
    backend = stack.enter_context(child("backend", backend_args.split()))

    # hypercorn gets a socket bound here (port 0), so there is no pick-a-free-port race.
    listener = stack.enter_context(socket.socket())
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    direct_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    fd = listener.fileno()
    # --workers 0: serve in this one process (no multiprocessing supervisor to clean up).
    direct_args = f"-m hypercorn --worker-class trio --workers 0 --bind fd://{fd} {APP}"
    direct = stack.enter_context(child("hypercorn", direct_args.split(), pass_fds=(fd,)))

    children = [router, backend, direct]
    wait_ok(f"{router_url}/foo", children)
    wait_ok(f"{direct_url}/foo", children)
    return Servers(
        router_url=router_url,
        tunnel=tunnel,
        direct_url=direct_url,
        children=children,
        routed={"router": router.pid, "backend": backend.pid},
        alone={"hypercorn": direct.pid},
    )


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwind through the ExitStack, which stops every child


def main() -> int:
    if sys.argv[1:2] == ["engine"]:
        import engine

        return engine.main(sys.argv[2:])
    parser = argparse.ArgumentParser(
        description="Router vs direct hypercorn, side by side.",
        epilog="run.py engine --help: the other mode, ptth's driver vs a minimal h2 pair.",
    )
    parser.add_argument("--quick", action="store_true", help="2,000 requests, 256 MiB, 1 round")
    parser.add_argument(
        "--rounds", type=int, default=None, help="load rounds, median reported (default 3)"
    )
    parser.add_argument("--generator", choices=["auto", "h2load", "trio"], default="auto")
    parser.add_argument("--download-client", choices=["auto", "curl", "trio"], default="auto")
    parser.add_argument("--skip-load", action="store_true", help="only the download")
    parser.add_argument("--skip-download", action="store_true", help="only requests/s")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each measurement, wait up to this long for other processes to go quiet",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminated)

    sizes = QUICK if args.quick else FULL
    rounds = args.rounds or (1 if args.quick else 3)
    generator = args.generator
    if generator == "auto":
        generator = "h2load" if shutil.which("h2load") else "trio"
    client = args.download_client
    if client == "auto":
        client = "curl" if shutil.which("curl") else "trio"
    if generator == "h2load":
        version = subprocess.run(["h2load", "--version"], capture_output=True, text=True)
        generator_name = f"h2load ({version.stdout.strip()})"
    else:
        generator_name = "benchmarks/loadgen.py (trio + h11, HTTP/1.1 only)"
    print(f"machine: {machine()}")

    load_rows: list[LoadRow] = []
    download_rows: list[DownloadRow] = []
    with contextlib.ExitStack() as stack:
        servers = start_servers(stack)
        print(
            f"router {servers.router_url} (tunnel {servers.tunnel}) + backend; "
            f"direct hypercorn {servers.direct_url}"
        )
        targets = (
            ("router", servers.router_url, servers.routed),
            ("direct", servers.direct_url, servers.alone),
        )
        everyone = servers.routed | servers.alone

        def settle() -> None:
            if args.wait_idle > 0:
                other = wait_idle(everyone, args.wait_idle)
                if other >= 0.15:
                    print(f"  (machine still busy: other processes at {other * 100:.0f}%)")

        if not args.skip_load:
            protocols = ["HTTP/1.1", "h2c"] if generator == "h2load" else ["HTTP/1.1"]
            for protocol in protocols:
                for target, base, pids in targets:
                    samples = []
                    for _ in range(rounds):
                        settle()
                        row = measure_load(protocol, target, f"{base}/foo", sizes, generator, pids)
                        samples.append(row)
                        print(
                            f"  {protocol} {target}: {row.rps:.0f} req/s, p50 {ms(row.p50)}, "
                            f"p99 {ms(row.p99)}, {row.ok}/{row.requests} ok, "
                            f"other processes {row.other * 100:.0f}%",
                            flush=True,
                        )
                    load_rows.append(median_load(samples))
        if not args.skip_download:
            for target, base, pids in targets:
                settle()
                drow = measure_download(target, base, sizes.download, client, pids)
                download_rows.append(drow)
                print(f"  download {target}: {drow.mb_per_s:.0f} MB/s", flush=True)
        for c in servers.children:
            c.check_alive()

    if load_rows:
        print_load(load_rows, generator_name, sizes, rounds)
    if download_rows:
        print_download(download_rows, client)
    failed = [r for r in load_rows if r.ok != r.requests]
    for r in failed:
        print(f"\nWARNING: {r.protocol} {r.target}: only {r.ok} of {r.requests} requests OK")
    busy = [r.other for r in load_rows] + [r.other for r in download_rows]
    if busy and max(busy) > 0.25:
        print(
            f"\nWARNING: other processes used up to {max(busy) * 100:.0f}% of a core during "
            "the measurements; the numbers are not from a quiet machine (try --wait-idle 120)"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

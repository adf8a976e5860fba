#!/usr/bin/env python3
"""``make bench``: what the tunnel costs, measured side by side and interleaved in one run.

Three servers run the same ASGI app (``benchmarks/app.py``) at the same time on 127.0.0.1, each
in its own process(es):

* **router**: ``python -m router`` plus one backend, ``python -m ptth benchmarks.app:app``; users
  reach the app through the router's front end and one HTTP/2 tunnel. The router gets
  ``PTTH_MAX_BODY=0`` in its environment (no request-body limit, for the upload) and no body-limit
  flag, so the script works with the ``--max-body`` router and the ``--max-body-size`` one alike;
* **hypercorn**: ``python -m hypercorn --worker-class trio --workers 0 benchmarks.app:app``
  directly: the reference every ratio is taken against;
* **uvicorn**: ``python -m uvicorn benchmarks.app:app`` directly, ``--loop auto --http auto``
  unless told otherwise (uvloop + httptools when installed; the table says which).

Measured, every figure once per server per round, the servers' order rotating from round to
round; the table shows the median of the rounds (failures: the sum over the rounds):

* HTTP/1.1 ``GET /foo`` (3-byte body) with wrk, 50 connections and 2 threads, then 1 connection
  and 1 thread: requests/s, p50, p99 (wrk ``--latency``), non-2xx responses and socket errors;
* h2c ``GET /foo`` with h2load, 10 connections x 10 streams, 10,000 requests: requests/s, p50,
  p99 (h2load's per-request log, nearest rank), failed requests (h2load does not reconnect: a
  server that closes a connection early shows up as failures). uvicorn has no HTTP/2: n/a;
* a 1 GiB download (``GET /stream/N``) and a 1 GiB upload (``PUT /upload`` of a sparse file, the
  app counts the bytes and answers the count) on one connection each with curl: MB/s (10^6 B/s)
  and the peak RSS of the server processes (``VmRSS`` sampled every 10 ms from /proc);
* the CPU the server processes used during each figure (100 % = one core) and what every other
  process on the machine used meanwhile.

Then the targets, for the router: req/s (wrk c50) >= 1.0x hypercorn-trio direct; p50 at c=1
<= 0.8 ms; h2c req/s >= 0.9x its HTTP/1.1 req/s (wrk c50) with 0 failed; download >= 1 GB/s;
upload >= 600 MB/s; each PASS or MISS with its figure.

``--quick``: 1 round, 2 s per wrk figure, 2,000 h2c requests, 256 MiB transfers. ``--only
router,uvicorn`` picks servers; ``--json PATH`` (``-``: stdout, the table goes to stderr) writes
every sample, the medians, the ratios and the targets. A missing wrk, h2load or curl is reported
and its part skipped. Every child is stopped (SIGTERM, then SIGKILL) on the way out, whatever
happens. The exit status is 1 when a measurement could not be made (a tool failed or timed out, a
transfer came back short), else 0, targets missed or not.

``run.py engine [--quick] [--json PATH]`` is another mode: ptth's HTTP/2 driver against a minimal
h2 client/server pair, no router and no ASGI (``benchmarks/engine.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
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
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import httpx
from machine import cpu_seconds, machine

ROOT = Path(__file__).resolve().parent.parent
APP = "benchmarks.app:app"
ROUTER_READY = re.compile(r"front end on (http://\S+), tunnel port on (\S+)")
START_TIMEOUT = 20.0
RUN_TIMEOUT = 600.0
MIB = 1024 * 1024
SERVERS = ("router", "hypercorn", "uvicorn")
REFERENCE = "hypercorn"


@dataclass(frozen=True)
class Plan:
    rounds: int
    wrk_seconds: float  # per wrk figure and round
    h2_requests: int  # per h2c figure and round
    h2_connections: int
    h2_streams: int
    transfer: int  # bytes, each way


# hypercorn (the router's front end today, and the direct server) closes a connection after
# 1,000 requests and h2load does not reconnect an HTTP/2 client: 10,000 over 10 connections is
# exactly that many; a server with a lower limit shows failures, which the table reports.
FULL = Plan(rounds=3, wrk_seconds=5.0, h2_requests=10_000, h2_connections=10, h2_streams=10,
            transfer=1024 * MIB)  # fmt: skip
QUICK = Plan(rounds=1, wrk_seconds=2.0, h2_requests=2_000, h2_connections=10, h2_streams=10,
             transfer=256 * MIB)  # fmt: skip


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
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.lines: deque[str] = deque(maxlen=200)
        self._ready_pattern = ready
        self._ready: queue.Queue[re.Match[str]] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT), **(env or {})),
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
    env: dict[str, str] | None = None,
) -> Iterator[Child]:
    proc = Child(name, args, ready, pass_fds, env)
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
    """CPU time of this script and its reaped children (wrk, h2load, curl)."""
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
        self.seconds: dict[str, float] = {}
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
        self.seconds = {n: cpu_seconds(pid) - self._servers[n] for n, pid in self.pids.items()}
        self.shares = {name: seconds / self.wall for name, seconds in self.seconds.items()}
        busy = system_busy_seconds() - self._busy
        mine = own_seconds() - self._own + sum(self.seconds.values())
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


# -- the clients ----------------------------------------------------------------------------


class MeasureError(Exception):
    """A figure could not be measured (the tool failed, timed out, or the answer was wrong)."""


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile (the same definition as examples/user.py)."""
    if not sorted_values:
        return math.nan
    rank = math.ceil(pct / 100.0 * len(sorted_values))
    return sorted_values[min(max(rank, 1), len(sorted_values)) - 1]


def run_tool(args: list[str], timeout: float) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise MeasureError(f"{args[0]} timed out after {timeout:g} s") from exc
    if done.returncode != 0:
        raise MeasureError(f"{args[0]} exited with {done.returncode}: {done.stderr.strip()}")
    return done.stdout


_WRK_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _wrk_time(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise MeasureError(f"cannot parse wrk time {text!r}")
    return float(match[1]) * _WRK_UNITS[match[2]]


def wrk(url: str, connections: int, threads: int, seconds: float) -> dict[str, float]:
    """HTTP/1.1 keep-alive load with wrk for ``seconds``: req/s, p50, p99, failures."""
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", url]
    out = run_tool(args, timeout=seconds + 60)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in ([\d.]+\w+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if not (rps and total and p50 and p99):
        raise MeasureError(f"cannot parse wrk output:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    kinds = ("connect", "read", "write", "timeout")
    errors = dict(zip(kinds, sock.groups(), strict=True)) if sock else {}
    result = {
        "rps": float(rps[1]),
        "requests": int(total[1]),
        "p50": _wrk_time(p50[1]),
        "p99": _wrk_time(p99[1]),
        "non2xx": int(non2xx[1]) if non2xx else 0,
        "errors": sum(int(v) for v in errors.values()),
    }
    result.update({f"errors_{k}": int(v) for k, v in errors.items()})
    return result


def h2load(url: str, requests: int, connections: int, streams: int) -> dict[str, float]:
    """h2c load with h2load (prior knowledge): req/s, p50, p99 from its log, failed requests."""
    with tempfile.TemporaryDirectory() as tmp:
        log_file = Path(tmp) / "requests.tsv"
        args = ["h2load", "-n", str(requests), "-c", str(connections), "-m", str(streams)]
        out = run_tool([*args, f"--log-file={log_file}", url], timeout=RUN_TIMEOUT)
        rows = [line.split("\t") for line in log_file.read_text().splitlines() if line]
    rps = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    counts = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        out,
    )
    if not (rps and counts):
        raise MeasureError(f"cannot parse h2load output:\n{out}")
    total, _, done, succeeded, failed, errored, timed_out = (int(v) for v in counts.groups())
    latencies = sorted(int(row[2]) / 1e6 for row in rows if row[1] == "200")
    statuses = Counter(row[1] for row in rows if row[1] != "200")  # "0": no response
    return {
        **{f"status_{code}": n for code, n in sorted(statuses.items())},
        "rps": float(rps[1]),
        "requests": total,
        "done": done,
        "succeeded": succeeded,
        "failed": total - succeeded,  # never started, failed, errored, timed out, or not 2xx
        "h2load_failed": failed,
        "h2load_errored": errored,
        "h2load_timeout": timed_out,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
    }


CURL_FORMAT = "\n%{http_code} %{size_download} %{size_upload} %{time_total}"


def curl(args: list[str]) -> tuple[str, int, int, int, float]:
    """(body, status, bytes downloaded, bytes uploaded, seconds)."""
    base = ["curl", "-s", "--max-time", f"{RUN_TIMEOUT:.0f}", "-w", CURL_FORMAT]
    out = run_tool([*base, *args], timeout=RUN_TIMEOUT + 10)
    body, _, tail = out.rpartition("\n")
    status, down, up, seconds = tail.split()
    return body, int(status), int(down), int(up), float(seconds)


def download(base: str, size: int, scratch: Path) -> tuple[int, float]:
    _, status, received, _, seconds = curl(["-o", "/dev/null", f"{base}/stream/{size}"])
    if status != 200 or received != size:
        raise MeasureError(f"download: status {status}, {received} of {size} bytes")
    return received, seconds


def upload(base: str, size: int, scratch: Path) -> tuple[int, float]:
    path = scratch / f"upload-{size}"
    if not path.exists():
        with open(path, "wb") as f:
            f.truncate(size)  # sparse: reading it costs curl next to nothing
    # "Expect:" off: no waiting for a 100 Continue (curl sends the header for large bodies).
    args = ["-T", str(path), "-H", "Expect:", "-H", "Content-Type: application/octet-stream"]
    body, status, _, sent, seconds = curl([*args, f"{base}/upload"])
    if status != 200 or sent != size or body.strip() != str(size):
        raise MeasureError(f"upload: status {status}, sent {sent} of {size}, app counted {body!r}")
    return sent, seconds


# -- figures --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    key: str
    title: str
    kind: str  # "load" or "transfer"
    tool: str


FIGURES = (
    Figure("http1_c50", "HTTP/1.1, wrk 50 conn x 2 thr", "load", "wrk"),
    Figure("http1_c1", "HTTP/1.1, wrk 1 conn x 1 thr", "load", "wrk"),
    Figure("h2c", "h2c, h2load 10 conn x 10 str", "load", "h2load"),
    Figure("download", "download, 1 connection", "transfer", "curl"),
    Figure("upload", "upload, 1 connection", "transfer", "curl"),
)
# Summed over the rounds (everything else numeric: the median; RSS: the extreme).
SUMMED = {"requests", "non2xx", "errors", "failed", "succeeded", "done"}
SUMMED_PREFIXES = ("errors_", "h2load_", "status_")


@dataclass
class Server:
    name: str
    url: str
    pids: dict[str, int]  # the processes a request to it costs
    description: str
    children: list[Child] = field(default_factory=list)
    h2c: bool = True


@dataclass
class Sample:
    figure: str
    server: str
    round: int
    metrics: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    cpu_share: dict[str, float] = field(default_factory=dict)
    other: float = 0.0
    wall: float = 0.0
    error: str | None = None


def measure(
    figure: Figure, server: Server, plan: Plan, scratch: Path, round_: int, warm: bool = False
) -> Sample:
    sample = Sample(figure.key, server.name, round_)
    foo = f"{server.url}/foo"
    seconds = 1.0 if warm else plan.wrk_seconds
    size = 16 * MIB if warm else plan.transfer
    rss = RssSampler(server.pids)
    sampling = rss if figure.kind == "transfer" else contextlib.nullcontext()
    try:
        with CpuMeter(server.pids) as meter, sampling:
            if figure.key == "http1_c50":
                sample.metrics = wrk(foo, 50, 2, seconds)
            elif figure.key == "http1_c1":
                sample.metrics = wrk(foo, 1, 1, seconds)
            elif figure.key == "h2c":
                requests = min(1000, plan.h2_requests) if warm else plan.h2_requests
                sample.metrics = h2load(foo, requests, plan.h2_connections, plan.h2_streams)
            else:
                move = download if figure.key == "download" else upload
                moved, took = move(server.url, size, scratch)
                sample.metrics = {"bytes": moved, "seconds": took, "mbps": moved / took / 1e6}
    except MeasureError as exc:
        sample.error = str(exc)
    sample.cpu_seconds = meter.seconds
    sample.cpu_share = meter.shares
    sample.other = meter.other
    sample.wall = meter.wall
    if figure.kind == "transfer":
        for name in server.pids:
            sample.metrics[f"rss_base_{name}"] = rss.baseline[name]
            sample.metrics[f"rss_peak_{name}"] = rss.peak[name]
    return sample


def aggregate(samples: list[Sample]) -> dict[str, Any]:
    """Median per metric over the rounds (failures summed, RSS extremes), CPU shares' mean."""
    good = [s for s in samples if s.error is None]
    out: dict[str, Any] = {"rounds": len(good)}
    out["sample_errors"] = [s.error for s in samples if s.error]
    if not good:
        return out
    for key in dict.fromkeys(k for s in good for k in s.metrics):
        values = [s.metrics[key] for s in good if key in s.metrics]
        if key in SUMMED or key.startswith(SUMMED_PREFIXES):
            out[key] = sum(values)  # a count missing from a round is 0 there
        elif key.startswith("rss_peak_"):
            out[key] = max(values)
        elif key.startswith("rss_base_"):
            out[key] = min(values)
        else:
            out[key] = statistics.median(values)
    names = good[0].cpu_share
    out["cpu_share"] = {n: statistics.fmean(s.cpu_share[n] for s in good) for n in names}
    out["cpu_seconds"] = {n: sum(s.cpu_seconds[n] for s in good) for n in names}
    out["other"] = max(s.other for s in good)
    return out


# -- servers --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def uvicorn_choice(loop: str, http: str) -> tuple[str, str]:
    """What uvicorn's ``auto`` resolves to here (uvloop, httptools when importable)."""
    if loop == "auto":
        loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    if http == "auto":
        http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return loop, http


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def start_servers(
    stack: contextlib.ExitStack, names: list[str], uvicorn_loop: str, uvicorn_http: str
) -> list[Server]:
    servers: list[Server] = []
    children: list[Child] = []
    if "router" in names:
        # Both router ports are 0; the router logs where they landed ("front end on ...").
        # PTTH_MAX_BODY=0: no request-body limit for the upload, with no flag that a later
        # router might not know (it ignores PTTH_ variables it does not use).
        router_args = "-m router --http 127.0.0.1:0 --tunnel 127.0.0.1:0 --log-level INFO"
        router_args += " --access-log false"
        router = stack.enter_context(
            child("router", router_args.split(), ROUTER_READY, env={"PTTH_MAX_BODY": "0"})
        )
        ready = router.wait_ready(START_TIMEOUT)
        router_url, tunnel = ready[1], ready[2]
        backend_args = f"-m ptth {APP} --router {tunnel} --instance bench --log-level WARNING"
        backend = stack.enter_context(child("backend", backend_args.split()))
        children += [router, backend]
        servers.append(
            Server(
                "router",
                router_url,
                {"router": router.pid, "backend": backend.pid},
                f"python -m router ({router_url}, tunnel {tunnel}) + one backend "
                f"(python -m ptth {APP}), PTTH_MAX_BODY=0",
                [router, backend],
            )
        )
    if "hypercorn" in names:
        # hypercorn gets a socket bound here (port 0), so there is no pick-a-free-port race.
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        fd = listener.fileno()
        # --workers 0: serve in this one process (no multiprocessing supervisor to clean up).
        args = f"-m hypercorn --worker-class trio --workers 0 --bind fd://{fd} {APP}"
        direct = stack.enter_context(child("hypercorn", args.split(), pass_fds=(fd,)))
        children.append(direct)
        servers.append(
            Server(
                "hypercorn",
                url,
                {"hypercorn": direct.pid},
                f"hypercorn {version('hypercorn')} --worker-class trio --workers 0 ({url})",
                [direct],
            )
        )
    if "uvicorn" in names:
        # A port, not --fd: uvicorn wraps an inherited fd as AF_UNIX (no TCP_NODELAY then).
        port = free_port()
        loop, http = uvicorn_choice(uvicorn_loop, uvicorn_http)
        args = f"-m uvicorn {APP} --host 127.0.0.1 --port {port} --log-level warning"
        args += f" --no-access-log --loop {uvicorn_loop} --http {uvicorn_http}"
        uv = stack.enter_context(child("uvicorn", args.split()))
        children.append(uv)
        url = f"http://127.0.0.1:{port}"
        servers.append(
            Server(
                "uvicorn",
                url,
                {"uvicorn": uv.pid},
                f"uvicorn {version('uvicorn')} --loop {uvicorn_loop} --http {uvicorn_http} "
                f"(= {loop} + {http}; {url})",
                [uv],
                h2c=False,
            )
        )
    for server in servers:
        wait_ok(f"{server.url}/foo", children)
    return servers


# -- report ---------------------------------------------------------------------------------


def ms(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "-"
    return f"{seconds * 1000:.2f} ms"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def cpu_text(agg: dict[str, Any]) -> str:
    shares = agg.get("cpu_share", {})
    used = " + ".join(f"{name} {share * 100:.0f}%" for name, share in shares.items())
    return f"{used} (other {agg.get('other', 0.0) * 100:.0f}%)"


def cpu_per_unit(figure: Figure, agg: dict[str, Any]) -> str:
    total = sum(agg.get("cpu_seconds", {}).values())
    if figure.kind == "load" and agg.get("requests"):
        return f"{total / agg['requests'] * 1e6:,.0f} us/req"
    if figure.kind == "transfer" and agg.get("bytes"):
        moved = agg["bytes"] * agg["rounds"]
        return f"{total / moved * 1e9:.2f} s/GB"
    return "-"


@dataclass
class Target:
    name: str
    figure: str
    passed: bool | None  # None: could not be judged
    text: str


def judge(medians: dict[str, dict[str, dict[str, Any]]]) -> list[Target]:
    def get(figure: str, server: str, key: str) -> float | None:
        value = medians.get(figure, {}).get(server, {}).get(key)
        return None if value is None else float(value)

    targets = []
    r = ratio(get("http1_c50", "router", "rps"), get("http1_c50", REFERENCE, "rps"))
    targets.append(
        Target(
            "router req/s (HTTP/1.1, wrk c50) >= 1.0x hypercorn-trio direct",
            "http1_c50",
            None if r is None else r >= 1.0,
            x(r),
        )
    )
    p50 = get("http1_c1", "router", "p50")
    targets.append(
        Target(
            "router p50 at concurrency 1 (wrk c1) <= 0.8 ms",
            "http1_c1",
            None if p50 is None else p50 <= 0.8e-3,
            ms(p50),
        )
    )
    h2 = ratio(get("h2c", "router", "rps"), get("http1_c50", "router", "rps"))
    failed = get("h2c", "router", "failed")
    targets.append(
        Target(
            "router h2c req/s >= 0.9x router HTTP/1.1 (wrk c50), 0 failed",
            "h2c",
            None if h2 is None or failed is None else h2 >= 0.9 and failed == 0,
            f"{x(h2)}, {'-' if failed is None else f'{failed:.0f}'} failed",
        )
    )
    for figure, limit in (("download", 1000.0), ("upload", 600.0)):
        mbps = get(figure, "router", "mbps")
        targets.append(
            Target(
                f"router {figure} >= {limit:,.0f} MB/s",
                figure,
                None if mbps is None else mbps >= limit,
                "-" if mbps is None else f"{mbps:,.0f} MB/s ({mbps / limit:.2f}x)",
            )
        )
    return targets


def report(
    out: TextIO,
    plan: Plan,
    servers: list[Server],
    figures: list[Figure],
    medians: dict[str, dict[str, dict[str, Any]]],
    targets: list[Target],
    skipped: list[str],
) -> None:
    def say(text: str = "") -> None:
        print(text, file=out)

    rounds = f"median of {plan.rounds} rounds" if plan.rounds > 1 else "1 round"
    say(f"\nResults ({rounds}; failures summed over the rounds; x = ratio to {REFERENCE}):")
    for s in servers:
        say(f"  {s.name:<9} {s.description}")
    load = [f for f in figures if f.kind == "load"]
    if load:
        say(
            f"\n{'figure':<30} {'server':<9} {'req/s':>8} {'x':>6} {'p50':>9} {'x':>6} "
            f"{'p99':>9} {'requests':>8} {'failed':>6}  CPU (100% = one core)"
        )
        for f in load:
            ref = medians[f.key].get(REFERENCE, {})
            for s in servers:
                agg = medians[f.key].get(s.name)
                if agg is None:
                    say(f"{f.title:<30} {s.name:<9} n/a (no HTTP/2)")
                    continue
                if "rps" not in agg:
                    say(f"{f.title:<30} {s.name:<9} error: {'; '.join(agg['sample_errors'])}")
                    continue
                failed = agg.get("failed", agg.get("non2xx", 0) + agg.get("errors", 0))
                say(
                    f"{f.title:<30} {s.name:<9} {agg['rps']:>8,.0f} "
                    f"{x(ratio(agg['rps'], ref.get('rps'))):>6} {ms(agg['p50']):>9} "
                    f"{x(ratio(agg['p50'], ref.get('p50'))):>6} {ms(agg['p99']):>9} "
                    f"{agg['requests']:>8} {failed:>6}  {cpu_text(agg)}, "
                    f"{cpu_per_unit(f, agg)}"
                )
        for f in load:
            for name, agg in medians[f.key].items():
                parts = [
                    f"{k} {v}"
                    for k, v in agg.items()
                    if v and (k == "non2xx" or k.startswith(("errors_", "status_", "h2load_")))
                ]
                if parts:
                    say(f"  failures, {f.key} {name} (all rounds): {', '.join(parts)}")
    transfer = [f for f in figures if f.kind == "transfer"]
    if transfer:
        say(
            f"\n{'figure':<30} {'server':<9} {'MB/s':>8} {'x':>6} {'seconds':>8}  "
            "peak RSS (baseline -> peak); CPU"
        )
        for f in transfer:
            ref = medians[f.key].get(REFERENCE, {})
            title = f"{f.key} {plan.transfer // MIB} MiB, 1 conn"
            for s in servers:
                agg = medians[f.key].get(s.name, {})
                if "mbps" not in agg:
                    say(f"{title:<30} {s.name:<9} error: {'; '.join(agg.get('sample_errors', []))}")
                    continue
                rss = ", ".join(
                    f"{n} {agg[f'rss_base_{n}'] / MIB:.0f} -> {agg[f'rss_peak_{n}'] / MIB:.0f} MiB"
                    for n in s.pids
                )
                say(
                    f"{title:<30} {s.name:<9} {agg['mbps']:>8,.0f} "
                    f"{x(ratio(agg['mbps'], ref.get('mbps'))):>6} {agg['seconds']:>8.2f}  "
                    f"{rss}; {cpu_text(agg)}, {cpu_per_unit(f, agg)}"
                )
    h2 = medians.get("h2c", {}).get("router", {})
    h1 = medians.get("http1_c50", {}).get("router", {})
    if "rps" in h2 and "rps" in h1:
        say(
            f"\nrouter h2c / HTTP/1.1 (h2load c10 x m10 over wrk c50): "
            f"{x(ratio(h2['rps'], h1['rps']))}"
        )
    if targets:
        say("\nTargets (router):")
        for t in targets:
            verdict = {True: "PASS", False: "MISS", None: "n/a "}[t.passed]
            say(f"  {verdict}  {t.name:<62} {t.text}")
    for line in skipped:
        say(f"SKIPPED: {line}")


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


def progress(sample: Sample) -> str:
    m = sample.metrics
    head = f"  round {sample.round + 1} {sample.figure:<9} {sample.server:<9}"
    if sample.error:
        return f"{head} ERROR: {sample.error}"
    if "rps" in m:
        failed = m.get("failed", m.get("non2xx", 0) + m.get("errors", 0))
        text = f"{m['rps']:,.0f} req/s, p50 {ms(m['p50'])}, p99 {ms(m['p99'])}, failed {failed}"
    else:
        text = f"{m['mbps']:,.0f} MB/s in {m['seconds']:.2f} s"
    return f"{head} {text} (other processes {sample.other * 100:.0f}%)"


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwind through the ExitStack, which stops every child


def main() -> int:
    if sys.argv[1:2] == ["engine"]:
        import engine

        return engine.main(sys.argv[2:])
    parser = argparse.ArgumentParser(
        description="Router vs hypercorn-trio vs uvicorn, side by side, interleaved.",
        epilog="run.py engine --help: the other mode, ptth's driver vs a minimal h2 pair.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 round, 2 s per wrk figure, 2,000 h2c, 256 MiB"
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3; quick 1)")
    parser.add_argument(
        "--only",
        default=",".join(SERVERS),
        help=f"comma-separated servers out of {','.join(SERVERS)} (default: all)",
    )
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated figures to leave out: " + ",".join(f.key for f in FIGURES),
    )
    parser.add_argument("--uvicorn-loop", choices=["auto", "asyncio", "uvloop"], default="auto")
    parser.add_argument("--uvicorn-http", choices=["auto", "h11", "httptools"], default="auto")
    parser.add_argument("--json", metavar="PATH", help="write every number here ('-': stdout)")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each measurement, wait up to this long for other processes to go quiet",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminated)
    out = sys.stderr if args.json == "-" else sys.stdout

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan = Plan(**{**asdict(plan), "rounds": args.rounds})
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - set(SERVERS)
    if unknown or not names:
        parser.error(f"--only: unknown server(s) {sorted(unknown)}; pick from {SERVERS}")
    names = [n for n in SERVERS if n in names]
    skip = {n.strip() for n in args.skip.split(",") if n.strip()}
    if skip - {f.key for f in FIGURES}:
        parser.error(f"--skip: unknown figure(s) {sorted(skip - {f.key for f in FIGURES})}")

    tools = {tool: shutil.which(tool) for tool in ("wrk", "h2load", "curl")}
    skipped = [f"{tool} not installed: its figures are not measured" for tool, p in tools.items()
               if p is None]  # fmt: skip
    figures = [f for f in FIGURES if tools[f.tool] and f.key not in skip]
    for tool, path in tools.items():
        if path is None:
            keys = ", ".join(f.key for f in FIGURES if f.tool == tool)
            say(f"NOTE: {tool} is not installed; skipping {keys}")
    say(f"machine: {machine()}")
    tool_versions = {}
    for tool, path in tools.items():
        if path:
            flag = "-v" if tool == "wrk" else "--version"
            text = subprocess.run([path, flag], capture_output=True, text=True)
            line = (text.stdout or text.stderr).strip().splitlines()
            tool_versions[tool] = line[0] if line else "?"
    for tool, text in tool_versions.items():
        say(f"{tool}: {text}")

    samples: list[Sample] = []
    started = time.monotonic()
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        try:
            servers = start_servers(stack, names, args.uvicorn_loop, args.uvicorn_http)
        except (RuntimeError, TimeoutError) as exc:  # a server exited or never answered
            say(f"ERROR: the servers did not start: {exc}")
            return 2
        for s in servers:
            say(f"{s.name}: {s.description}")
        everyone = {f"{s.name}:{n}": pid for s in servers for n, pid in s.pids.items()}

        def alive() -> None:
            for s in servers:
                for c in s.children:
                    c.check_alive()

        def settle() -> None:
            if args.wait_idle > 0:
                other = wait_idle(everyone, args.wait_idle)
                if other >= 0.15:
                    say(f"  (machine still busy: other processes at {other * 100:.0f}%)")

        def applicable(figure: Figure) -> list[Server]:
            return [s for s in servers if s.h2c or figure.key != "h2c"]

        say("warm-up (1 s of wrk, 1,000 h2c requests, 16 MiB each way, per server)")
        for figure in figures:
            for server in applicable(figure):
                warm = measure(figure, server, plan, scratch, -1, warm=True)
                if warm.error:
                    say(f"  warm-up {figure.key} {server.name}: {warm.error}")
        alive()
        for round_ in range(plan.rounds):
            for figure in figures:
                order = applicable(figure)
                shift = round_ % len(order) if order else 0
                for server in order[shift:] + order[:shift]:
                    settle()
                    sample = measure(figure, server, plan, scratch, round_)
                    samples.append(sample)
                    say(progress(sample))
                    alive()
        say(f"measured in {time.monotonic() - started:.0f} s")
        for s in servers:
            for c in s.children:
                noisy = [
                    line for line in c.lines if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line)
                ]
                if noisy:
                    say(f"{c.name} logged {len(noisy)} warnings/errors (of its last 200 lines):")
                    for line in noisy[-5:]:
                        say(f"  {line[:300]}")

    medians = {
        f.key: {
            s.name: aggregate([m for m in samples if m.figure == f.key and m.server == s.name])
            for s in servers
            if s.h2c or f.key != "h2c"
        }
        for f in figures
    }
    targets = judge(medians)
    report(out, plan, servers, figures, medians, targets, skipped)
    busy = [s.other for s in samples]
    if busy and max(busy) > 0.25:
        say(
            f"\nWARNING: other processes used up to {max(busy) * 100:.0f}% of a core during "
            "the measurements; the numbers are not from a quiet machine (try --wait-idle 120)"
        )
    errors = [s for s in samples if s.error]
    if args.json:
        ratios = {
            f.key: {
                name: {
                    k: ratio(agg.get(k), medians[f.key].get(REFERENCE, {}).get(k))
                    for k in ("rps", "p50", "p99", "mbps")
                    if k in agg
                }
                for name, agg in medians[f.key].items()
            }
            for f in figures
        }
        document = {
            "machine": machine(),
            "command": [sys.executable, *sys.argv],
            "plan": asdict(plan),
            "reference": REFERENCE,
            "servers": {s.name: {"url": s.url, "description": s.description} for s in servers},
            "tools": tool_versions,
            "skipped": skipped,
            "samples": [asdict(s) for s in samples],
            "medians": medians,
            "ratios_to_reference": ratios,
            "targets": [asdict(t) for t in targets],
            "errors": [f"{s.figure} {s.server} round {s.round + 1}: {s.error}" for s in errors],
        }
        text = json.dumps(document, indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
            say(f"\nJSON: {args.json}")
    for s in errors:
        say(f"ERROR: {s.figure} {s.server} round {s.round + 1}: {s.error}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

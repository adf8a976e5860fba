#!/usr/bin/env python3
"""``python -m router --workers N``: requests/s with 1 and 2 workers, interleaved runs.

ARCHITECTURE.md, "Several cores". Each configuration starts its own router (``--workers 1`` or
``2``; with 2, each worker its own SO_REUSEPORT sockets, or ``--reuse-port false``: one socket
shared by both) and 1 or 2 backends (``python -m ptth benchmarks.app:app``, which holds a tunnel
to every worker), then measures HTTP/1.1 ``GET /foo`` with wrk (50 connections, 2 threads,
keep-alive) through the front end. Configurations rotate within each round; the table shows the
median requests/s over the rounds, p99, failures, the CPU of the router's processes and of the
backends (100 % = one core), how the router's CPU split over its workers (the balance of the
kernel's spreading: 50/50 is even), and what every other process on the machine used meanwhile
(the machine's other load). Then 2 s of the same with ``Connection: close`` (a new connection per
request), where the workers' CPU split shows how evenly new connections are spread. Printed only;
no test asserts these numbers.

    .venv/bin/python benchmarks/workers.py [--rounds 2] [--seconds 4] [--json PATH]

Keep runs short: each wrk figure is ``--seconds`` (at most 10), the whole run about 2 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass

from machine import machine
from run import START_TIMEOUT, Child, CpuMeter, MeasureError, child, run_tool, wait_ok, wrk

APP = "benchmarks.app:app"
READY = re.compile(r"front end on (http://[^,\s]+), tunnel port on ([^:\s]+:\d+)")
STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")
CLOSE_SECONDS = 2.0
REGISTERED = re.compile(r"^\S+ \S+ INFO (?:worker (\d+) )?router\.tunnel: tunnel \w+: registered")


@dataclass(frozen=True)
class Setup:
    workers: int
    backends: int
    reuse_port: bool = True

    @property
    def name(self) -> str:
        how = "" if self.workers == 1 else (" reuseport" if self.reuse_port else " shared")
        return f"{self.workers}w{how}, {self.backends}b"


SETUPS = [
    Setup(1, 1),
    Setup(2, 1),
    Setup(1, 2),
    Setup(2, 2),
    Setup(2, 2, reuse_port=False),
]


@dataclass(frozen=True)
class Sample:
    rps: float
    p99_ms: float
    failed: int
    router_cpu: float  # every router process, 1.0 = one core
    backend_cpu: float
    split: tuple[float, ...]  # each worker's share of the router's CPU
    other: float  # every other process on the machine
    close_rps: float  # wrk with "Connection: close": a new connection per request
    close_split: tuple[float, ...]  # ... and how the workers shared it (connections, mostly)


def tunnels_up(router: Child, setup: Setup) -> bool:
    count = sum(1 for line in list(router.lines) if REGISTERED.search(line))
    return count >= setup.workers * setup.backends


def measure(setup: Setup, seconds: float) -> Sample:
    with contextlib.ExitStack() as stack:
        args = ["-m", "router", "--http", "127.0.0.1:0", "--tunnel", "127.0.0.1:0"]
        args += ["--access-log", "false", "--workers", str(setup.workers)]
        args += ["--reuse-port", "true" if setup.reuse_port else "false", "--drain-timeout", "2"]
        router = stack.enter_context(child("router", args, READY))
        try:
            return _figures(setup, seconds, stack, router)
        except FileNotFoundError as exc:  # /proc/PID gone: a process died during a figure
            tail = "\n".join(list(router.lines)[-40:])
            raise MeasureError(f"a process exited during the run ({exc}):\n{tail}") from None


def _figures(setup: Setup, seconds: float, stack: contextlib.ExitStack, router: Child) -> Sample:
    ready = router.wait_ready(START_TIMEOUT)
    url, tunnel = ready[1], ready[2]
    backends = [
        stack.enter_context(
            child(f"backend{i}", ["-m", "ptth", APP, "--router", tunnel, "--log-level", "INFO"])
        )
        for i in range(setup.backends)
    ]
    deadline = time.monotonic() + START_TIMEOUT
    while not tunnels_up(router, setup):
        if time.monotonic() > deadline:
            raise MeasureError(f"{setup.name}: tunnels not all up:\n" + "\n".join(router.lines))
        router.check_alive()
        time.sleep(0.05)
    wait_ok(f"{url}/foo", [router, *backends])
    workers = {f"w{m[1]}": int(m[2]) for line in router.lines if (m := STARTED.search(line))}
    routers = workers if setup.workers > 1 else {"w0": router.pid}
    pids = {**routers, **{f"b{i}": b.pid for i, b in enumerate(backends)}}
    wrk(f"{url}/foo", 50, 2, 1.0)  # warm-up: connections, allocator, tunnel windows
    with CpuMeter(pids) as cpu:
        result = wrk(f"{url}/foo", 50, 2, seconds)
    router_cpu = sum(cpu.shares[n] for n in routers)
    split = tuple(cpu.shares[n] / router_cpu if router_cpu else 0.0 for n in sorted(routers))
    # New connections all the time: how evenly the kernel (or the shared socket) hands
    # connections to workers, seen as each worker's share of the router's CPU.
    args = ["wrk", "-t2", "-c50", f"-d{CLOSE_SECONDS:g}s", "-H", "Connection: close"]
    with CpuMeter(routers) as close_cpu:
        out = run_tool([*args, f"{url}/foo"], timeout=CLOSE_SECONDS + 30)
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise MeasureError(f"cannot parse wrk output:\n{out}")
    close_total = sum(close_cpu.shares.values())
    close_split = tuple(
        close_cpu.shares[n] / close_total if close_total else 0.0 for n in sorted(routers)
    )
    return Sample(
        rps=result["rps"],
        p99_ms=result["p99"] * 1000,
        failed=int(result["non2xx"] + result["errors"]),
        router_cpu=router_cpu,
        backend_cpu=sum(cpu.shares[f"b{i}"] for i in range(setup.backends)),
        split=split,
        other=cpu.other,
        close_rps=float(found[1]),
        close_split=close_split,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--json", help="write every sample here ('-': stdout)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 1
    seconds = min(args.seconds, 10.0)
    with open("/proc/loadavg") as f:
        load_before = f.read().split()[:3]
    samples: dict[str, list[Sample]] = {s.name: [] for s in SETUPS}
    started = time.monotonic()
    for round_index in range(args.rounds):
        order = SETUPS[round_index % len(SETUPS) :] + SETUPS[: round_index % len(SETUPS)]
        for setup in order:
            try:
                samples[setup.name].append(measure(setup, seconds))
            except MeasureError as exc:
                print(f"{setup.name}: {exc}", file=sys.stderr)
                return 1
    took = time.monotonic() - started
    with open("/proc/loadavg") as f:
        load_after = f.read().split()[:3]
    out = sys.stderr if args.json == "-" else sys.stdout
    print(f"machine: {machine()}", file=out)
    print(f"load average before {' '.join(load_before)}, after {' '.join(load_after)}", file=out)
    print(f"{args.rounds} round(s) x {len(SETUPS)} setups, wrk -c50 -t2 {seconds:g} s each, "
          f"{took:.0f} s in all", file=out)  # fmt: skip
    header = f"{'setup':<20} {'req/s':>8} {'(runs)':>16} {'p99 ms':>7} {'fail':>5} "
    header += f"{'router':>7} {'backends':>8} {'split':>9} {'other':>6} "
    header += f"{'close req/s':>11} {'split':>9}"
    print(header, file=out)
    med = statistics.median
    for name, runs in samples.items():
        rps = [r.rps for r in runs]
        split = "/".join(
            f"{100 * med(r.split[i] for r in runs):.0f}" for i in range(len(runs[0].split))
        )
        close_split = "/".join(
            f"{100 * med(r.close_split[i] for r in runs):.0f}"
            for i in range(len(runs[0].close_split))
        )
        print(
            f"{name:<20} {med(rps):>8.0f} {' '.join(f'{v:.0f}' for v in rps):>16} "
            f"{med(r.p99_ms for r in runs):>7.1f} {sum(r.failed for r in runs):>5} "
            f"{100 * med(r.router_cpu for r in runs):>6.0f}% "
            f"{100 * med(r.backend_cpu for r in runs):>7.0f}% {split:>9} "
            f"{100 * med(r.other for r in runs):>5.0f}% "
            f"{med(r.close_rps for r in runs):>11.0f} {close_split:>9}",
            file=out,
        )
    if args.json:
        data = {name: [asdict(r) for r in runs] for name, runs in samples.items()}
        text = json.dumps({"machine": machine(), "samples": data}, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

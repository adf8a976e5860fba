#!/usr/bin/env python3
"""Load-test client for a PTTH router, modelled after the original PTTH demo's ``user``.

It fires ``--requests`` GET requests at ``--url`` from ``--concurrency`` workers that share
one request counter, prints every exchange as it happens::

    > GET http://127.0.0.1:8888/foo
    < 200 OK "bar"

and finishes with a summary (throughput, latency percentiles, status codes and the
distribution of the ``X-Backend`` response header, i.e. which backend served what)::

    requests      200
    errors        0
    duration      1.234 s
    requests/s    162.1
    latency p50   5.1 ms   p90 9.0 ms   p99 14.2 ms   max 20.3 ms
    statuses      200=200
    backends      backend-a=101 (50.5%)  backend-b=99 (49.5%)

Transport failures and responses with status >= 500 count as errors; the exit code is 1
if there were any, else 0.  ``--http2`` speaks HTTP/2 (for ``http://`` URLs that is h2c
with prior knowledge).

``run_load()`` is the reusable core; tests and the demo call it directly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO

import httpx

DEFAULT_URL = "http://127.0.0.1:8888/foo"
BACKEND_HEADER = "X-Backend"
NO_BACKEND = "(none)"
BODY_PREVIEW_CHARS = 60


@dataclass
class Summary:
    """Outcome of one load run.  Times (``duration``, ``p50`` ... ``max_latency``) are seconds."""

    requests: int
    errors: int
    duration: float
    rps: float
    p50: float
    p90: float
    p99: float
    statuses: dict[int, int]
    backends: dict[str, int]
    max_latency: float = 0.0
    #: error kind -> count; exception type names, or ``"HTTP 503"`` for 5xx responses
    failures: dict[str, int] = field(default_factory=dict)


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list; 0.0 for an empty list."""
    if not sorted_values:
        return 0.0
    rank = math.ceil(pct / 100.0 * len(sorted_values))
    index = min(max(rank, 1), len(sorted_values)) - 1
    return sorted_values[index]


def body_preview(content: bytes, limit: int = BODY_PREVIEW_CHARS) -> str:
    """Double-quoted repr of the body text, cut to ``limit`` characters."""
    text = content.decode("utf-8", errors="replace")
    if len(text) > limit:
        return json.dumps(text[:limit], ensure_ascii=False) + "..."
    return json.dumps(text, ensure_ascii=False)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000.0:.1f} ms"


def format_summary(summary: Summary) -> str:
    """The human-readable summary block (no trailing newline)."""
    label = "{:<14}".format
    if summary.statuses:
        statuses = "  ".join(f"{code}={n}" for code, n in sorted(summary.statuses.items()))
    else:
        statuses = "-"
    answered = sum(summary.backends.values())
    if answered:
        ordered = sorted(summary.backends.items(), key=lambda kv: (-kv[1], kv[0]))
        backends = "  ".join(f"{name}={n} ({100.0 * n / answered:.1f}%)" for name, n in ordered)
    else:
        backends = "-"
    if answered:
        latency = (
            f"{label('latency p50')}{_ms(summary.p50)}   p90 {_ms(summary.p90)}   "
            f"p99 {_ms(summary.p99)}   max {_ms(summary.max_latency)}"
        )
    else:
        latency = f"{label('latency')}-"
    lines = [
        f"{label('requests')}{summary.requests}",
        f"{label('errors')}{summary.errors}",
        f"{label('duration')}{summary.duration:.3f} s",
        f"{label('requests/s')}{summary.rps:.1f}",
        latency,
        f"{label('statuses')}{statuses}",
        f"{label('backends')}{backends}",
    ]
    if summary.failures:
        ordered_failures = sorted(summary.failures.items(), key=lambda kv: (-kv[1], kv[0]))
        lines.append(f"{label('failures')}" + "  ".join(f"{k}={n}" for k, n in ordered_failures))
    return "\n".join(lines)


async def run_load(
    url: str = DEFAULT_URL,
    requests: int = 200,
    concurrency: int = 10,
    http2: bool = False,
    quiet: bool = False,
    timeout: float = 10.0,
    out: TextIO = sys.stdout,
) -> Summary:
    """Send ``requests`` GETs to ``url`` from ``concurrency`` workers and summarise them.

    Per-request lines go to ``out`` unless ``quiet``; the summary is returned, not printed.
    """
    if requests < 0:
        raise ValueError("requests must be >= 0")
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")

    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    backends: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    issued = 0

    def emit(line: str) -> None:
        if not quiet:
            print(line, file=out)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal issued
        # Single-threaded event loop: check-and-increment without an await is atomic.
        while issued < requests:
            issued += 1
            emit(f"> GET {url}")
            started = time.perf_counter()
            try:
                response = await client.get(url)
            except (httpx.HTTPError, OSError) as exc:
                kind = type(exc).__name__
                failures[kind] += 1
                emit(f"! {kind}: {exc}")
                continue
            latencies.append(time.perf_counter() - started)
            statuses[response.status_code] += 1
            backends[response.headers.get(BACKEND_HEADER, NO_BACKEND)] += 1
            # Some servers (hypercorn) send no reason phrase; show the standard one then.
            reason = response.reason_phrase or httpx.codes.get_reason_phrase(response.status_code)
            emit(f"< {response.status_code} {reason} {body_preview(response.content)}")
            if response.status_code >= 500:
                failures[f"HTTP {response.status_code}"] += 1

    workers = min(concurrency, requests) if requests else 0
    limits = httpx.Limits(max_connections=max(concurrency, 1), max_keepalive_connections=None)
    started = time.perf_counter()
    async with httpx.AsyncClient(
        http1=not http2,
        http2=http2,
        timeout=httpx.Timeout(timeout),
        limits=limits,
    ) as client:
        await asyncio.gather(*(worker(client) for _ in range(workers)))
    duration = time.perf_counter() - started

    latencies.sort()
    return Summary(
        requests=requests,
        errors=sum(failures.values()),
        duration=duration,
        rps=requests / duration if duration > 0 else 0.0,
        p50=percentile(latencies, 50),
        p90=percentile(latencies, 90),
        p99=percentile(latencies, 99),
        statuses=dict(statuses),
        backends=dict(backends),
        max_latency=latencies[-1] if latencies else 0.0,
        failures=dict(failures),
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Load-test a PTTH router (or any HTTP server) with concurrent GETs."
    )
    parser.add_argument("--url", default=DEFAULT_URL, help=f"target URL (default {DEFAULT_URL})")
    parser.add_argument(
        "--requests",
        type=_non_negative_int,
        default=200,
        metavar="N",
        help="total requests (default 200)",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=10,
        metavar="C",
        help="concurrent workers (default 10)",
    )
    parser.add_argument(
        "--http2",
        action="store_true",
        help="use HTTP/2 only (h2c prior knowledge for http:// URLs)",
    )
    parser.add_argument("--quiet", action="store_true", help="suppress per-request lines")
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=10.0,
        metavar="SECONDS",
        help="per-request timeout in seconds (default 10)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = asyncio.run(
            run_load(
                url=args.url,
                requests=args.requests,
                concurrency=args.concurrency,
                http2=args.http2,
                quiet=args.quiet,
                timeout=args.timeout,
            )
        )
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if not args.quiet:
        print()
    print(format_summary(summary))
    return 1 if summary.errors else 0


if __name__ == "__main__":
    sys.exit(main())

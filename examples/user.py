#!/usr/bin/env python3
"""Load-test client for a PTTH router, modelled after the original PTTH demo's ``user``.

It fires GET requests at ``--url`` from ``--concurrency`` workers, either ``--requests N`` of
them in all (default 200) or as many as fit in ``--duration SECONDS`` (the two are mutually
exclusive; either way the run stops by itself).  Every exchange is printed as it happens::

    > GET http://127.0.0.1:8888/foo
    < 200 OK "bar"

and the run finishes with a summary (throughput, latency percentiles, status codes and the
distribution of the ``X-Backend`` response header, i.e. which backend served what)::

    requests      200
    errors        0
    duration      1.234 s
    requests/s    162.1
    latency p50   5.1 ms   p90 9.0 ms   p99 14.2 ms   max 20.3 ms
    statuses      200=200
    backends      backend-a=101 (50.5%)  backend-b=99 (49.5%)

Output depends on where it goes:

* stdout and stderr both a terminal: a live progress bar (requests done / total, or elapsed /
  duration, the current requests/s and the errors so far) under the per-request lines, and
  the summary as ``rich`` tables;
* anything else (a pipe, a file, the tests, ``make demo`` captured): plain text as above;
* ``--json``: one JSON object with the same figures and nothing else on stdout (no
  per-request lines, no bar), for scripts; latencies there are in milliseconds, ``duration``
  in seconds, ``backend_shares`` fractions of the answered requests (they sum to 1).

``--requests`` counts every request sent, and the run waits for all of them.  With
``--duration`` workers keep sending until the time is up; requests still in flight then are
abandoned (neither counted nor timed), so ``requests`` is the number that completed.

Transport failures (refused connections, timeouts, broken responses) and responses with
status >= 500 count as errors and are listed by kind, never as a traceback.  If no
connection can be made at all (every worker's first attempt fails to connect) the run stops
at once and says so on stderr instead of retrying a dead address for the whole run.  Ctrl-C
stops sending, lets in-flight requests finish and prints the summary of what was done (a
second Ctrl-C abandons them).  Exit status: 0 if every request got a response below 500,
1 if any failed, 2 for a usage error, 130 if interrupted.  ``--http2`` speaks HTTP/2 (for
``http://`` URLs that is h2c with prior knowledge).

``run_load()`` is the reusable core; the tests call it directly (the demo runs this script).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

DEFAULT_URL = "http://127.0.0.1:8888/foo"
DEFAULT_REQUESTS = 200
BACKEND_HEADER = "X-Backend"
NO_BACKEND = "(none)"
BODY_PREVIEW_CHARS = 60
TICK_SECONDS = 0.2  # how often run_load reports progress to ``on_tick``
RATE_WINDOW_SECONDS = 2.0  # the progress bar's "current" req/s is over this window


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
    #: set when the run stopped because no connection could be made: the last error's text
    unreachable: str | None = None
    #: the run was stopped early from outside (``stop`` set, i.e. Ctrl-C)
    interrupted: bool = False

    @property
    def answered(self) -> int:
        """Requests that got an HTTP response (of any status), i.e. those with a latency."""
        return sum(self.backends.values())

    def shares(self) -> dict[str, float]:
        """Each backend's fraction of the answered requests, largest first (sums to 1)."""
        answered = self.answered
        return {name: n / answered for name, n in _by_count(self.backends)} if answered else {}


@dataclass(frozen=True)
class Tick:
    """A progress report from a running ``run_load``: completed requests, errors, seconds."""

    done: int
    errors: int
    elapsed: float


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


def _by_count(counts: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def format_summary(summary: Summary) -> str:
    """The human-readable summary block (no trailing newline)."""
    label = "{:<14}".format
    if summary.statuses:
        statuses = "  ".join(f"{code}={n}" for code, n in sorted(summary.statuses.items()))
    else:
        statuses = "-"
    answered = summary.answered
    if answered:
        backends = "  ".join(
            f"{name}={n} ({100.0 * n / answered:.1f}%)" for name, n in _by_count(summary.backends)
        )
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
        failures = "  ".join(f"{k}={n}" for k, n in _by_count(summary.failures))
        lines.append(f"{label('failures')}{failures}")
    return "\n".join(lines)


def summary_dict(summary: Summary) -> dict[str, Any]:
    """The figures of ``summary`` as JSON-ready data (what ``--json`` prints).

    ``duration`` is in seconds, ``latency_ms`` in milliseconds (``null`` values if no request
    got a response); ``statuses`` is keyed by the status code as a string.
    """

    def ms(seconds: float) -> float | None:
        return round(seconds * 1000.0, 3) if summary.answered else None

    return {
        "requests": summary.requests,
        "errors": summary.errors,
        "duration": round(summary.duration, 6),
        "rps": round(summary.rps, 3),
        "latency_ms": {
            "p50": ms(summary.p50),
            "p90": ms(summary.p90),
            "p99": ms(summary.p99),
            "max": ms(summary.max_latency),
        },
        "statuses": {str(code): n for code, n in sorted(summary.statuses.items())},
        "backends": dict(_by_count(summary.backends)),
        "backend_shares": {name: round(f, 6) for name, f in summary.shares().items()},
        "failures": dict(_by_count(summary.failures)),
        "unreachable": summary.unreachable is not None,
        "interrupted": summary.interrupted,
    }


async def run_load(
    url: str = DEFAULT_URL,
    requests: int | None = None,
    concurrency: int = 10,
    http2: bool = False,
    quiet: bool = False,
    timeout: float = 10.0,
    out: TextIO | None = None,
    *,
    duration: float | None = None,
    on_tick: Callable[[Tick], None] | None = None,
    stop: asyncio.Event | None = None,
) -> Summary:
    """Send GETs to ``url`` from ``concurrency`` workers and summarise them.

    The run is bounded by ``requests`` (default 200) or by ``duration`` seconds, not both;
    with ``duration``, requests still in flight when the time is up are abandoned.
    Per-request lines go to ``out`` (default: ``sys.stdout`` at call time) unless ``quiet``;
    ``on_tick`` (if given) gets a :class:`Tick` every ``TICK_SECONDS`` and one at the end.
    Once ``stop`` is set no new request starts and the run ends when those in flight are done.
    If every worker's first attempt fails to connect, the run stops there (``unreachable``).
    The summary is returned, not printed.
    """
    if requests is not None and duration is not None:
        raise ValueError("give requests or duration, not both")
    if duration is None and requests is None:
        requests = DEFAULT_REQUESTS
    if requests is not None and requests < 0:
        raise ValueError("requests must be >= 0")
    if duration is not None and not duration > 0:
        raise ValueError("duration must be > 0")
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    stream = sys.stdout if out is None else out

    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    backends: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    issued = 0
    done = 0
    answered = 0
    connect_failures = 0  # before the first response; reaching ``workers`` means unreachable
    unreachable: str | None = None
    started = time.perf_counter()
    deadline = None if duration is None else started + duration

    def emit(line: str) -> None:
        if not quiet:
            print(line, file=stream)

    def more() -> bool:
        if unreachable is not None or (stop is not None and stop.is_set()):
            return False
        if deadline is not None:
            return time.perf_counter() < deadline
        assert requests is not None
        return issued < requests

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal issued, done, answered, connect_failures, unreachable
        # Single-threaded event loop: check-and-increment without an await is atomic.
        while more():
            issued += 1
            if not quiet:
                emit(f"> GET {url}")
            sent = time.perf_counter()
            try:
                response = await client.get(url)
            except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
                kind = type(exc).__name__
                failures[kind] += 1
                done += 1
                if not quiet:
                    emit(f"! {kind}: {exc}")
                if not answered and isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                    connect_failures += 1
                    if connect_failures >= workers:
                        unreachable = f"{kind}: {exc}"
                continue
            latencies.append(time.perf_counter() - sent)
            answered += 1
            statuses[response.status_code] += 1
            backends[response.headers.get(BACKEND_HEADER, NO_BACKEND)] += 1
            if response.status_code >= 500:
                failures[f"HTTP {response.status_code}"] += 1
            done += 1
            if not quiet:
                # Some servers (hypercorn) send no reason phrase; show the standard one then.
                code = response.status_code
                reason = response.reason_phrase or httpx.codes.get_reason_phrase(code)
                emit(f"< {code} {reason} {body_preview(response.content)}")

    def tick() -> None:
        if on_tick is not None:
            on_tick(Tick(done, sum(failures.values()), time.perf_counter() - started))

    async def ticker() -> None:
        while True:
            tick()
            await asyncio.sleep(TICK_SECONDS)

    if deadline is not None:
        workers = concurrency
    else:
        assert requests is not None
        workers = min(concurrency, requests)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=None)
    async with httpx.AsyncClient(
        http1=not http2,
        http2=http2,
        timeout=httpx.Timeout(timeout),
        limits=limits,
    ) as client:
        tasks = [asyncio.create_task(worker(client)) for _ in range(workers)]
        ticking = asyncio.create_task(ticker()) if on_tick is not None else None
        try:
            if tasks:
                remaining = None if deadline is None else max(deadline - time.perf_counter(), 0)
                await asyncio.wait(tasks, timeout=remaining)
        finally:
            # Past the deadline (or on cancellation from outside): abandon what is in flight.
            for task in [*tasks, ticking]:
                if task is not None:
                    task.cancel()
            results = await asyncio.gather(
                *tasks, *([ticking] if ticking else []), return_exceptions=True
            )
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result
    elapsed = time.perf_counter() - started
    tick()

    latencies.sort()
    return Summary(
        requests=done,
        errors=sum(failures.values()),
        duration=elapsed,
        rps=done / elapsed if elapsed > 0 else 0.0,
        p50=percentile(latencies, 50),
        p90=percentile(latencies, 90),
        p99=percentile(latencies, 99),
        statuses=dict(statuses),
        backends=dict(backends),
        max_latency=latencies[-1] if latencies else 0.0,
        failures=dict(failures),
        unreachable=unreachable,
        interrupted=stop is not None and stop.is_set(),
    )


# --- terminal output (rich) ----------------------------------------------------------------


def terminal_console() -> Console | None:
    """A rich console on stdout, but only if stdout and stderr are both a terminal.

    Either one redirected means someone is capturing the output: then it stays plain text.
    """
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        return None
    console = Console()
    return console if console.is_interactive else None


class ProgressBar:
    """The live bar: requests done / total (or elapsed / duration), current req/s, errors."""

    def __init__(self, console: Console, requests: int | None, duration: float | None) -> None:
        self.requests = requests
        self.duration = duration
        self.samples: deque[tuple[float, int]] = deque()
        self.progress: Progress = Progress(
            TextColumn("[bold]load[/]"),
            BarColumn(),
            TextColumn("{task.fields[count]}"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[errors]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        total = float(duration) if duration is not None else float(requests or 0)
        self.task: TaskID = self.progress.add_task(
            "load", total=total, count="", rate="", errors=""
        )
        self.update(Tick(0, 0, 0.0))

    def update(self, tick: Tick) -> None:
        self.samples.append((tick.elapsed, tick.done))
        while len(self.samples) > 2 and tick.elapsed - self.samples[0][0] > RATE_WINDOW_SECONDS:
            self.samples.popleft()
        first_t, first_done = self.samples[0]
        span = tick.elapsed - first_t
        rate = (tick.done - first_done) / span if span > 0 else 0.0
        if self.duration is not None:
            count = f"{min(tick.elapsed, self.duration):.1f}/{self.duration:g} s  {tick.done} req"
            completed = min(tick.elapsed, self.duration)
        else:
            count = f"{tick.done}/{self.requests} req"
            completed = float(tick.done)
        style = "red" if tick.errors else "green"
        self.progress.update(
            self.task,
            completed=completed,
            count=count,
            rate=f"{rate:,.1f} req/s",
            errors=f"[{style}]{tick.errors} errors[/]",
        )

    @contextlib.contextmanager
    def shown(self) -> Iterator[None]:
        with self.progress:
            yield


def print_tables(console: Console, summary: Summary) -> None:
    """The summary as rich tables: overview and latency, statuses, backends, failures."""
    overview = Table(title="load test", title_justify="left", show_header=False)
    overview.add_column("figure", style="bold")
    overview.add_column("value", justify="right")
    overview.add_row("requests", str(summary.requests))
    style = "red" if summary.errors else "green"
    overview.add_row("errors", f"[{style}]{summary.errors}[/]")
    overview.add_row("duration", f"{summary.duration:.3f} s")
    overview.add_row("requests/s", f"{summary.rps:.1f}")
    for name, value in (
        ("latency p50", summary.p50),
        ("latency p90", summary.p90),
        ("latency p99", summary.p99),
        ("latency max", summary.max_latency),
    ):
        overview.add_row(name, _ms(value) if summary.answered else "-")
    console.print(overview)

    def shares(title: str, heading: str, rows: list[tuple[str, int]], total: int) -> None:
        table = Table(title=title, title_justify="left")
        table.add_column(heading)
        table.add_column("count", justify="right")
        table.add_column("share", justify="right")
        for name, n in rows:
            table.add_row(name, str(n), f"{100.0 * n / total:.1f}%" if total else "-")
        console.print(table)

    answered = summary.answered
    if summary.statuses:
        rows = [(str(code), n) for code, n in sorted(summary.statuses.items())]
        shares("statuses", "status", rows, answered)
    if summary.backends:
        shares("backends", BACKEND_HEADER, _by_count(summary.backends), answered)
    if summary.failures:
        shares("failures", "kind", _by_count(summary.failures), summary.requests)


# --- command line --------------------------------------------------------------------------


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
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _http_url(text: str) -> str:
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise argparse.ArgumentTypeError(f"not a URL: {text!r} ({exc})") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise argparse.ArgumentTypeError(f"want an http:// or https:// URL with a host: {text!r}")
    return text


EPILOG = """\
output: per-request lines then a summary (requests, errors, duration, requests/s, latency
p50/p90/p99/max, statuses, backends by their X-Backend header, failures by kind).  On a
terminal (stdout and stderr both) there is a live progress bar and the summary is a table;
--json prints one JSON object instead and nothing else on stdout.

exit status: 0 if every request got a response with status < 500; 1 if any request failed
(a refused connection, a timeout, a broken response, a 5xx status), including when the URL
cannot be reached at all (then the run stops after the first attempts and says so on
stderr); 2 for a usage error; 130 if interrupted with Ctrl-C (the summary is still printed).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Load-test a PTTH router (or any HTTP server) with concurrent GETs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--url",
        type=_http_url,
        default=DEFAULT_URL,
        help=f"target URL (default {DEFAULT_URL})",
    )
    bound = parser.add_mutually_exclusive_group()
    bound.add_argument(
        "--requests",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help=f"total requests (default {DEFAULT_REQUESTS} unless --duration is given)",
    )
    bound.add_argument(
        "--duration",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="send requests for this long instead of a fixed number (in-flight ones at the "
        "end are abandoned)",
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
        "--json",
        action="store_true",
        help="print only one JSON object with the results (implies --quiet, no progress bar)",
    )
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
    quiet = args.quiet or args.json
    console = None if args.json else terminal_console()
    requests = args.requests
    if requests is None and args.duration is None:
        requests = DEFAULT_REQUESTS
    bar = ProgressBar(console, requests, args.duration) if console is not None else None
    # Under the bar, per-request lines are written in one batch per tick: rich renders each
    # write above the bar, and one write per line would halve the request rate.
    batch = io.StringIO() if bar is not None and not quiet else None

    def on_tick(tick: Tick) -> None:
        assert bar is not None
        if batch is not None and batch.tell():
            sys.stdout.write(batch.getvalue())
            batch.seek(0)
            batch.truncate()
        bar.update(tick)

    async def interruptible() -> Summary:
        # The first Ctrl-C stops new requests (the summary still comes); the handler is then
        # removed, so a second one raises KeyboardInterrupt and abandons the run.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_sigint() -> None:
            stop.set()
            loop.remove_signal_handler(signal.SIGINT)

        with contextlib.suppress(NotImplementedError, RuntimeError):  # no handlers on Windows
            loop.add_signal_handler(signal.SIGINT, on_sigint)
        try:
            return await run_load(
                url=args.url,
                requests=requests,
                duration=args.duration,
                concurrency=args.concurrency,
                http2=args.http2,
                quiet=quiet,
                timeout=args.timeout,
                out=batch,
                on_tick=on_tick if bar is not None else None,
                stop=stop,
            )
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGINT)

    def load() -> Summary:
        return asyncio.run(interruptible())

    try:
        if bar is not None:
            # While the bar is live, rich routes sys.stdout (the per-request lines) above it.
            with bar.shown():
                summary = load()
        else:
            summary = load()
    except KeyboardInterrupt:
        print("user.py: interrupted (in-flight requests abandoned, no summary)", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(summary_dict(summary)))
    elif console is not None:
        console.print()
        print_tables(console, summary)
    else:
        if not quiet:
            print()
        print(format_summary(summary))
    if summary.unreachable is not None:
        print(
            f"user.py: cannot reach {args.url}: {summary.unreachable}\n"
            f"user.py: is the router running and listening there? Stopped after "
            f"{summary.requests} attempts, none of which could connect.",
            file=sys.stderr,
        )
    if summary.interrupted:
        print(f"user.py: interrupted after {summary.requests} requests", file=sys.stderr)
        return 130
    return 1 if summary.errors else 0


if __name__ == "__main__":
    sys.exit(main())

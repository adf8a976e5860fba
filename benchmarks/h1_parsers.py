"""h11 vs httptools as the router's HTTP/1.1 front-end parser: speed and strictness.

Usage::

    .venv/bin/python benchmarks/h1_parsers.py            # full: 9 rounds of ~0.25 s per cell
    .venv/bin/python benchmarks/h1_parsers.py --quick    # 3 rounds of ~0.05 s per cell

**Speed** is the real per-request server cost on one keep-alive connection, not the bare parse:

- h11: ``h11.Connection(h11.SERVER)``; ``receive_data(buf)``, then ``next_event()`` until
  ``NEED_DATA``/``PAUSED``; at each ``EndOfMessage`` the bytes of a minimal answer
  (``Response(200, content-length: 0)`` + ``EndOfMessage``) are produced with ``send`` and
  ``start_next_cycle()`` is called, so both sides are back to ``IDLE``;
- httptools: one ``HttpRequestParser`` per connection, ``feed_data(buf)``, with callbacks that
  collect the method, URL, headers (names lowercased, as h11 does) and body; at
  ``on_message_complete`` the same answer is formatted by hand from a status and a header list.

Before timing, both are checked to see the same requests and to produce the same response bytes.
Scenarios: a browser/curl-like GET with 6 headers, a POST with a 3-byte Content-Length body, a
chunked POST, and 10 pipelined GETs in one buffer (counted as 10 requests). The two parsers run
alternately (the order flips every round); the table shows the median round, the spread of the
rounds ((max - min) / median) and the ratio h11 time / httptools time.

**Strictness** feeds a table of hostile (and a few legitimate control) request shapes to a fresh
connection of each parser, in 64 KiB reads as a server's ``recv`` would hand them over, and
reports: ACCEPT (every request complete, no error), REJECT (error, with its text), PARTIAL (some
requests complete, then an error) or INCOMPLETE (no error, still waiting for bytes), plus what the
parser reported for each request. The "want" column is what a strict router should do:

- ``reject``: RFC 9110/9112 requires refusing (or the message cannot be framed safely);
- ``reject?``: the RFC allows a lenient reading, but a router (a proxy: smuggling and injection
  differentials with what sits behind it) should refuse, or it is an implementation limit;
- ``either``: the RFC allows both; ``accept``: a valid request that must be accepted.

A parser that does not refuse a ``reject``/``reject?`` shape is marked LAX, one that refuses an
``accept`` shape OVERSTRICT; the last column says which parser is stricter where they differ.
Only h11 and httptools are used; nothing here is part of the test suite.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import h11
import httptools

try:
    from machine import machine  # benchmarks/machine.py, when run as benchmarks/h1_parsers.py
except ImportError:  # pragma: no cover - run from elsewhere

    def machine() -> str:
        return f"Python {platform.python_version()}"


RECV_SIZE = 65536
STATUS = 200
REASON = b"OK"
RESPONSE_HEADERS = [(b"content-length", b"0")]

# --------------------------------------------------------------------------------------------
# Speed scenarios
# --------------------------------------------------------------------------------------------

GET = (
    b"GET /api/v1/items?id=42&sort=desc HTTP/1.1\r\n"
    b"Host: router.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
)
POST_CL = (
    b"POST /api/v1/items HTTP/1.1\r\n"
    b"Host: router.example.com\r\n"
    b"User-Agent: curl/8.5.0\r\n"
    b"Accept: */*\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 3\r\n"
    b"\r\n"
    b"abc"
)
POST_CHUNKED = (
    b"POST /api/v1/upload HTTP/1.1\r\n"
    b"Host: router.example.com\r\n"
    b"User-Agent: curl/8.5.0\r\n"
    b"Accept: */*\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"\r\n"
    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
)
PIPELINED_N = 10
PIPELINED = b"".join(
    b"GET /item/%d HTTP/1.1\r\nHost: router.example.com\r\nUser-Agent: curl/8.5.0\r\n"
    b"Accept: */*\r\n\r\n" % i
    for i in range(PIPELINED_N)
)

SCENARIOS: list[tuple[str, bytes, int]] = [
    ("GET, 6 headers", GET, 1),
    ("POST, Content-Length: 3", POST_CL, 1),
    ("POST, chunked (2 chunks)", POST_CHUNKED, 1),
    (f"{PIPELINED_N} pipelined GETs, 1 buffer", PIPELINED, PIPELINED_N),
]


# A request as a parser reported it: method, target, headers (lowercased names), body.
Seen = tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]


def format_response(status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """What an httptools-based server has to write by hand (h11's ``send`` does it for h11)."""
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    parts.extend(b"%s: %s\r\n" % (name, value) for name, value in headers)
    parts.append(b"\r\n")
    return b"".join(parts)


# --- h11 ------------------------------------------------------------------------------------


def h11_serve(conn: h11.Connection, data: bytes, seen: list[Seen] | None, out: list[bytes]) -> None:
    """Feed ``data`` to an h11 server connection, answer every complete request."""
    conn.receive_data(data)
    request: h11.Request | None = None
    body: list[bytes] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return
        kind = type(event)
        if kind is h11.Request:
            request = event
            body = []
        elif kind is h11.Data:
            body.append(event.data)
        elif kind is h11.EndOfMessage:
            if seen is not None and request is not None:
                seen.append((request.method, request.target, list(request.headers), b"".join(body)))
            out.append(
                conn.send(h11.Response(status_code=STATUS, reason=REASON, headers=RESPONSE_HEADERS))
            )
            if conn.our_state is h11.SWITCHED_PROTOCOL:
                return  # a 2xx to CONNECT: what follows belongs to the tunnel
            out.append(conn.send(h11.EndOfMessage()))
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return  # MUST_CLOSE (HTTP/1.0, Connection: close): no next cycle
            conn.start_next_cycle()


def h11_run(data: bytes, n: int) -> int:
    conn = h11.Connection(h11.SERVER)
    out: list[bytes] = []
    t0 = time.perf_counter_ns()
    for _ in range(n):
        h11_serve(conn, data, None, out)
        out.clear()
    return time.perf_counter_ns() - t0


# --- httptools ------------------------------------------------------------------------------


class Collector:
    """httptools callbacks: collect each request, answer it at ``on_message_complete``."""

    __slots__ = ("_body", "_headers", "_url", "out", "parser", "seen")

    def __init__(self, keep: bool) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.out: list[bytes] = []
        self.seen: list[Seen] | None = [] if keep else None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self.seen is not None:
            method = self.parser.get_method()
            self.seen.append((method, self._url, self._headers, b"".join(self._body)))
        self.out.append(format_response(STATUS, REASON, RESPONSE_HEADERS))


def httptools_run(data: bytes, n: int) -> int:
    c = Collector(keep=False)
    feed = c.parser.feed_data
    out = c.out
    t0 = time.perf_counter_ns()
    for _ in range(n):
        feed(data)
        out.clear()
    return time.perf_counter_ns() - t0


# --- checks and timing ----------------------------------------------------------------------


def check_same(data: bytes, expected_requests: int) -> None:
    """Both parsers must see the same requests and write the same bytes, or the race is unfair."""
    conn = h11.Connection(h11.SERVER)
    h11_seen: list[Seen] = []
    h11_out: list[bytes] = []
    h11_serve(conn, data, h11_seen, h11_out)
    c = Collector(keep=True)
    c.parser.feed_data(data)
    assert c.seen is not None
    if len(h11_seen) != expected_requests or c.seen != h11_seen:
        sys.exit(
            f"parsers disagree on a benchmark payload:\n  h11: {h11_seen}\n  httptools: {c.seen}"
        )
    if b"".join(h11_out) != b"".join(c.out):
        sys.exit(f"response bytes differ: {b''.join(h11_out)!r} vs {b''.join(c.out)!r}")


def calibrate(run: Callable[[bytes, int], int], data: bytes, target_s: float) -> int:
    n = 64
    while True:
        elapsed = run(data, n) / 1e9
        if elapsed > 0.02:
            return max(1, int(n * target_s / elapsed))
        n *= 4


@dataclass
class Cell:
    ns_per_req: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.ns_per_req)

    @property
    def spread(self) -> float:
        return (max(self.ns_per_req) - min(self.ns_per_req)) / self.median


def bench(rounds: int, target_s: float) -> list[tuple[str, int, int, Cell, Cell]]:
    runners: dict[str, Callable[[bytes, int], int]] = {"h11": h11_run, "httptools": httptools_run}
    rows = []
    for name, data, reqs in SCENARIOS:
        check_same(data, reqs)
        iterations = {p: calibrate(run, data, target_s) for p, run in runners.items()}
        cells = {p: Cell() for p in runners}
        for r in range(rounds):
            order = list(runners) if r % 2 == 0 else list(reversed(runners))
            for p in order:
                gc.collect()
                elapsed = runners[p](data, iterations[p])
                cells[p].ns_per_req.append(elapsed / (iterations[p] * reqs))
        rows.append((name, len(data), reqs, cells["h11"], cells["httptools"]))
    return rows


# --------------------------------------------------------------------------------------------
# Strictness cases
# --------------------------------------------------------------------------------------------


def req(head: bytes, body: bytes = b"", *, line: bytes = b"POST / HTTP/1.1") -> bytes:
    return line + b"\r\n" + head + b"\r\n" + body


HOST = b"Host: a\r\n"
CHUNKED = b"Transfer-Encoding: chunked\r\n"
GET_LINE = b"GET / HTTP/1.1"


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    want: str  # reject | reject? | either | accept
    why: str


CASES: list[Case] = [
    Case(
        "CL then TE",
        req(HOST + b"Content-Length: 5\r\n" + CHUNKED, b"0\r\n\r\n"),
        "reject?",
        "9112 6.1: MAY reject, else TE wins + close; a proxy must refuse (smuggling)",
    ),
    Case(
        "TE then CL",
        req(HOST + CHUNKED + b"Content-Length: 5\r\n", b"0\r\n\r\n"),
        "reject?",
        "as above, other order",
    ),
    Case(
        "two different Content-Lengths",
        req(HOST + b"Content-Length: 3\r\nContent-Length: 5\r\n", b"abcde"),
        "reject",
        "9110 8.6: unrecoverable framing error",
    ),
    Case(
        "two identical Content-Lengths",
        req(HOST + b"Content-Length: 3\r\nContent-Length: 3\r\n", b"abc"),
        "either",
        "9110 8.6: MAY accept identical values",
    ),
    Case(
        "Content-Length: +3",
        req(HOST + b"Content-Length: +3\r\n", b"abc"),
        "reject",
        "CL = 1*DIGIT",
    ),
    Case(
        "Content-Length: 2^64+ (20 digits)",
        req(HOST + b"Content-Length: 18446744073709551616\r\n", b"abc"),
        "reject?",
        "valid grammar, but overflows 64 bits: a peer that wraps frames it differently",
    ),
    Case(
        "obs-fold continuation line",
        req(HOST + b"X-A: a\r\n b\r\n", line=GET_LINE),
        "either",
        "9112 5.2: reject, or replace the fold with SP",
    ),
    Case(
        "whitespace line before first header",
        req(b" X-A: 1\r\n" + HOST, line=GET_LINE),
        "reject?",
        "9112 2.2: reject, or ignore that line entirely",
    ),
    Case(
        "Transfer-Encoding: xchunked",
        req(HOST + b"Transfer-Encoding: xchunked\r\n", b"3\r\nabc\r\n0\r\n\r\n"),
        "reject",
        "9112 6.3: chunked not final in a request -> 400",
    ),
    Case(
        "Transfer-Encoding: chunked, identity",
        req(HOST + b"Transfer-Encoding: chunked, identity\r\n", b"3\r\nabc\r\n0\r\n\r\n"),
        "reject",
        "9112 6.3: chunked not final; identity is not a coding",
    ),
    Case(
        "Transfer-Encoding: chunked twice",
        req(HOST + CHUNKED + CHUNKED, b"3\r\nabc\r\n0\r\n\r\n"),
        "reject",
        "9112 6.1: chunked MUST NOT be applied more than once",
    ),
    Case(
        "chunk size with trailing space '3 '",
        req(HOST + CHUNKED, b"3 \r\nabc\r\n0\r\n\r\n"),
        "reject",
        "chunk-size = 1*HEXDIG (BWS only before ';')",
    ),
    Case(
        "chunk size with leading space ' 3'",
        req(HOST + CHUNKED, b" 3\r\nabc\r\n0\r\n\r\n"),
        "reject",
        "chunk-size = 1*HEXDIG",
    ),
    Case(
        "chunk size '0x3'",
        req(HOST + CHUNKED, b"0x3\r\nabc\r\n0\r\n\r\n"),
        "reject",
        "not HEXDIG",
    ),
    Case(
        "chunk size 18 hex digits (2^68)",
        req(HOST + CHUNKED, b"100000000000000000\r\nabc\r\n0\r\n\r\n"),
        "reject?",
        "9112 7.1: MUST guard against overflow; a peer that wraps = smuggling",
    ),
    Case(
        "chunk size 18 hex digits, zero-padded",
        req(HOST + CHUNKED, b"000000000000000003\r\nabc\r\n0\r\n\r\n"),
        "either",
        "valid grammar, = 3",
    ),
    Case(
        "chunk extension '3;foo=bar' (control)",
        req(HOST + CHUNKED, b"3;foo=bar\r\nabc\r\n0\r\n\r\n"),
        "accept",
        "valid chunk-ext",
    ),
    Case(
        "NUL in a header value",
        req(HOST + b"X-A: a\x00b\r\n", line=GET_LINE),
        "reject",
        "9110 5.5: reject or replace with SP",
    ),
    Case(
        "bare CR in a header value",
        req(HOST + b"X-A: a\rb\r\n", line=GET_LINE),
        "reject",
        "9110 5.5 / 9112 2.2: bare CR MUST be rejected or replaced",
    ),
    Case(
        "bare LF inside a header value",
        req(HOST + b"X-A: a\nX-Injected: 1\r\n", line=GET_LINE),
        "reject?",
        "9112 2.2 MAY take LF as terminator; mixed terminators = header injection",
    ),
    Case(
        "bare LF as line terminator",
        b"GET / HTTP/1.1\nHost: a\nX-A: 1\n\n",
        "either",
        "9112 2.2: MAY recognise a lone LF",
    ),
    Case(
        "empty header name ': x'",
        req(HOST + b": x\r\n", line=GET_LINE),
        "reject",
        "field-name = token (1*tchar)",
    ),
    Case(
        "space before colon 'X-A : 1'",
        req(HOST + b"X-A : 1\r\n", line=GET_LINE),
        "reject",
        "9112 5.1: MUST reject with 400",
    ),
    Case(
        "header name with underscore (control)",
        req(HOST + b"X_A: 1\r\n", line=GET_LINE),
        "accept",
        "'_' is a tchar",
    ),
    Case(
        "two Host headers",
        req(HOST + b"Host: b\r\n", line=GET_LINE),
        "reject",
        "9112 3.2: MUST respond 400",
    ),
    Case(
        "no Host in HTTP/1.1",
        req(b"X-A: 1\r\n", line=GET_LINE),
        "reject",
        "9112 3.2: MUST respond 400",
    ),
    Case(
        "invalid method token 'G(T'",
        req(HOST, line=b"G(T / HTTP/1.1"),
        "reject",
        "method = token",
    ),
    Case(
        "HTTP/2.0 request line",
        req(HOST, line=b"GET / HTTP/2.0"),
        "reject",
        "not HTTP/1.x framing (505)",
    ),
    Case(
        "request line with two spaces",
        req(HOST, line=b"GET  / HTTP/1.1"),
        "either",
        "9112 3: MAY split on whitespace runs",
    ),
    Case(
        "leading CRLF before request line (control)",
        b"\r\n" + req(HOST, line=GET_LINE),
        "accept",
        "9112 2.2: SHOULD ignore one empty line",
    ),
    Case(
        "user@host in absolute-form target",
        req(HOST, line=b"GET http://user@a/b HTTP/1.1"),
        "reject?",
        "9110 4.2.4: SHOULD treat userinfo as an error",
    ),
    Case(
        "HTTP/1.0 with chunked",
        req(CHUNKED, b"3\r\nabc\r\n0\r\n\r\n", line=b"POST / HTTP/1.0"),
        "reject",
        "9112 6.1: MUST treat the framing as faulty",
    ),
    Case(
        "very long header (70 KB value)",
        req(HOST + b"X-Big: " + b"a" * 70_000 + b"\r\n", line=GET_LINE),
        "reject?",
        "implementation limit (431); else memory DoS",
    ),
    Case(
        "1,000 header fields",
        req(HOST + b"".join(b"X-H%d: v\r\n" % i for i in range(1000)), line=GET_LINE),
        "either",
        "no RFC limit; the router should cap the count itself",
    ),
    Case(
        "absolute-form 'GET http://a/b'",
        req(HOST, line=b"GET http://a/b HTTP/1.1"),
        "accept",
        "9112 3.2.2: a server MUST accept absolute-form",
    ),
    Case(
        "CONNECT authority-form",
        req(b"Host: a:443\r\n", line=b"CONNECT a:443 HTTP/1.1"),
        "accept",
        "valid syntax (the router may refuse it later)",
    ),
    Case(
        "asterisk-form OPTIONS",
        req(HOST, line=b"OPTIONS * HTTP/1.1"),
        "accept",
        "valid",
    ),
]


@dataclass
class Outcome:
    verdict: str  # ACCEPT | REJECT | PARTIAL | INCOMPLETE
    error: str = ""
    seen: list[Seen] = field(default_factory=list)
    note: str = ""


def chunks(data: bytes) -> list[bytes]:
    return [data[i : i + RECV_SIZE] for i in range(0, len(data), RECV_SIZE)]


def verdict(seen: list[Seen], error: str, waiting: bool) -> str:
    if error:
        return "PARTIAL" if seen else "REJECT"
    return "INCOMPLETE" if waiting or not seen else "ACCEPT"


def h11_try(data: bytes) -> Outcome:
    conn = h11.Connection(h11.SERVER)
    seen: list[Seen] = []
    out: list[bytes] = []
    error = ""
    try:
        for chunk in chunks(data):
            h11_serve(conn, chunk, seen, out)
    except h11.ProtocolError as exc:
        error = f"{type(exc).__name__}: {exc}"
    done = (h11.IDLE, h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.SWITCHED_PROTOCOL)
    note = ""
    if conn.our_state is h11.SWITCHED_PROTOCOL:
        note = "SWITCHED_PROTOCOL after the 200 (tunnel; leftover bytes in conn.trailing_data)"
    return Outcome(verdict(seen, error, conn.their_state not in done), error, seen, note)


class CountingCollector(Collector):
    """A Collector that also counts begun messages (to tell INCOMPLETE from ACCEPT)."""

    __slots__ = ("begun",)

    def __init__(self) -> None:
        self.begun = 0
        super().__init__(keep=True)

    def on_message_begin(self) -> None:
        self.begun += 1
        super().on_message_begin()


def httptools_try(data: bytes) -> Outcome:
    c = CountingCollector()
    assert c.seen is not None
    error = note = ""
    try:
        for chunk in chunks(data):
            c.parser.feed_data(chunk)
    except httptools.HttpParserUpgrade as exc:
        note = f"HttpParserUpgrade at offset {exc.args[0]} (tunnel/upgrade handed to the app)"
    except httptools.HttpParserError as exc:
        error = f"{type(exc).__name__}: {exc}"
    return Outcome(verdict(c.seen, error, c.begun > len(c.seen)), error, c.seen, note)


def judge(want: str, outcome: Outcome) -> str:
    refused = outcome.verdict in ("REJECT", "PARTIAL")
    if want.startswith("reject") and not refused:
        return "LAX"
    if want == "accept" and outcome.verdict != "ACCEPT":
        return "OVERSTRICT"
    return "ok"


def shorten(value: bytes | str, limit: int = 60) -> str:
    text = repr(value) if isinstance(value, bytes) else value
    return text if len(text) <= limit else f"{text[: limit - 15]}...({len(value)} long)"


def describe(outcome: Outcome) -> list[str]:
    lines = []
    for method, target, headers, body in outcome.seen:
        if len(headers) > 6:
            shown = ", ".join(f"{n.decode()}: {shorten(v, 30)}" for n, v in headers[:3])
            hdrs = f"{shown}, ... ({len(headers)} fields)"
        else:
            hdrs = ", ".join(f"{n.decode()}: {shorten(v, 40)}" for n, v in headers)
        lines.append(f"{method.decode()} {shorten(target, 40)} [{hdrs}] body={shorten(body, 40)}")
    if outcome.error:
        lines.append(outcome.error)
    if outcome.note:
        lines.append(outcome.note)
    if outcome.verdict == "INCOMPLETE":
        lines.append("no error; still waiting for more bytes")
    return lines


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def table(headers: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    right = right or set()
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(headers), rule, *(fmt(r) for r in rows)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--quick", action="store_true", help="3 short rounds instead of 9")
    args = ap.parse_args()
    rounds, target_s = (3, 0.05) if args.quick else (9, 0.25)

    print(f"machine: {machine()}")
    print(f"h11 {h11.__version__}, httptools {httptools.__version__} (llhttp inside)")
    print(f"speed: {rounds} interleaved rounds of ~{target_s} s per cell, median round\n")

    rows = []
    for name, size, _reqs, a, b in bench(rounds, target_s):
        rows.append(
            [
                name,
                str(size),
                f"{1e9 / a.median:,.0f}",
                f"{a.median / 1e3:.2f}",
                f"{a.spread:.0%}",
                f"{1e9 / b.median:,.0f}",
                f"{b.median / 1e3:.2f}",
                f"{b.spread:.0%}",
                f"{a.median / b.median:.1f}x",
            ]
        )
    print("SPEED (per request: parse + produce the response bytes; one keep-alive connection)")
    print(
        table(
            ["scenario", "bytes", "h11 req/s", "µs", "±", "httptools req/s", "µs", "±", "h11/ht"],
            rows,
            right={1, 2, 3, 4, 5, 6, 7, 8},
        )
    )

    print("\nSTRICTNESS (fresh connection per case, fed in 64 KiB reads)")
    rows = []
    details = []
    tally = {"h11": {"LAX": [], "OVERSTRICT": []}, "httptools": {"LAX": [], "OVERSTRICT": []}}
    for i, case in enumerate(CASES, 1):
        a, b = h11_try(case.data), httptools_try(case.data)
        ja, jb = judge(case.want, a), judge(case.want, b)
        for parser, j in (("h11", ja), ("httptools", jb)):
            if j != "ok":
                tally[parser][j].append(f"{i}. {case.name}")
        ra, rb = a.verdict in ("REJECT", "PARTIAL"), b.verdict in ("REJECT", "PARTIAL")
        stricter = "h11" if ra and not rb else "httptools" if rb and not ra else ""
        rows.append(
            [
                str(i),
                case.name,
                case.want,
                a.verdict + ("" if ja == "ok" else f" {ja}"),
                b.verdict + ("" if jb == "ok" else f" {jb}"),
                stricter,
            ]
        )
        details.append(f"{i}. {case.name}  [want {case.want}: {case.why}]")
        details.extend(f"   h11:       {line}" for line in describe(a))
        details.extend(f"   httptools: {line}" for line in describe(b))
    print(table(["#", "shape", "want", "h11", "httptools", "stricter"], rows, right={0}))
    print("\nDETAILS (what each parser reported)")
    print("\n".join(details))
    print("\nSUMMARY")
    for parser, marks in tally.items():
        for mark, names in marks.items():
            print(f"{parser} {mark} ({len(names)}): {'; '.join(names) or '-'}")


if __name__ == "__main__":
    main()

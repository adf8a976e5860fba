#!/usr/bin/env python3
"""Attacks on the tunnel port (issue 10), each bounded in time, with the outcome measured.

    python benchmarks/tunnel_attacks.py [--tree PATH] [--only NAME[,NAME]] [--json] [--duration S]

Every attack starts its own ``python -m router`` (from the source tree at ``--tree``, default this
checkout: ``cwd=PATH``, ``PYTHONPATH=PATH``, this checkout's ``.venv`` python) on free ports of
127.0.0.1, and real backends (``python -m ptth attack_app:app``, an app written into a temporary
directory that answers every request with its own name), then:

* ``lockout``: 1,000 connections to the tunnel port that never finish the handshake (half silent,
  half trickling garbage bytes), each refilled as soon as it is dropped, for ``--duration``
  seconds, without and with ``--token``. A real backend starts 1 s in; measured: the time from its
  start to its first proxied 200 (during the attack, after it, or not within 30 s), what the
  attacker's connections got (a bare close, a reset, an HTTP status), what the backend logged.
  When the router has a per-address limit (``--max-pending-per-address`` in its ``--help``) the
  attacker connects from 127.0.0.2, else from 127.0.0.1; the table says which. A backend with no
  attack gives the baseline. A last run (with ``--token``) spreads 2,000 such connections over
  250 addresses (127.0.1.1-250), which per-address limits alone cannot stop. The attack always
  runs its full length; a backend that got in must still be serving after it.
* ``garbage``: one connection per shape (binary bytes at once, binary trickled, a garbage line
  with a blank line, a plain ``GET``, silence): time until the router answers or closes, and what
  it sends.
* ``guessing``: 1,000 wrong tokens as fast as 8 connections at a time from 127.0.0.2 allow:
  elapsed time, answers by status; then the right token from 127.0.0.3 and from 127.0.0.2.
* ``takeover``: service ``api`` owned by backend ``owner`` (host ``api.test``); (a) a backend of
  another identity claims ``api.test`` too, (b) one claims no host; 40 requests for ``api.test``
  each, counted by who answered; (c) the owner stops, the claim's ``--grace`` (1 s) passes,
  service ``web`` claims ``api.test``, the owner comes back: what each got. With only ``--token``
  the "other identity" has the same token (the router cannot tell them apart); with ``--tokens``
  (detected) two more runs use a tokens file: one where the owner's entry lists ``api.test``, one
  where both entries may claim any host (first claim wins).
* ``failing-tunnel``: a raw tunnel backend (``ClientHandshake`` from the tree, then an h2 server
  that resets every stream) next to a healthy backend of the same service, then alone: 100
  requests each, statuses, and how many streams the bad tunnel still received.
* ``plaintext``: a TCP relay between backend and router records the bytes: is the token readable,
  over ``tcp`` and (when the router has ``--tunnel-tls-cert``) over ``tls://`` with a trustme
  certificate (the backend gets the CA by ``--ca-file`` when it has it, and ``SSL_CERT_FILE``).

Features are found in the trees' ``--help`` texts, so the same script runs against old and new
code; what a tree cannot do is reported as "n/a (not supported by this tree)". Every child runs in
its own process group and is killed (SIGTERM, then SIGKILL) on the way out, Ctrl-C and errors
included. The table is Markdown; ``--json`` prints the rows as JSON on stdout (the table then goes
to stderr). Exit status 1 when an attack could not be run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
import functools
import json
import os
import platform
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ATTACKS = ("lockout", "garbage", "guessing", "takeover", "failing-tunnel", "plaintext")
NA = "n/a (not supported by this tree)"
TIMES = "\u00d7"  # the multiplication sign of "401 x1,000"
ATTACKERS = 1000
GUESSES = 1000
GUESS_CONCURRENCY = 8
BACKEND_START = 1.0  # seconds into the lockout attack
AFTER_ATTACK = 30.0  # how long the backend may still need once the attack stopped
GRACE = 1.0
TOKEN = "right-token-4f1d2c9e8a7b6350"
OWNER_TOKEN = "owner-token-0a1b2c3d4e5f6789"
OTHER_TOKEN = "other-token-9f8e7d6c5b4a3210"
APP_SOURCE = '''\
"""Answers every request with its own name (ATTACK_APP_NAME), so the attacks can count who
served what."""
import os

NAME = os.environ.get("ATTACK_APP_NAME", "app").encode()


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(NAME))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": NAME})
'''


# -- rows ----------------------------------------------------------------------------------------


@dataclass
class Row:
    attack: str
    variant: str
    measured: str
    outcome: str
    data: dict[str, Any] = field(default_factory=dict)


def table(rows: Sequence[Row]) -> str:
    lines = ["| attack | variant | measured | outcome |", "| --- | --- | --- | --- |"]
    for row in rows:
        cells = (row.attack, row.variant, row.measured, row.outcome)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def counts(counter: Counter[str]) -> str:
    return ", ".join(f"{key} {TIMES}{n:,}" for key, n in counter.most_common()) or "none"


# -- child processes -----------------------------------------------------------------------------


class Child:
    """A process in its own group, its merged output in a log file."""

    def __init__(self, name: str, argv: list[str], cwd: Path, env: dict[str, str], log: Path):
        self.name = name
        self.log_path = log
        self.started = time.monotonic()
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def text(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def lines(self) -> list[str]:
        return self.text().splitlines()

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signum)

    def stop(self, timeout: float = 3.0) -> None:
        """SIGTERM the group, SIGKILL it after ``timeout``; always reaped."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # The group may hold grandchildren even when the leader is gone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


class Children:
    def __init__(self) -> None:
        self.all: list[Child] = []

    def add(self, child: Child) -> Child:
        self.all.append(child)
        return child

    def stop_all(self) -> None:
        """Stop every child; a second Ctrl-C meanwhile cannot leave one running."""
        wanted = (signal.SIGINT, signal.SIGTERM)
        previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in wanted}
        try:
            for child in reversed(self.all):
                child.stop(timeout=2.0)
            self.all.clear()
        finally:
            for signum, handler in previous.items():
                if handler is not None:  # None: set outside Python, cannot be put back
                    signal.signal(signum, handler)


# -- the tree under test -------------------------------------------------------------------------


@dataclass
class Features:
    router_help: str
    helper_help: str

    @property
    def tunnel_tls(self) -> bool:
        return "--tunnel-tls-cert" in self.router_help

    @property
    def tokens_file(self) -> bool:
        return "--tokens" in self.router_help

    @property
    def per_address(self) -> bool:
        return "--max-pending-per-address" in self.router_help

    @property
    def ca_file(self) -> bool:
        return "--ca-file" in self.helper_help

    @property
    def helper_tls(self) -> bool:
        return "tls://" in self.helper_help

    def summary(self) -> dict[str, bool]:
        return {
            "router --tunnel-tls-cert": self.tunnel_tls,
            "router --tokens": self.tokens_file,
            "router --max-pending-per-address": self.per_address,
            "helper tls://": self.helper_tls,
            "helper --ca-file": self.ca_file,
        }


class Tree:
    """Where the code under test lives, and how to start its programs."""

    def __init__(self, path: Path, work: Path, children: Children) -> None:
        self.path = path
        self.work = work
        self.children = children
        venv = REPO / ".venv" / "bin" / "python"
        self.python = str(venv) if venv.exists() else sys.executable
        (work / "attack_app.py").write_text(APP_SOURCE)
        self._serial = 0
        self.features = Features(self._help("router"), self._help("ptth"))

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PTTH_")}
        env["PYTHONPATH"] = f"{self.path}{os.pathsep}{self.work}"
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra or {})
        return env

    def _help(self, module: str) -> str:
        done = subprocess.run(
            [self.python, "-m", module, "--help"],
            cwd=self.path,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise SystemExit(
                f"tunnel_attacks: `python -m {module} --help` failed in {self.path}:\n"
                + done.stderr[-2000:]
            )
        return done.stdout

    def check_imports(self) -> None:
        done = subprocess.run(
            [
                self.python,
                "-c",
                "import ptth, router; print(ptth.__file__); print(router.__file__)",
            ],
            cwd=self.path,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        for line in done.stdout.split():
            if not Path(line).resolve().is_relative_to(self.path.resolve()):
                raise SystemExit(f"tunnel_attacks: {line} is not inside {self.path}")

    def commit(self) -> str:
        done = subprocess.run(
            ["git", "-C", str(self.path), "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(self.path), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        )
        text = done.stdout.strip()[:90] or "?"
        return text + (" (+ uncommitted changes)" if dirty.stdout.strip() else "")

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        self._serial += 1
        log = self.work / f"{self._serial:03d}-{name}.log"
        return self.children.add(Child(name, argv, self.path, self.env(env), log))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- router and backends -------------------------------------------------------------------------


@dataclass
class RouterProc:
    child: Child
    http: int
    tunnel: int

    @property
    def tunnel_addr(self) -> str:
        return f"127.0.0.1:{self.tunnel}"


async def start_router(tree: Tree, *flags: str) -> RouterProc:
    import trio

    http, tunnel = free_port(), free_port()
    argv = [tree.python, "-m", "router", "--http", f"127.0.0.1:{http}"]
    argv += ["--tunnel", f"127.0.0.1:{tunnel}", "--log-level", "INFO"]
    if "--access-log" in tree.features.router_help:
        argv += ["--access-log", "false"]
    child = tree.spawn("router", [*argv, *flags])
    deadline = trio.current_time() + 20
    for port in (http, tunnel):
        while True:
            if child.returncode is not None:
                raise RuntimeError(f"router exited {child.returncode}: {child.text()[-1500:]}")
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                if trio.current_time() > deadline:
                    raise RuntimeError("router did not listen within 20 s") from None
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            break
    return RouterProc(child, http, tunnel)


def start_backend(
    tree: Tree,
    name: str,
    router: str,
    *,
    service: str = "default",
    hosts: Sequence[str] = (),
    token: str | None = None,
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Child:
    argv = [tree.python, "-m", "ptth", "attack_app:app", "--router", router]
    argv += ["--service", service, "--instance", name, "--drain-timeout", "1"]
    for host in hosts:
        argv += ["--host", host]
    if token is not None:
        argv += ["--token", token]
    return tree.spawn(name, [*argv, *extra], {"ATTACK_APP_NAME": name, **(env or {})})


async def http_get(port: int, host: str = "attack.test", timeout: float = 3.0) -> tuple[int, bytes]:
    """One request on a fresh connection: (status, body); status 0 when none came."""
    import trio

    data = b""
    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            return 0, b""
        async with stream:
            request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            try:
                await stream.send_all(request.encode())
                while chunk := await stream.receive_some(65536):
                    data += chunk
            except (trio.BrokenResourceError, OSError):
                pass
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    if not match:
        return 0, b""
    if re.search(rb"(?im)^transfer-encoding:\s*chunked", head):
        body = dechunk(body)
    return int(match.group(1)), body


def dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out


async def wait_answer(
    port: int, name: str, deadline: float, host: str = "attack.test"
) -> float | None:
    """Poll the front end until ``name`` answers; the trio time it did, or None by ``deadline``."""
    import trio

    while trio.current_time() < deadline:
        status, body = await http_get(port, host, timeout=min(2.0, deadline - trio.current_time()))
        if status == 200 and body == name.encode():
            return trio.current_time()
        await trio.sleep(0.05)
    return None


async def who_answers(port: int, host: str, n: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(n):
        status, body = await http_get(port, host)
        seen[body.decode("utf-8", "replace") if status == 200 else f"HTTP {status or 'none'}"] += 1
    return seen


_REFUSAL = re.compile(r"refused|\b(400|401|403|408|409|429|503)\b|error|warning", re.IGNORECASE)


def helper_outcome(child: Child) -> str:
    """A backend's state in a few words: exited (code, last complaint), refused, or registered."""
    lines = child.lines()
    complaints = [line for line in lines if _REFUSAL.search(line) and "registered" not in line]
    last = complaints[-1] if complaints else ""
    last = re.sub(r"^\S+ \S+ (\w+) [\w.]+: ", r"\1: ", last)[:160]
    if child.returncode is not None:
        return f"exited {child.returncode}" + (f" (`{last}`)" if last else "")
    if any("registered" in line for line in lines):
        return "registered" + (f" (after `{last}`)" if last else "")
    return "not registered" + (f" (`{last}`)" if last else "")


async def wait_helper_settled(child: Child, timeout: float) -> None:
    """Until the backend registered, was refused or exited (or ``timeout``)."""
    import trio

    with trio.move_on_after(timeout):
        while child.returncode is None:
            text = child.text()
            if "registered" in text or re.search(r"refused|\b(401|403|409)\b", text):
                break
            await trio.sleep(0.05)
    await trio.sleep(0.3)  # the router adds the tunnel after the SETTINGS exchange


# -- raw tunnel-port clients -----------------------------------------------------------------------


def handshake_bytes(port: int, token: str | None, service: str = "default") -> bytes:
    """The ReverseHTTP upgrade as ``ptth.proto.handshake.ClientHandshake`` writes it."""
    lines = [
        "POST /.well-known/ptth HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Connection: Upgrade",
        "Upgrade: reverse",
        "ALPN: h2",
        "Content-Length: 0",
        f"Ptth-Service: {service}",
        "Ptth-Weight: 1",
    ]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def open_from(source: str, port: int, timeout: float = 3.0) -> Any:
    """A trio SocketStream to 127.0.0.1:port from ``source``; raises OSError/TimeoutError."""
    import trio

    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    try:
        # Let connect() pick the port knowing the whole 4-tuple (Linux IP_BIND_ADDRESS_NO_PORT).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IP, 24, 1)
        await sock.bind((source, 0))
        with trio.fail_after(timeout):
            await sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


def classify(data: bytes, reset: bool) -> str:
    """What a connection got before its end: a status line, bytes, a bare close or a reset."""
    match = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    if match:
        retry = re.search(rb"(?im)^retry-after:\s*(\S+)", data)
        return f"HTTP {match.group(1).decode()}" + (
            f" (Retry-After {retry.group(1).decode()})" if retry else ""
        )
    if data:
        return f"{len(data)} other bytes"
    return "reset" if reset else "closed, nothing sent"


async def read_to_end(stream: Any, limit: int = 8192) -> tuple[bytes, bool]:
    """(bytes until EOF, whether it ended in a reset)."""
    import trio

    data = b""
    try:
        while len(data) < limit:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return data, False
            data += chunk
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        return data, True
    return data, False


def reason_of(data: bytes) -> str:
    """The body of a refusal (the router's plain-text reason), shortened."""
    _, _, body = data.partition(b"\r\n\r\n")
    return body.decode("utf-8", "replace").strip().replace("`", "'")[:80]


# -- 1. lockout ----------------------------------------------------------------------------------


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    lifetimes: dict[str, list[float]] = field(default_factory=dict)
    attempts: int = 0
    open: int = 0
    peak: int = 0

    def done(self, outcome: str, lifetime: float) -> None:
        self.outcomes[outcome] += 1
        self.lifetimes.setdefault(outcome, []).append(lifetime)

    def describe(self) -> str:
        parts = []
        for outcome, n in self.outcomes.most_common():
            times = self.lifetimes[outcome]
            parts.append(
                f"{outcome} {TIMES}{n:,} (after {statistics.median(times):.2f} s median, "
                f"{max(times):.1f} s max)"
            )
        return "; ".join(parts) or "none"


GARBAGE = bytes(b for b in range(1, 256) if b not in b"\r\n")


async def drip(stream: Any, rng: random.Random) -> None:
    """Garbage bytes (never a line end), one every 0.5 s, until the connection breaks."""
    import trio

    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        while True:
            await stream.send_all(bytes([rng.choice(GARBAGE)]))
            await trio.sleep(0.5)


async def attacker(port: int, source: str, trickle: bool, tally: Tally) -> None:
    """One attacker slot: a connection that never finishes its handshake, refilled when dropped."""
    import trio

    rng = random.Random()
    while True:
        started = trio.current_time()
        tally.attempts += 1
        try:
            stream = await open_from(source, port)
        except TimeoutError:
            tally.done("connect timed out", trio.current_time() - started)
            continue
        except OSError as exc:
            tally.done(f"connect failed ({errno.errorcode.get(exc.errno or 0, exc)})", 0.0)
            await trio.sleep(0.1)
            continue
        tally.open += 1
        tally.peak = max(tally.peak, tally.open)
        try:
            async with stream, trio.open_nursery() as nursery:
                if trickle:
                    nursery.start_soon(drip, stream, rng)
                data, reset = await read_to_end(stream)
                nursery.cancel_scope.cancel()
        finally:
            tally.open -= 1
        tally.done(classify(data, reset), trio.current_time() - started)


def complaints_summary(child: Child) -> tuple[int, str]:
    """How many warning/error lines a backend logged, and the most common one (numbers blanked)."""
    found = [line for line in child.lines() if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line)]
    shapes: Counter[str] = Counter(log_shape(line) for line in found)
    top = shapes.most_common(1)
    delays = [
        float(m.group(1))
        for line in child.lines()
        if "reconnect" in line and (m := re.search(r"in (\d+(?:\.\d+)?) ?s\b", line))
    ]
    text = f"{TIMES}{top[0][1]:,} `{top[0][0]}`" if top else ""
    if delays:
        text += f"; longest reconnect delay {max(delays):.1f} s"
    return len(found), text


def log_shape(line: str) -> str:
    """A log line without its time stamp, addresses and numbers, to count lines by kind."""
    message = re.sub(r"^\S+ \S+ \w+ [\w.]+: ", "", line)
    message = re.sub(r"\d+\.\d+\.\d+\.\d+:\d+", "HOST:PORT", message)
    message = re.sub(r"\b[0-9a-f]{12}\b", "ID", message)
    message = re.sub(r"\d+(\.\d+)?", "N", message).strip()
    if message.endswith(":"):
        message += " (an empty message)"
    return message[:150]


async def lockout_run(
    tree: Tree, duration: float, with_token: bool, spread: bool = False
) -> list[Row]:
    """One lockout: ``ATTACKERS`` slots from one address, or twice as many from 250 (``spread``)."""
    import trio

    variant = "--token" if with_token else "no token"
    flags = ["--token", TOKEN] if with_token else []
    if spread:
        sources = [f"127.0.1.{i}" for i in range(1, 251)]
        slots_n, where = 2 * ATTACKERS, "127.0.1.1-250"
        variant += f", {slots_n:,} from 250 addresses"
    else:
        sources = ["127.0.0.2" if tree.features.per_address else "127.0.0.1"]
        slots_n, where = ATTACKERS, sources[0]
    router = await start_router(tree, *flags)
    tally = Tally()
    backend: Child | None = None
    try:
        attack_end = [0.0]
        answered: float | None = None
        async with trio.open_nursery() as nursery:

            async def attack() -> None:
                async with trio.open_nursery() as slots:
                    for i in range(slots_n):
                        source = sources[i % len(sources)]
                        slots.start_soon(attacker, router.tunnel, source, i % 2 == 1, tally)
                    await trio.sleep(duration)
                    attack_end[0] = trio.current_time()  # the attackers start closing now
                    slots.cancel_scope.cancel()

            nursery.start_soon(attack)
            await trio.sleep(BACKEND_START)
            started = trio.current_time()
            backend = start_backend(
                tree, "locked-out", router.tunnel_addr, token=TOKEN if with_token else None
            )
            answered = await wait_answer(
                router.http, "locked-out", started + duration - BACKEND_START + AFTER_ATTACK
            )
            # In or not, the attack runs its full length (the nursery waits for it).
        serving = await wait_answer(router.http, "locked-out", trio.current_time() + 5)
        if answered is None:
            result = f"not in service within {AFTER_ATTACK:.0f} s after the attack stopped"
        elif answered < attack_end[0]:
            result = f"**in during the attack**, {answered - started:.2f} s after its start" + (
                "; still serving after it" if serving else "; **not serving after it**"
            )
        else:
            result = (
                f"kept out for the whole attack; in {answered - attack_end[0]:.2f} s after it "
                f"stopped ({answered - started:.1f} s after its start)"
            )
        lines, top = complaints_summary(backend)
        router_lines = len(router.child.lines())
        data = {
            "sources": where,
            "connections": slots_n,
            "answered_after_start": None if answered is None else answered - started,
            "answered_after_attack": None if answered is None else answered - attack_end[0],
            "serving_after": serving is not None,
            "attacker": dict(tally.outcomes),
            "attempts": tally.attempts,
            "peak_open": tally.peak,
            "backend_complaints": lines,
            "router_log_lines": router_lines,
        }
        return [
            Row(
                "lockout",
                variant,
                f"backend started {BACKEND_START:.0f} s into {duration:g} s of {slots_n:,} "
                f"never-finishing handshakes from {where}: start → first proxied 200",
                result,
                data,
            ),
            Row(
                "lockout",
                variant,
                "what the attacker's connections got",
                f"{tally.attempts:,} connections, at most {tally.peak:,} open at once: "
                + tally.describe(),
            ),
            Row(
                "lockout",
                variant,
                "backend's warning/error lines (router's log lines)",
                f"{lines:,} {top} ({router_lines:,} router lines)",
            ),
        ]
    finally:
        if backend is not None:
            backend.stop()
        router.child.stop()


async def lockout_baseline(tree: Tree) -> Row:
    import trio

    router = await start_router(tree)
    try:
        started = trio.current_time()
        backend = start_backend(tree, "baseline", router.tunnel_addr)
        try:
            answered = await wait_answer(router.http, "baseline", started + 30)
        finally:
            backend.stop()
        outcome = "not in 30 s" if answered is None else f"{answered - started:.2f} s"
        return Row("lockout", "no attack (baseline)", "backend start → first proxied 200", outcome)
    finally:
        router.child.stop()


async def attack_lockout(tree: Tree, duration: float) -> list[Row]:
    rows = [await lockout_baseline(tree)]
    for with_token in (False, True):
        rows += await lockout_run(tree, duration, with_token)
    rows += await lockout_run(tree, duration, True, spread=True)
    return rows


# -- 2. garbage ----------------------------------------------------------------------------------


async def attack_garbage(tree: Tree, duration: float) -> list[Row]:
    import trio

    cap = max(12.0, duration)
    source = "127.0.0.2" if tree.features.per_address else "127.0.0.1"
    rng = random.Random(10)
    blob = bytes(rng.choice(GARBAGE) for _ in range(1024))
    shapes: list[tuple[str, bytes, bool]] = [
        ("1 KiB of binary bytes at once, no line end", blob, False),
        ("binary bytes trickled, 1 byte / 0.5 s", b"", True),
        ("a garbage line and a blank line", b"\x16\x03\x01\x02\x00\x01\xfc garbage\r\n\r\n", False),
        ("a plain `GET / HTTP/1.1` (not the upgrade)", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False),
        ("silent: connect and send nothing", b"", False),
    ]
    router = await start_router(tree)
    rows: list[Row] = []
    try:

        async def one(label: str, payload: bytes, trickle: bool) -> None:
            started = trio.current_time()
            data, reset, outcome = b"", False, ""
            stream = await open_from(source, router.tunnel)
            async with stream:
                with trio.move_on_after(cap) as scope:
                    async with trio.open_nursery() as nursery:

                        async def send() -> None:
                            with contextlib.suppress(trio.BrokenResourceError, OSError):
                                if payload:
                                    await stream.send_all(payload)
                                while trickle:
                                    await stream.send_all(bytes([rng.choice(GARBAGE)]))
                                    await trio.sleep(0.5)

                        nursery.start_soon(send)
                        data, reset = await read_to_end(stream)
                        nursery.cancel_scope.cancel()
            elapsed = trio.current_time() - started
            if scope.cancelled_caught:
                outcome = f"no answer and still open after {cap:g} s" + (
                    f" ({classify(data, False)} so far)" if data else ""
                )
            else:
                got = classify(data, reset)
                reason = reason_of(data) if got.startswith("HTTP") else ""
                outcome = f"{got}" + (f" `{reason}`" if reason else "") + f" after {elapsed:.2f} s"
            rows.append(
                Row(
                    "garbage",
                    label,
                    "time until the router answers or closes; what it sends",
                    outcome,
                    {
                        "elapsed": elapsed,
                        "answer": classify(data, reset),
                        "open": scope.cancelled_caught,
                    },
                )
            )

        async with trio.open_nursery() as nursery:
            for shape in shapes:
                nursery.start_soon(one, *shape)
    finally:
        router.child.stop()
    order = [label for label, _, _ in shapes]
    return sorted(rows, key=lambda row: order.index(row.variant))


# -- 3. guessing ---------------------------------------------------------------------------------


async def handshake_status(source: str, port: int, token: str | None) -> str:
    """One upgrade with ``token`` from ``source``: what came back (see :func:`classify`)."""
    import trio

    try:
        stream = await open_from(source, port)
    except (OSError, TimeoutError) as exc:
        return f"connect failed ({exc})"
    async with stream:
        data = b""
        reset = False
        with trio.move_on_after(10):
            try:
                await stream.send_all(handshake_bytes(port, token))
                while b"\r\n\r\n" not in data:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        break
                    data += chunk
            except (trio.BrokenResourceError, OSError):
                reset = True
        return classify(data, reset)


async def attack_guessing(tree: Tree, duration: float) -> list[Row]:
    import trio

    router = await start_router(tree, "--token", TOKEN)
    try:
        seen: Counter[str] = Counter()
        remaining = iter(range(GUESSES))

        async def worker() -> None:
            for i in remaining:
                seen[await handshake_status("127.0.0.2", router.tunnel, f"wrong-{i:04d}")] += 1

        started = trio.current_time()
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for _ in range(GUESS_CONCURRENCY):
                    nursery.start_soon(worker)
        elapsed = trio.current_time() - started
        other = await handshake_status("127.0.0.3", router.tunnel, TOKEN)
        same = await handshake_status("127.0.0.2", router.tunnel, TOKEN)
        security = sum(
            1 for line in router.child.lines() if "127.0.0.2" in line and "WARNING" in line
        )

        def registers(answer: str) -> str:
            return f"{answer} ({'registers' if answer.startswith('HTTP 101') else 'refused'})"

        return [
            Row(
                "guessing",
                f"{GUESSES:,} wrong tokens, {GUESS_CONCURRENCY} at a time, from 127.0.0.2",
                "elapsed; answers by status",
                f"{elapsed:.2f} s ({GUESSES / elapsed:,.0f}/s); {counts(seen)}",
                {"elapsed": elapsed, "answers": dict(seen)},
            ),
            Row(
                "guessing",
                "the right token afterwards",
                "from 127.0.0.3 / from 127.0.0.2 (the guesser)",
                f"{registers(other)} / {registers(same)}",
                {"other_address": other, "same_address": same},
            ),
            Row(
                "guessing",
                "router log",
                "WARNING lines naming 127.0.0.2",
                f"{security:,}",
            ),
        ]
    finally:
        router.child.stop()


# -- 4. takeover ---------------------------------------------------------------------------------


@dataclass
class Identities:
    label: str
    flags: list[str]
    owner: str
    other: str


def tokens_file(path: Path, owner_hosts: Sequence[str]) -> Path:
    def toml_list(items: Sequence[str]) -> str:
        return "[" + ", ".join(json.dumps(i) for i in items) + "]"

    path.write_text(
        "[[token]]\n"
        'name = "owner"\n'
        f'token = "{OWNER_TOKEN}"\n'
        'services = ["api"]\n'
        f"hosts = {toml_list(owner_hosts)}\n\n"
        "[[token]]\n"
        'name = "other"\n'
        f'token = "{OTHER_TOKEN}"\n'
        'services = ["*"]\n'
        'hosts = ["*"]\n'
    )
    return path


def identity_setups(tree: Tree) -> list[Identities]:
    setups = [Identities("one shared --token", ["--token", TOKEN], TOKEN, TOKEN)]
    if tree.features.tokens_file:
        listed = tokens_file(tree.work / "tokens-listed.toml", ["api.test"])
        anyhost = tokens_file(tree.work / "tokens-any.toml", ["*"])
        setups += [
            Identities(
                "tokens file, owner's entry lists api.test, other's `*`",
                ["--tokens", str(listed)],
                OWNER_TOKEN,
                OTHER_TOKEN,
            ),
            Identities(
                "tokens file, both entries `*` (first claim wins)",
                ["--tokens", str(anyhost)],
                OWNER_TOKEN,
                OTHER_TOKEN,
            ),
        ]
    return setups


async def takeover_run(tree: Tree, ids: Identities) -> list[Row]:
    import trio

    router = await start_router(tree, "--grace", f"{GRACE:g}", *ids.flags)
    started: list[Child] = []

    def backend(name: str, **kwargs: Any) -> Child:
        child = start_backend(tree, name, router.tunnel_addr, **kwargs)
        started.append(child)
        return child

    rows: list[Row] = []
    try:
        owner = backend("owner", service="api", hosts=["api.test"], token=ids.owner)
        if await wait_answer(router.http, "owner", trio.current_time() + 20, "api.test") is None:
            raise RuntimeError(f"the owner never answered: {helper_outcome(owner)}")

        # (a) another identity claims the owner's host; (b) it claims no host at all.
        for step, hosts in (("a", ["api.test"]), ("b", [])):
            intruder = backend("intruder", service="api", hosts=hosts, token=ids.other)
            await wait_helper_settled(intruder, 8)
            seen = await who_answers(router.http, "api.test", 40)
            claim = "claims api.test too" if hosts else "claims no host"
            rows.append(
                Row(
                    "takeover",
                    ids.label,
                    f"({step}) a 2nd backend of `api`, other identity, {claim}: "
                    "40 requests for api.test",
                    f"intruder {helper_outcome(intruder)}; answered: {counts(seen)}",
                    {"answers": dict(seen), "intruder": helper_outcome(intruder)},
                )
            )
            intruder.stop()

        # (c) the owner goes away past the grace period; another service claims its host.
        owner.stop()
        await trio.sleep(GRACE + 1.0)
        web = backend("web", service="web", hosts=["api.test"], token=ids.other)
        await wait_helper_settled(web, 8)
        meanwhile = await who_answers(router.http, "api.test", 5)
        back = backend("owner", service="api", hosts=["api.test"], token=ids.owner)
        with trio.move_on_after(10):
            while (
                back.returncode is None
                and not (await who_answers(router.http, "api.test", 1))["owner"]
            ):
                await trio.sleep(0.2)
        await trio.sleep(0.5)
        after = await who_answers(router.http, "api.test", 10)
        rows.append(
            Row(
                "takeover",
                ids.label,
                f"(c) owner away > --grace {GRACE:g} s, service `web` claims api.test, "
                "owner returns",
                f"web {helper_outcome(web)}, api.test then → {counts(meanwhile)}; "
                f"owner back: {helper_outcome(back)}; api.test then → {counts(after)}",
                {
                    "web": helper_outcome(web),
                    "owner_back": helper_outcome(back),
                    "answers_meanwhile": dict(meanwhile),
                    "answers_after": dict(after),
                },
            )
        )
        return rows
    finally:
        for child in started:
            child.stop()
        router.child.stop()


async def attack_takeover(tree: Tree, duration: float) -> list[Row]:
    rows: list[Row] = []
    for ids in identity_setups(tree):
        rows += await takeover_run(tree, ids)
    if not tree.features.tokens_file:
        rows.append(
            Row("takeover", "tokens file (`--tokens`)", "(a) to (c) with two identities", NA)
        )
    return rows


# -- 5. failing tunnel ---------------------------------------------------------------------------


def reset_backend_main(router: str, service: str, token: str | None) -> int:
    """``--reset-backend``: a tunnel that resets every stream (run with the tree's PYTHONPATH)."""
    import h2.config
    import h2.connection
    import h2.errors
    import h2.events
    import h2.exceptions

    from ptth.proto.handshake import ClientHandshake, Registration

    host, _, port = router.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    handshake = ClientHandshake(
        Registration(service=service, instance="resetter", token=token), router
    )
    sock.sendall(handshake.request_bytes())
    accepted = None
    while accepted is None:
        accepted = handshake.receive(sock.recv(65536))
    print(f"accepted {accepted.tunnel_id}", flush=True)
    sock.settimeout(None)
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    data, streams = accepted.trailing, 0
    while True:
        if not data:
            data = sock.recv(65536)
            if not data:
                return 0
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            print(f"protocol error {exc}", flush=True)
            return 1
        data = b""
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                streams += 1
                with contextlib.suppress(h2.exceptions.StreamClosedError):
                    conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
                print(f"stream {streams}", flush=True)
        out = conn.data_to_send()
        if out:
            sock.sendall(out)


def streams_received(child: Child) -> int:
    return sum(1 for line in child.lines() if line.startswith("stream "))


async def attack_failing_tunnel(tree: Tree, duration: float) -> list[Row]:
    import trio

    router = await start_router(tree)
    healthy: Child | None = None
    bad: Child | None = None
    rows: list[Row] = []
    try:
        healthy = start_backend(tree, "healthy", router.tunnel_addr)
        if await wait_answer(router.http, "healthy", trio.current_time() + 20) is None:
            raise RuntimeError(f"the healthy backend never answered: {helper_outcome(healthy)}")
        bad = tree.spawn(
            "resetter",
            [tree.python, str(Path(__file__).resolve()), "--reset-backend", router.tunnel_addr],
        )
        with trio.fail_after(20):
            while "accepted" not in bad.text():
                if bad.returncode is not None:
                    raise RuntimeError(f"the resetting backend exited: {bad.text()[-500:]}")
                await trio.sleep(0.05)
        await trio.sleep(0.5)

        async def burst(label: str) -> None:
            before = streams_received(bad) if bad else 0
            statuses: list[int] = []
            for _ in range(100):
                statuses.append((await http_get(router.http))[0])
            assert bad is not None
            await trio.sleep(0.2)
            got = streams_received(bad) - before
            seen = Counter(f"HTTP {s or 'none'}" for s in statuses)
            late = Counter(f"HTTP {s or 'none'}" for s in statuses[50:])
            rows.append(
                Row(
                    "failing-tunnel",
                    label,
                    "100 requests: statuses; streams the resetting tunnel received",
                    f"{counts(seen)}; last 50: {counts(late)}; the bad tunnel got {got} streams",
                    {"statuses": dict(seen), "last_50": dict(late), "bad_streams": got},
                )
            )

        await burst("next to a healthy tunnel of the same service")
        healthy.stop()
        await trio.sleep(0.5)
        await burst("alone")
        return rows
    finally:
        for child in (bad, healthy):
            if child is not None:
                child.stop()
        router.child.stop()


# -- 6. plaintext --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def relay(target: int, captured: bytearray) -> AsyncIterator[int]:
    """A TCP relay on a free port to 127.0.0.1:target; bytes backend → router go to ``captured``."""
    import trio

    async def pump(src: Any, dst: Any, keep: bool) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            while chunk := await src.receive_some(65536):
                if keep and len(captured) < 1 << 20:
                    captured.extend(chunk)
                await dst.send_all(chunk)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await dst.send_eof()

    async def handle(client: Any) -> None:
        async with client:
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", target)
            except OSError:
                return
            async with upstream, trio.open_nursery() as nursery:
                nursery.start_soon(pump, client, upstream, True)
                nursery.start_soon(pump, upstream, client, False)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1")
        )
        yield int(listeners[0].socket.getsockname()[1])
        nursery.cancel_scope.cancel()


async def plaintext_run(tree: Tree, tls: bool) -> Row:
    import trio

    variant = "tls://" if tls else "tcp"
    flags = ["--token", TOKEN]
    env: dict[str, str] = {}
    extra: list[str] = []
    if tls:
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        chain, key, ca_pem = (tree.work / n for n in ("tunnel.pem", "tunnel.key", "ca.pem"))
        cert.private_key_pem.write_to_path(str(key))
        chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        ca.cert_pem.write_to_path(str(ca_pem))
        flags += ["--tunnel-tls-cert", str(chain), "--tunnel-tls-key", str(key)]
        env["SSL_CERT_FILE"] = str(ca_pem)
        if tree.features.ca_file:
            extra = ["--ca-file", str(ca_pem)]
    router = await start_router(tree, *flags)
    captured = bytearray()
    backend: Child | None = None
    try:
        async with relay(router.tunnel, captured) as port:
            address = f"{'tls://' if tls else ''}127.0.0.1:{port}"
            started = trio.current_time()
            backend = start_backend(tree, "wire", address, token=TOKEN, extra=extra, env=env)
            answered = await wait_answer(router.http, "wire", started + 20)
            await trio.sleep(0.2)
        visible = TOKEN.encode() in bytes(captured)
        bearer = b"Bearer" in bytes(captured)
        state = (
            "never in service: " + helper_outcome(backend)
            if answered is None
            else f"in service after {answered - started:.2f} s"
        )
        outcome = (
            f"token {'**readable**' if visible else 'not readable'}"
            f"{' (`Authorization: Bearer …` in clear)' if bearer else ''} in "
            f"{len(captured):,} bytes backend → router; {state}"
            + (f"; CA by {'--ca-file' if extra else 'SSL_CERT_FILE'}" if tls else "")
        )
        return Row(
            "plaintext",
            variant,
            "bytes on the wire through a relay: is the bearer token readable",
            outcome,
            {"token_visible": visible, "bytes": len(captured), "in_service": answered is not None},
        )
    finally:
        if backend is not None:
            backend.stop()
        router.child.stop()


async def attack_plaintext(tree: Tree, duration: float) -> list[Row]:
    rows = [await plaintext_run(tree, tls=False)]
    if tree.features.tunnel_tls and tree.features.helper_tls:
        rows.append(await plaintext_run(tree, tls=True))
    else:
        rows.append(Row("plaintext", "tls://", "the token on the wire over TLS", NA))
    return rows


# -- main ----------------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[Tree, float], Any]] = {
    "lockout": attack_lockout,
    "garbage": attack_garbage,
    "guessing": attack_guessing,
    "takeover": attack_takeover,
    "failing-tunnel": attack_failing_tunnel,
    "plaintext": attack_plaintext,
}
BUDGET = {  # seconds each attack may take at most, beyond --duration
    "lockout": 300.0,
    "garbage": 40.0,
    "guessing": 180.0,
    "takeover": 240.0,
    "failing-tunnel": 120.0,
    "plaintext": 90.0,
}


async def run_all(tree: Tree, names: Sequence[str], duration: float) -> tuple[list[Row], bool]:
    import trio

    rows: list[Row] = []
    failed = False
    for name in names:
        print(f"tunnel_attacks: {name} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            with trio.fail_after(BUDGET[name] + 3 * duration):
                rows += await RUNNERS[name](tree, duration)
        except (Exception, trio.TooSlowError) as exc:  # one attack failing must not stop the rest
            failed = True
            leaf: BaseException = exc
            while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
                leaf = leaf.exceptions[0]
            rows.append(Row(name, "", "", f"error: {type(leaf).__name__}: {leaf}"[:300]))
        finally:
            tree.children.stop_all()
        print(f"tunnel_attacks: {name} took {time.monotonic() - started:.1f} s", file=sys.stderr)
    return rows, failed


def raise_fd_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tree", type=Path, default=REPO, help="source tree to test")
    parser.add_argument("--only", default="", help=f"comma-separated: {', '.join(ATTACKS)}")
    parser.add_argument("--json", action="store_true", help="rows as JSON on stdout")
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds of the lockout attack (default 10)"
    )
    parser.add_argument(
        "--logs",
        type=Path,
        help="keep every child's log (and the files given to it) in this directory",
    )
    parser.add_argument("--reset-backend", metavar="HOST:PORT", help=argparse.SUPPRESS)
    parser.add_argument("--service", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--token", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the children are stopped either way."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.reset_backend:
        return reset_backend_main(args.reset_backend, args.service, args.token)
    import trio

    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(ATTACKS)
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        print(
            f"tunnel_attacks: unknown attack {unknown[0]!r} ({', '.join(ATTACKS)})", file=sys.stderr
        )
        return 2
    raise_fd_limit()
    children = Children()
    with terminate_as_interrupt(), contextlib.ExitStack() as stack:
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            work = str(args.logs)
        else:
            work = stack.enter_context(tempfile.TemporaryDirectory(prefix="ptth-attacks-"))
        try:
            tree = Tree(args.tree.resolve(), Path(work), children)
            tree.check_imports()
            meta = {
                "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "tree": str(tree.path),
                "commit": tree.commit(),
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "duration": args.duration,
                "features": tree.features.summary(),
            }
            rows, failed = trio.run(run_all, tree, names, args.duration)
        except KeyboardInterrupt:
            print("tunnel_attacks: interrupted; every child stopped", file=sys.stderr)
            return 130
        finally:
            children.stop_all()
    out = sys.stderr if args.json else sys.stdout
    print(f"tree {meta['tree']} at {meta['commit']}; {meta['date']}", file=out)
    print(
        "features: "
        + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in meta["features"].items()),
        file=out,
    )
    print(file=out)
    print(table(rows), file=out)
    if args.json:
        json.dump({"meta": meta, "rows": [row.__dict__ for row in rows]}, sys.stdout, indent=2)
        print()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""``make demo``: a router, two backends and a load test, each its own process, all on 127.0.0.1.

1. ``examples/router.py`` on port 0 (both ports); its ``ready:`` line says where it landed.
2. ``examples/backend.py --name backend-1`` and ``backend-2`` dial the router's tunnel port.
3. Once the router has served both (two distinct ``X-Backend`` values), ``examples/user.py``
   sends 200 requests from 10 workers and prints each exchange and a summary.
4. Everything is stopped (SIGTERM, then SIGKILL if needed); the exit code is user.py's.

The children log at WARNING, so normally only the demo's and user.py's lines appear; anything a
child does print is shown prefixed with its name, e.g. ``[backend-1] ...``.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import httpx

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
READY = re.compile(r"^ready: front end on (http://\S+), tunnel port on (\S+)$")
START_TIMEOUT = 20.0  # seconds for the router to bind and for both backends to register
LOAD_TIMEOUT = 120.0
STOP_TIMEOUT = 10.0


# The reader threads and the main thread all print: print() writes the text and its end
# separately, so without a lock two lines can run together.
_output = threading.Lock()


def emit(text: str) -> None:
    """Write ``text`` (a whole line, newline included) at once."""
    with _output:
        sys.stdout.write(text)
        sys.stdout.flush()


def say(message: str) -> None:
    emit(f"[demo] {message}\n")


class Child:
    """A child process whose output lines are echoed with a ``[name]`` prefix by a thread."""

    def __init__(self, name: str, *args: str) -> None:
        self.name = name
        self.ready: queue.Queue[tuple[str, str]] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.reader = threading.Thread(target=self._echo, daemon=True)
        self.reader.start()

    def _echo(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            match = READY.match(line.rstrip("\n"))
            if match:
                self.ready.put((match[1], match[2]))
            elif line.startswith("status page on "):
                say(f"{line.strip()} (live while the demo runs: open it in a browser)")
            else:
                emit(f"[{self.name}] {line}")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited early with code {self.proc.returncode}")

    def stop(self) -> None:
        """SIGTERM (graceful drain), then SIGKILL after STOP_TIMEOUT; always reaped."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                say(f"{self.name} did not stop in {STOP_TIMEOUT:g} s; killing it")
                self.proc.kill()
                self.proc.wait()
        self.reader.join(timeout=2)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def wait_ready(router: Child) -> tuple[str, str]:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        router.check_alive()
        try:
            return router.ready.get(timeout=0.1)
        except queue.Empty:
            pass
    raise TimeoutError(f"the router did not report its ports within {START_TIMEOUT:g} s")


def wait_backends(url: str, names: set[str], children: list[Child]) -> None:
    """Poll the router until every backend in ``names`` has answered at least once."""
    seen: set[str] = set()
    deadline = time.monotonic() + START_TIMEOUT
    with httpx.Client(timeout=2.0) as client:
        while not names <= seen:
            if time.monotonic() > deadline:
                missing = ", ".join(sorted(names - seen))
                raise TimeoutError(f"not registered after {START_TIMEOUT:g} s: {missing}")
            for child in children:
                child.check_alive()
            try:
                response = client.get(url)
                seen.add(response.headers.get("x-backend", ""))
            except httpx.HTTPError:
                pass
            if not names <= seen:
                time.sleep(0.05)


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through `finally`, which stops the children


def main() -> int:
    signal.signal(signal.SIGTERM, _terminated)
    quiet = ["--log-level", "WARNING"]
    children: list[Child] = []
    try:
        router = Child(
            "router",
            str(EXAMPLES / "router.py"),
            *("--http", "127.0.0.1:0", "--tunnel", "127.0.0.1:0", "--admin", "127.0.0.1:0", *quiet),
        )
        children.append(router)
        front, tunnel = wait_ready(router)
        say(f"router: front end on {front}, tunnel port on {tunnel}")

        names = ["backend-1", "backend-2"]
        for name in names:
            backend = Child(
                name, str(EXAMPLES / "backend.py"), "--router", tunnel, "--name", name, *quiet
            )
            children.append(backend)
        wait_backends(f"{front}/foo", set(names), children)
        say(f"{' and '.join(names)} registered; starting the load test")

        user = [str(EXAMPLES / "user.py"), "--url", f"{front}/foo"]
        user += ["--requests", "200", "--concurrency", "10"]
        emit("\n")
        result = subprocess.run([sys.executable, *user], cwd=ROOT, timeout=LOAD_TIMEOUT)
        emit("\n")
        say(f"user.py exited with {result.returncode}")
        return result.returncode
    except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as exc:
        say(f"failed: {exc}")
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        # Backends first (they drain), then the router, so nothing logs reconnect attempts.
        for child in reversed(children):
            child.stop()
        if children:
            say("router and backends stopped")


if __name__ == "__main__":
    sys.exit(main())

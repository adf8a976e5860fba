"""Helpers for the agent-mode, gRPC and SSE tests: child processes and agents on 127.0.0.1."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

import ptth
from tests.support import ROOT

RUNNING_ON = re.compile(rb"Running on http://(127\.0\.0\.1:\d+)")
REGISTERED = re.compile(rb"tunnel \S+: registered")


@dataclass
class Child:
    """A child process whose merged stdout/stderr is drained into ``output`` continuously."""

    process: trio.Process
    output: bytearray = field(default_factory=bytearray)
    changed: trio.Event = field(default_factory=trio.Event)

    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    async def drain(self) -> None:
        assert self.process.stdout is not None
        async for data in self.process.stdout:
            self.output += data
            self.changed.set()
            self.changed = trio.Event()

    async def wait_for(self, pattern: re.Pattern[bytes], timeout: float = 20) -> re.Match[bytes]:
        with trio.move_on_after(timeout):
            while True:
                match = pattern.search(self.output)
                if match is not None:
                    return match
                if self.process.poll() is not None:
                    await trio.sleep(0.1)  # let the last output arrive
                    match = pattern.search(self.output)
                    if match is not None:
                        return match
                    break
                with trio.move_on_after(0.2):
                    await self.changed.wait()
        raise AssertionError(f"{pattern.pattern!r} not seen; child output:\n{self.text()}")


@asynccontextmanager
async def child(nursery: trio.Nursery, *args: str, **env: str) -> AsyncIterator[Child]:
    """``python *args`` from the repo root; killed and reaped on the way out."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT), **env)
    process = await trio.lowlevel.open_process(
        [sys.executable, *args],
        cwd=str(ROOT),
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    handle = Child(process)
    nursery.start_soon(handle.drain)
    try:
        yield handle
    finally:
        with trio.CancelScope(shield=True):
            if process.poll() is None:
                process.kill()
            await process.wait()


@asynccontextmanager
async def hypercorn_upstream(nursery: trio.Nursery, app: str, port: int = 0) -> AsyncIterator[str]:
    """A hypercorn process serving ``app`` (HTTP/1.1 and h2c) on 127.0.0.1; yields HOST:PORT."""
    # --workers 0: serve in this very process, so killing it leaves no orphaned worker behind.
    args = ("-m", "hypercorn", app, "--worker-class", "trio", "--workers", "0")
    args += ("--bind", f"127.0.0.1:{port}")
    async with child(nursery, *args) as proc:
        match = await proc.wait_for(RUNNING_ON)
        yield match[1].decode()


@dataclass
class RunningAgent:
    scope: trio.CancelScope
    done: trio.Event
    error: BaseException | None = None

    async def stop(self) -> None:
        self.scope.cancel()
        await self.done.wait()


async def start_agent(
    nursery: trio.Nursery, url: str, router_addr: str, **kwargs: Any
) -> RunningAgent:
    """``ptth.serve_upstream`` in ``nursery``; errors are kept on the handle, not raised."""
    handle = RunningAgent(trio.CancelScope(), trio.Event())

    async def run() -> None:
        try:
            with handle.scope:
                await ptth.serve_upstream(url, router_addr, **kwargs)
        except Exception as exc:
            handle.error = exc
        finally:
            handle.done.set()

    nursery.start_soon(run)
    return handle


@asynccontextmanager
async def agent_process(nursery: trio.Nursery, url: str, router_addr: str) -> AsyncIterator[Child]:
    """``python -m ptth --to URL --router ADDR`` until its tunnel is registered."""
    async with child(nursery, "-m", "ptth", "--to", url, "--router", router_addr) as proc:
        await proc.wait_for(REGISTERED)
        yield proc

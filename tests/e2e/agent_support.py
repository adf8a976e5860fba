"""Helpers for the agent-mode, gRPC and SSE tests: child processes and agents on 127.0.0.1."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

import ptth
from tests.support import Child, RunningBackend, child, start_serving

RUNNING_ON = re.compile(rb"Running on http://(127\.0\.0\.1:\d+)")
REGISTERED = re.compile(rb"tunnel \S+: registered")


@asynccontextmanager
async def hypercorn_upstream(nursery: trio.Nursery, app: str, port: int = 0) -> AsyncIterator[str]:
    """A hypercorn process serving ``app`` (HTTP/1.1 and h2c) on 127.0.0.1; yields HOST:PORT."""
    # --workers 0: serve in this very process, so killing it leaves no orphaned worker behind.
    args: tuple[str, ...] = ("-m", "hypercorn", app, "--worker-class", "trio", "--workers", "0")
    args += ("--bind", f"127.0.0.1:{port}")
    async with child(nursery, *args) as proc:
        match = await proc.wait_for(RUNNING_ON)
        yield match[1].decode()


async def start_agent(
    nursery: trio.Nursery, url: str, router_addr: str, **kwargs: Any
) -> RunningBackend:
    """``ptth.serve_upstream`` in ``nursery``; errors are kept on the handle, not raised."""
    return await start_serving(nursery, ptth.serve_upstream, url, router_addr, **kwargs)


@asynccontextmanager
async def agent_process(nursery: trio.Nursery, url: str, router_addr: str) -> AsyncIterator[Child]:
    """``python -m ptth --to URL --router ADDR`` until its tunnel is registered."""
    async with child(nursery, "-m", "ptth", "--to", url, "--router", router_addr) as proc:
        await proc.wait_for(REGISTERED)
        yield proc

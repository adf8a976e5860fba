"""This process as one worker of several (ARCHITECTURE.md, "Several cores").

A worker started by the supervisor (router/workers.py) inherits its listening sockets as file
descriptors and knows its id and the worker count; the tunnel handshake names it
(``Ptth-Worker``), so helpers can hold a tunnel to every worker. A router of one process has
no worker context, and everything here falls back to binding its own sockets as it always did.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import anyio.abc
from anyio.streams.stapled import MultiListener

from ptth.proto.handshake import WorkerInfo

__all__ = ["WorkerContext", "current", "listen", "set_current", "warm_up", "worker_info"]

# A restarted worker's wait for helpers to re-cover it before it takes users (see warm_up).
WARM_UP_MAX = 3.0
WARM_UP_QUIET = 0.5


@dataclass(frozen=True)
class WorkerContext:
    """What the supervisor gave this worker: its index, id and count, and inherited listening
    sockets by name ("http", "tunnel"), each a tuple of descriptors (one per bound address)."""

    index: int
    info: WorkerInfo
    sockets: dict[str, tuple[int, ...]] = field(default_factory=dict)
    restarted: bool = False  # the supervisor restarted this worker after one died
    parent_fd: int | None = None  # read end of a pipe only the supervisor writes to (EOF: gone)


_current: WorkerContext | None = None


def set_current(context: WorkerContext | None) -> None:
    """Called once by ``python -m router`` in a worker process, before the router starts."""
    global _current
    _current = context


def current() -> WorkerContext | None:
    return _current


def worker_info() -> WorkerInfo | None:
    """The id the tunnel handshake announces, or None in a router of one process."""
    return None if _current is None else _current.info


async def warm_up(tunnels: Callable[[], int]) -> None:
    """A restarted worker starts with no tunnel: users it accepted at once would get 503 until
    helpers re-cover it. Connections meanwhile wait in its socket's backlog (the supervisor
    keeps it open), so it accepts them once tunnels have come and ``WARM_UP_QUIET`` seconds
    passed with no new one, or after ``WARM_UP_MAX`` at most. ``tunnels()``: registered now."""
    if _current is None or not _current.restarted:
        return
    started = last_change = anyio.current_time()
    last = tunnels()
    while (now := anyio.current_time()) - started < WARM_UP_MAX:
        count = tunnels()
        if count != last:
            last, last_change = count, now
        elif count and now - last_change >= WARM_UP_QUIET:
            return
        await anyio.sleep(0.05)


async def listen(name: str, host: str | None, port: int) -> MultiListener[anyio.abc.SocketStream]:
    """The listener for ``name``: the sockets the supervisor handed down when there are any,
    else a fresh one bound to ``host:port`` (``anyio.create_tcp_listener``)."""
    fds = () if _current is None else _current.sockets.get(name, ())
    if not fds:
        return await anyio.create_tcp_listener(local_host=host, local_port=port)
    listeners: list[anyio.abc.SocketListener] = []
    for fd in fds:
        # Called once per name in a worker's life: the listener owns the descriptor from here.
        sock = socket.socket(fileno=fd)
        listeners.append(await anyio.abc.SocketListener.from_socket(sock))
    return MultiListener(listeners)

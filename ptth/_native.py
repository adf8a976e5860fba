"""The running loop's own task spawning and events, for the driver's per-stream hot path.

anyio wraps every task it starts (a cancel scope, an event and a coroutine frame per task) and
looks the backend up on every ``anyio.Event()``: measured here, starting a task through anyio
costs 3 to 4.5 times what trio's nursery or asyncio's TaskGroup costs, and the driver starts one
per stream. Native tasks and events work inside anyio's cancel scopes on both backends (anyio
is built to run in tasks it did not create), so the driver uses them where it starts or wakes
something per stream and anyio everywhere else (ARCHITECTURE.md, "The driver").
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import anyio
import sniffio

__all__ = ["Spawn", "Waiter", "event_factory", "open_spawner"]

Spawn = Callable[[Callable[[Any], Awaitable[None]], Any], None]


class Waiter(Protocol):
    def set(self) -> None: ...

    async def wait(self) -> Any: ...


def event_factory() -> Callable[[], Waiter]:
    """A zero-argument constructor of the running loop's event type."""
    library = sniffio.current_async_library()
    if library == "trio":
        import trio

        return trio.Event
    if library == "asyncio":
        import asyncio

        return asyncio.Event
    return anyio.Event


@asynccontextmanager
async def open_spawner() -> AsyncIterator[Spawn]:
    """``spawn(fn, arg)`` starts ``fn(arg)`` as a child task; all are done when the block exits."""
    library = sniffio.current_async_library()
    if library == "trio":
        import trio

        async with trio.open_nursery() as nursery:
            yield nursery.start_soon
    elif library == "asyncio":
        import asyncio

        async with asyncio.TaskGroup() as group:

            def spawn(fn: Callable[[Any], Awaitable[None]], arg: Any) -> None:
                group.create_task(fn(arg))  # type: ignore[arg-type]

            yield spawn
    else:
        async with anyio.create_task_group() as task_group:

            def spawn_anyio(fn: Callable[[Any], Awaitable[None]], arg: Any) -> None:
                task_group.start_soon(fn, arg)  # type: ignore[arg-type]

            yield spawn_anyio

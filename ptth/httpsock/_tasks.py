"""Background tasks owned by an object, not by the caller's task group.

``dial()`` returns a plain byte stream, like ``anyio.connect_tcp``, yet its stream needs a GET
always outstanding and a PUT pump: tasks that outlive the call that made them. A task group
entered in ``dial()`` and left in ``aclose()`` would straddle the caller's cancel scopes, which
neither trio nor anyio allows. So each pump is a loop-level task (an asyncio task; a trio
system task) that the stream cancels and waits for in ``aclose()``, and that never lets an
exception escape (a trio system task's exception would crash the run).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import anyio
import sniffio

__all__ = ["Pump"]

log = logging.getLogger("ptth.httpsock")

_asyncio_tasks: set[asyncio.Task[None]] = set()  # asyncio keeps only weak references


class Pump:
    """``fn`` running in the background until it returns or :meth:`stop` is awaited; what it
    raised is in :attr:`error`."""

    def __init__(
        self,
        fn: Callable[[], Awaitable[None]],
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._fn = fn
        self._on_error = on_error
        self._scope = anyio.CancelScope()
        self._done = anyio.Event()
        self.error: BaseException | None = None
        if sniffio.current_async_library() == "trio":
            import trio

            trio.lowlevel.spawn_system_task(self._run)
        else:
            task = asyncio.get_running_loop().create_task(self._run())
            _asyncio_tasks.add(task)
            task.add_done_callback(_asyncio_tasks.discard)

    async def _run(self) -> None:
        try:
            with self._scope:
                await self._fn()
        except anyio.get_cancelled_exc_class():
            raise  # from outside (the event loop ending): ours is caught by the scope
        except BaseException as exc:  # stored; the owner reports it
            self.error = exc
            log.debug("httpsock pump failed", exc_info=True)
            if self._on_error is not None:
                self._on_error(exc)
        finally:
            self._done.set()

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    async def stop(self) -> None:
        """Cancel it and wait until it has finished (shielded: also from a cancelled scope)."""
        self._scope.cancel()
        with anyio.CancelScope(shield=True):
            await self._done.wait()

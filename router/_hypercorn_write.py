"""Give hypercorn's writes to a user a deadline, so a user who stops reading pins nothing.

hypercorn 0.18's trio ``TCPServer.protocol_send`` writes every byte inside a *shielded* cancel
scope with no timeout. A user who stops reading (TCP zero window, ARCHITECTURE.md, attack 13) leaves
that ``send_all`` waiting for as long as they keep the connection open (the kernel probes a zero
window indefinitely). Over HTTP/1.1 that write is the app's own ``send``: the proxy task, its
tunnel stream and the backend's work stay pinned with it, and no cancellation can reach them.
Over HTTP/2 the connection's send task stalls the same way.

:class:`WriteBoundTCPServer` keeps the shield (a write cut short by some outer cancellation would
corrupt the byte stream) but gives each 64 KiB slice of a write ``config.send_timeout`` seconds.
A slice that makes no progress in that time means the user is not reading: the connection is
closed (a half-written frame cannot be resumed), which wakes every task waiting on it, and the
app gets ``http.disconnect`` as for any lost connection. Like nginx's ``send_timeout`` the
deadline runs between writes that make progress, so a slow reader that keeps taking data is
never cut; only one that takes less than 64 KiB in ``send_timeout`` seconds is.
"""

from __future__ import annotations

import logging

import hypercorn.trio.run
import trio
from hypercorn.config import Config
from hypercorn.events import Closed, RawData
from hypercorn.events import Event as IOEvent
from hypercorn.trio.tcp_server import TCPServer

__all__ = ["FrontConfig", "WriteBoundTCPServer", "install"]

log = logging.getLogger("router.frontend")

SLICE = 64 * 1024  # bytes that must leave within send_timeout


class FrontConfig(Config):
    """hypercorn's ``Config`` plus the write deadline (None: hypercorn's unbounded writes)."""

    send_timeout: float | None = None


class WriteBoundTCPServer(TCPServer):
    """``TCPServer`` whose writes give up after ``config.send_timeout`` s without progress."""

    async def protocol_send(self, event: IOEvent) -> None:
        timeout = getattr(self.config, "send_timeout", None)
        if not timeout or not isinstance(event, RawData):
            await super().protocol_send(event)
            return
        async with self.send_lock:
            try:
                with trio.CancelScope(shield=True):
                    delivered = await self._send_bounded(event.data, timeout)
                    if not delivered:
                        await trio.aclose_forcefully(self.stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                delivered = False
            if not delivered:
                await self.protocol.handle(Closed())

    async def _send_bounded(self, data: bytes, timeout: float) -> bool:
        view = memoryview(data)
        for start in range(0, len(view), SLICE):
            with trio.move_on_after(timeout) as waited:
                await self.stream.send_all(view[start : start + SLICE])
            if waited.cancelled_caught:
                log.info("user took no data for %g s: connection closed", timeout)
                return False
        return True


def install() -> None:
    """Make hypercorn's trio worker serve connections with :class:`WriteBoundTCPServer`.

    ``hypercorn.trio.run`` looks ``TCPServer`` up in its globals when it starts serving, so
    call this before ``serve``. Idempotent; connections whose config has no ``send_timeout``
    behave exactly as before.
    """
    hypercorn.trio.run.TCPServer = WriteBoundTCPServer  # type: ignore[attr-defined]

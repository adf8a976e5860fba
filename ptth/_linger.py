"""Close a tunnel's byte stream so that the peer reads everything we sent before it goes.

Closing a socket with unread input makes the kernel answer with RST, and an RST can destroy what
the peer has not read yet, our GOAWAY included: a stream the peer opened just before it would
then fail as "tunnel lost" instead of being retried as refused (RFC 9113 section 6.8). With EOF
the peer reads everything, then closes its side.
"""

from __future__ import annotations

import trio

__all__ = ["linger_close"]

DISCARD_SIZE = 256 * 1024


async def linger_close(stream: trio.abc.Stream, *, timeout: float) -> None:
    """Half-close, then read (and ignore) until the peer closes, for at most ``timeout`` s.

    Streams that cannot half-close are left alone; the caller closes ``stream`` afterwards.
    """
    if not isinstance(stream, trio.abc.HalfCloseableStream):
        return
    with trio.move_on_after(timeout):
        try:
            await stream.send_eof()
            while await stream.receive_some(DISCARD_SIZE):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

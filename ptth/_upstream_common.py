"""What the agent's relays share: their two failure kinds, the answers they send, and the
tunnel-side operations that turn the stream's failure into :class:`DownstreamGone`.

A relay sits between the tunnel stream (the router's request) and an upstream server. Either side
can fail, and what the agent does differs: an **upstream** failure becomes a 502 while no response
header has gone back, and a reset tunnel stream after that (a truncated body must look truncated,
ARCHITECTURE.md); a **downstream** failure (the router reset the stream: the user went away)
cancels the upstream exchange and sends nothing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager

import anyio
import anyio.abc
from h2.errors import ErrorCodes

from .driver import Stream
from .errors import TunnelError
from .groups import unwrap

__all__ = [
    "DownstreamGone",
    "Progress",
    "RelayError",
    "UpstreamFailed",
    "downstream",
    "fail_relay",
    "receive_downstream",
    "relaying",
    "send_plain",
    "watch_downstream",
]

log = logging.getLogger("ptth.agent")


class RelayError(Exception):
    """A relay stopped early; never leaves the agent."""


class UpstreamFailed(RelayError):
    """The upstream server could not be reached, refused, broke the protocol or went away."""


class DownstreamGone(RelayError):
    """The tunnel stream failed (reset by the router, or the tunnel closed)."""


class Progress:
    """How far one relayed exchange got (decides 502 versus reset on failure)."""

    headers_sent = False


async def send_plain(stream: Stream, status: int, text: str) -> None:
    """A short plain-text answer (the agent's own error responses), best effort."""
    body = f"{text}\n".encode()
    try:
        await stream.send_headers(
            [
                (b":status", str(status).encode()),
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ]
        )
        await stream.send_data(body, end_stream=True)
    except TunnelError:
        pass


async def fail_relay(stream: Stream, error: RelayError, *, headers_sent: bool) -> None:
    """Answer for a relay that failed: 502 before the response started, RST_STREAM after."""
    tunnel_id = stream.tunnel_id
    if isinstance(error, DownstreamGone):
        log.debug("tunnel %s: stream %d gone: %s", tunnel_id, stream.stream_id, error)
        return
    log.warning("tunnel %s: stream %d: %s", tunnel_id, stream.stream_id, error)
    if not headers_sent:
        await send_plain(stream, 502, f"Bad Gateway: {error}")
        return
    with anyio.CancelScope(shield=True):
        await stream.reset(ErrorCodes.INTERNAL_ERROR)


@asynccontextmanager
async def relaying(stream: Stream, progress: Progress) -> AsyncIterator[None]:
    """Around one relayed exchange: the :class:`RelayError` it ends with, alone or out of a
    nursery's group, is answered by :func:`fail_relay`; any other error propagates."""
    try:
        try:
            yield
        except BaseExceptionGroup as group:
            # The one error the relay's nursery ended with (its siblings were merely cancelled).
            raise unwrap(group, RelayError) from None
    except RelayError as error:
        await fail_relay(stream, error, headers_sent=progress.headers_sent)


async def downstream(operation: Awaitable[None]) -> None:
    """Await a send on the tunnel stream; its failure means the router gave up on the stream."""
    try:
        await operation
    except TunnelError as exc:
        raise DownstreamGone(str(exc)) from None


async def watch_downstream(stream: Stream) -> None:
    """Raise :class:`DownstreamGone` once the tunnel stream fails; run it beside the exchange."""
    while stream.error is None:
        await stream.wait_changed()
    raise DownstreamGone(str(stream.error))


async def receive_downstream(stream: Stream) -> bytes:
    """The next chunk of the tunnel stream (b"" at its end); raises :class:`DownstreamGone`."""
    try:
        return await stream.receive_data()
    except TunnelError as exc:
        raise DownstreamGone(str(exc)) from None

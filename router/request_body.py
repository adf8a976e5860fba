"""The request body on its way from the user into a tunnel stream.

It is read from ASGI ``receive`` only as fast as the stream takes it, under a size limit (413) and
an idle timeout (408). While it is small a copy is kept, so a stream the backend refused
(RFC 9113 §8.7) can be replayed on another tunnel.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from ptth.driver import Stream
from ptth.errors import BodyTooLarge, RequestTimeout, TunnelError
from ptth.types import Message, Receive

from .proxy_common import ClientGone

__all__ = ["REPLAY_LIMIT", "RequestBody", "pump_request", "watch_disconnect", "watch_until_stream"]

REPLAY_LIMIT = 64 * 1024  # body bytes kept so a refused stream can be replayed elsewhere


class RequestBody:
    """The request body as read from ASGI ``receive``; keeps a replay copy while it is small."""

    def __init__(self, receive: Receive, limit: int, idle_timeout: float) -> None:
        self._receive = receive
        self.limit = limit
        self.idle_timeout = idle_timeout
        self.replay: list[bytes] | None = []
        self.replay_size = 0
        self.total = 0
        self.complete = False
        self.disconnected = False
        self.messages = 0  # ASGI messages taken from receive

    async def next_chunk(self, *, keep: bool = False) -> bytes | None:
        """The next body chunk, or None at the end; raises ClientGone on disconnect.

        ``keep`` keeps the chunk in the replay copy whatever its size (it has not been sent).
        """
        if self.complete:
            return None
        # A body that stalls (slowloris/RUDY, ARCHITECTURE.md, attack 12) must not pin a stream.
        with trio.move_on_after(self.idle_timeout):
            message: Message = await self._receive()
            return self._take(message, keep=keep)
        raise RequestTimeout(f"request body stalled for {self.idle_timeout:g} s")

    async def read_ahead(self) -> None:
        """Take the first message before any stream exists (the pump sends it first).

        A user who reset the request or left meanwhile is noticed here (ClientGone).
        """
        if self.messages == 0:
            await self.next_chunk(keep=True)

    def _take(self, message: Message, *, keep: bool = False) -> bytes | None:
        self.messages += 1
        if message["type"] == "http.disconnect":
            self.disconnected = True
            raise ClientGone()
        chunk = bytes(message.get("body", b""))
        self.total += len(chunk)
        if self.limit and self.total > self.limit:
            raise BodyTooLarge(f"request body over {self.limit} bytes")
        if not message.get("more_body", False):
            self.complete = True
        if self.replay is not None:
            self.replay.append(chunk)
            self.replay_size += len(chunk)
            if self.replay_size > REPLAY_LIMIT and not keep:
                self.replay = None
        return chunk

    async def wait_disconnect(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                return


async def watch_until_stream(body: RequestBody, scope: trio.CancelScope) -> None:
    """While the request waits for a tunnel slot: read its first message ahead and, when that
    completes the body, cancel ``scope`` as soon as the user leaves.

    So a request the user reset at once (Rapid Reset, ARCHITECTURE.md, attack 1: HEADERS then
    RST_STREAM, which hypercorn only reports as ``http.disconnect``) gives up its place in the
    queue instead of taking a tunnel slot and reaching the backend.
    """
    await body.read_ahead()
    if body.complete:
        await body.wait_disconnect()
        scope.cancel()


async def watch_disconnect(body: RequestBody, scope: trio.CancelScope) -> None:
    await body.wait_disconnect()
    scope.cancel()  # the user went away: stop waiting, the stream is reset on the way out


async def pump_request(
    body: RequestBody,
    stream: Stream,
    scope: trio.CancelScope,
    sent: Callable[[], None] = lambda: None,
) -> None:
    """The body into the stream (the replay copy first), then watch for the user leaving.

    ``sent`` is called once the whole body has been handed to the stream.
    """
    try:
        if body.replay:
            chunks = list(body.replay)
            for i, chunk in enumerate(chunks):
                last = body.complete and i == len(chunks) - 1
                await stream.send_data(chunk, end_stream=last)
            if body.complete:
                sent()
                await body.wait_disconnect()
                scope.cancel()
                return
        while True:
            next_chunk = await body.next_chunk()
            if next_chunk is None:
                break
            await stream.send_data(next_chunk, end_stream=body.complete)
            if body.complete:
                break
        await stream.end()
        sent()
        await body.wait_disconnect()
    except ClientGone:
        pass
    except TunnelError:
        return  # the response side reports the stream's failure
    scope.cancel()

"""The request body on its way from the user into a tunnel stream.

It is read from the user's :class:`~router.frontend.exchange.Exchange` only as fast as the stream
takes it, under a size limit (413), an idle timeout and a minimum rate (408). While it is small a
copy is kept, so a stream the backend refused (RFC 9113 §8.7) can be replayed on another tunnel.
Request trailers are forwarded as trailers.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from ptth.driver import Stream
from ptth.errors import BodyTooLarge, RequestTimeout, TunnelError
from ptth.proto.headers import clean_trailers

from .frontend.exchange import Exchange
from .frontend.http1 import ClientGoneError
from .proxy_common import ClientGone

__all__ = ["REPLAY_LIMIT", "RequestBody", "pump_request", "watch_disconnect", "watch_until_stream"]

REPLAY_LIMIT = 64 * 1024  # body bytes kept so a refused stream can be replayed elsewhere
RATE_GRACE = 10.0  # seconds of body before the minimum rate applies


class RequestBody:
    """The request body as read from the exchange; keeps a replay copy while it is small."""

    def __init__(
        self, exchange: Exchange, limit: int, idle_timeout: float, min_rate: float = 0.0
    ) -> None:
        self._exchange = exchange
        self.limit = limit
        self.idle_timeout = idle_timeout
        self.min_rate = min_rate
        self.replay: list[bytes] | None = []
        self.replay_size = 0
        self.total = 0
        self.complete = not exchange.request.has_body
        self.disconnected = False
        self.messages = 0  # pieces taken from the exchange
        self._started: float | None = None

    @property
    def trailers(self) -> list[tuple[bytes, bytes]] | None:
        return self._exchange.trailers

    def _deadline(self, now: float) -> float:
        """Silence for the idle timeout, or a body slower than the minimum rate: 408."""
        deadline = now + self.idle_timeout
        if self.min_rate > 0:
            started = self._started if self._started is not None else now
            # The moment the average rate would drop under min_rate if nothing more arrived.
            deadline = min(
                deadline, max(started + RATE_GRACE, started + self.total / self.min_rate)
            )
        return deadline

    async def next_chunk(self, *, keep: bool = False) -> bytes | None:
        """The next body chunk, or None at the end; raises ClientGone on disconnect.

        ``keep`` keeps the chunk in the replay copy whatever its size (it has not been sent).
        """
        if self.complete:
            return None
        now = trio.current_time()
        if self._started is None:
            self._started = now
        # A body that stalls or drips (slowloris/RUDY, ARCHITECTURE.md, attack 12) must not pin
        # a stream.
        with trio.move_on_at(self._deadline(now)):
            try:
                chunk, more = await self._exchange.receive()
            except ClientGoneError:
                self.disconnected = True
                raise ClientGone() from None
            return self._take(chunk, more, keep=keep)
        if self.min_rate > 0 and trio.current_time() < now + self.idle_timeout:
            raise RequestTimeout(f"request body slower than {self.min_rate:g} bytes/s")
        raise RequestTimeout(f"request body stalled for {self.idle_timeout:g} s")

    async def read_ahead(self) -> None:
        """Take the first piece before any stream exists (the pump sends it first).

        A user who reset the request or left meanwhile is noticed here (ClientGone).
        """
        if self.messages == 0 and not self.complete:
            await self.next_chunk(keep=True)

    def _take(self, chunk: bytes, more: bool, *, keep: bool = False) -> bytes | None:
        self.messages += 1
        self.total += len(chunk)
        if self.limit and self.total > self.limit:
            raise BodyTooLarge(f"request body over {self.limit} bytes")
        if not more:
            self.complete = True
        if self.replay is not None:
            self.replay.append(chunk)
            self.replay_size += len(chunk)
            if self.replay_size > REPLAY_LIMIT and not keep:
                self.replay = None
        return chunk

    async def wait_disconnect(self) -> None:
        await self._exchange.wait_gone()
        self.disconnected = True


async def watch_until_stream(body: RequestBody, scope: trio.CancelScope) -> None:
    """While the request waits for a tunnel slot: read its first message ahead and, when that
    completes the body, cancel ``scope`` as soon as the user leaves.

    So a request the user reset at once (Rapid Reset, ARCHITECTURE.md, attack 1: HEADERS then
    RST_STREAM) gives up its place in the queue instead of taking a tunnel slot and reaching the
    backend.
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
                last = body.complete and i == len(chunks) - 1 and not body.trailers
                await stream.send_data(chunk, end_stream=last)
            if body.complete:
                await _finish(body, stream)
                sent()
                await body.wait_disconnect()
                scope.cancel()
                return
        while True:
            next_chunk = await body.next_chunk()
            if next_chunk is None:
                break
            await stream.send_data(next_chunk, end_stream=body.complete and not body.trailers)
            if body.complete:
                break
        await _finish(body, stream)
        sent()
        await body.wait_disconnect()
    except ClientGone:
        pass
    except TunnelError:
        return  # the response side reports the stream's failure
    scope.cancel()


async def _finish(body: RequestBody, stream: Stream) -> None:
    """End the request: with its trailers (cleaned as response trailers are), else END_STREAM."""
    trailers = clean_trailers(body.trailers) if body.trailers else []
    if trailers:
        await stream.send_trailers(trailers)
    else:
        await stream.end()

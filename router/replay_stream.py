"""A byte stream that first gives back bytes already read from it (ARCHITECTURE.md, "Transports").

The front end reads a request head (and whatever the peer sent right behind it) before it knows
the request is a tunnel handshake; the tunnel listener must see those bytes again, first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import anyio.abc

__all__ = ["ReplayStream"]


class ReplayStream(anyio.abc.ByteStream):
    """``initial`` first, then ``inner``; sends, EOF, close and attributes are ``inner``'s."""

    def __init__(self, inner: anyio.abc.ByteStream, initial: bytes = b"") -> None:
        self.inner = inner
        self._initial = memoryview(bytes(initial))

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._initial:
            data = bytes(self._initial[:max_bytes])
            self._initial = self._initial[max_bytes:]
            return data
        return await self.inner.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        await self.inner.send(item)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        self._initial = memoryview(b"")
        await self.inner.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self.inner.extra_attributes

"""What the engine tells its driver; frozen, like h2's and h11's events.

The engine keeps every stream's state itself (:class:`~ptth.engine.stream.StreamState`), so a
stream event only says *which* stream changed: its reader and writer re-check the state. One
``StreamChanged`` per stream per batch, however many frames it got.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..errors import TunnelClosed
    from .stream import StreamState

__all__ = [
    "ConnectionClosed",
    "Event",
    "GoAwayReceived",
    "SettingsReceived",
    "StreamChanged",
    "StreamOpened",
    "StreamsChanged",
]


class Event:
    __slots__ = ()


@dataclass(frozen=True, slots=True)
class StreamOpened(Event):
    """Server role: the peer opened ``stream`` (its request headers are in ``stream.headers``)."""

    stream: StreamState


@dataclass(frozen=True, slots=True)
class StreamChanged(Event):
    """``stream`` got headers, data, its end, trailers or an error; or its send queue moved."""

    stream: StreamState


@dataclass(frozen=True, slots=True)
class StreamsChanged(Event):
    """A stream slot was freed or taken, or a GOAWAY changed which streams may open."""


@dataclass(frozen=True, slots=True)
class SettingsReceived(Event):
    """The peer's SETTINGS arrived (the first one makes the connection usable)."""


@dataclass(frozen=True, slots=True)
class GoAwayReceived(Event):
    """The peer is draining: streams above ``last_stream_id`` were refused (RFC 9113 §6.8)."""

    last_stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The connection is over; ``error`` says why. Send what ``data_to_send`` still has, close."""

    error: TunnelClosed

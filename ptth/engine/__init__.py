"""The sans-I/O HTTP/2 engine every ptth connection runs on (ARCHITECTURE.md, "The engine").

Bytes and the current time go in, events and bytes to send come out; nothing here imports an
event loop. :mod:`ptth.driver` runs it over an anyio byte stream, on asyncio or trio.
"""

from __future__ import annotations

from .budget import BudgetLimits, FrameBudget
from .connection import COALESCE_LIMIT, Engine
from .events import (
    ConnectionClosed,
    Event,
    GoAwayReceived,
    SettingsReceived,
    StreamChanged,
    StreamOpened,
    StreamsChanged,
)
from .frame_guard import CLIENT_PREFACE, FrameGuard
from .liveness import Liveness, Verdict
from .settings import Settings
from .stream import Headers, StreamState

__all__ = [
    "CLIENT_PREFACE",
    "COALESCE_LIMIT",
    "BudgetLimits",
    "ConnectionClosed",
    "Engine",
    "Event",
    "FrameBudget",
    "FrameGuard",
    "GoAwayReceived",
    "Headers",
    "Liveness",
    "Settings",
    "SettingsReceived",
    "StreamChanged",
    "StreamOpened",
    "StreamState",
    "StreamsChanged",
    "Verdict",
]

"""Budgets for HTTP/2 frames that cost the receiver work but carry no payload; no I/O.

h2 enforces none of these (RELIABILITY.md rows 4, 6, 7, 10): a peer could make us ACK a flood of
PINGs or SETTINGS, spin on empty DATA frames, or churn priorities. Limits follow Envoy's codec
defaults. ``exceeded`` names the first budget that ran out; the driver then closes the tunnel
with ENHANCE_YOUR_CALM.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import h2.events

__all__ = ["BudgetLimits", "FrameBudget"]


@dataclass(frozen=True)
class BudgetLimits:
    control_frames_per_window: int = 1000  # PING and SETTINGS per `window` seconds
    window: float = 10.0
    consecutive_empty_frames: int = 1000  # empty DATA without END_STREAM in a row
    window_updates_per_data_frame: int = 10
    window_update_allowance: int = 1000  # free WINDOW_UPDATEs before the ratio applies
    priority_frames_per_window: int = 10_000


@dataclass
class FrameBudget:
    limits: BudgetLimits = field(default_factory=BudgetLimits)
    exceeded: str | None = None
    _window_start: float = 0.0
    _control: int = 0
    _priority: int = 0
    _empty_in_a_row: int = 0
    _data_frames: int = 0
    _window_updates: int = 0

    def count(self, event: h2.events.Event, now: float) -> None:
        """Charge one received event to its budget; the events not named here cost nothing."""
        if isinstance(event, h2.events.DataReceived):
            length = event.flow_controlled_length or 0
            self.data_frame(now, empty=length == 0 and not event.stream_ended)
        elif isinstance(
            event,
            h2.events.RequestReceived | h2.events.ResponseReceived | h2.events.TrailersReceived,
        ):
            self.headers_frame(now)
        elif isinstance(event, h2.events.WindowUpdated):
            self.window_update(now)
        elif isinstance(event, h2.events.RemoteSettingsChanged | h2.events.PingReceived):
            self.control_frame(now)
        elif isinstance(event, h2.events.PriorityUpdated):
            self.priority_frame(now)

    def _roll(self, now: float) -> None:
        if now - self._window_start >= self.limits.window:
            self._window_start = now
            self._control = 0
            self._priority = 0

    def control_frame(self, now: float) -> None:
        self._roll(now)
        self._control += 1
        if self._control > self.limits.control_frames_per_window:
            self.exceeded = "PING/SETTINGS flood"

    def priority_frame(self, now: float) -> None:
        self._roll(now)
        self._priority += 1
        if self._priority > self.limits.priority_frames_per_window:
            self.exceeded = "PRIORITY flood"

    def data_sent(self) -> None:
        """Our DATA frames earn the peer WINDOW_UPDATEs."""
        self._data_frames += 1

    def data_frame(self, now: float, *, empty: bool) -> None:
        if empty:
            self._empty_in_a_row += 1
            if self._empty_in_a_row > self.limits.consecutive_empty_frames:
                self.exceeded = "empty DATA frame flood"
        else:
            self._empty_in_a_row = 0

    def headers_frame(self, now: float) -> None:
        self._empty_in_a_row = 0

    def window_update(self, now: float) -> None:
        self._window_updates += 1
        allowed = (
            self.limits.window_update_allowance
            + self.limits.window_updates_per_data_frame * self._data_frames
        )
        if self._window_updates > allowed:
            self.exceeded = "WINDOW_UPDATE flood"

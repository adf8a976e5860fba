"""Budgets for every HTTP/2 frame a peer can repeat at no cost to itself; pure, time passed in.

h2 enforces none of these: a peer could make us ACK a flood of PINGs or SETTINGS, spin on empty
DATA frames, churn priorities, send endless 1xx responses on one stream, reset streams as fast as
it opens them, or fill the wire with frames of unknown types (RFC 9113 §5.5 says to ignore them:
ignoring still costs parsing). Limits follow Envoy's codec defaults where it has one
(ARCHITECTURE.md, "Budgets"). ``exceeded`` names the first budget that ran out; the engine then
closes the connection with ENHANCE_YOUR_CALM.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import h2.events

__all__ = ["BudgetLimits", "FrameBudget"]


@dataclass(frozen=True)
class BudgetLimits:
    window: float = 10.0  # seconds over which the windowed budgets below are counted
    control_frames_per_window: int = 1000  # PING and SETTINGS
    acks_per_window: int = 1000  # PING and SETTINGS ACKs
    priority_frames_per_window: int = 10_000
    unknown_frames_per_window: int = 1000  # unknown types, ALTSVC
    resets_per_window: int = 10_000  # RST_STREAM from the peer
    consecutive_empty_frames: int = 1000  # empty DATA without END_STREAM in a row
    window_updates_per_data_frame: int = 10
    window_update_allowance: int = 1000  # free WINDOW_UPDATEs before the ratio applies
    informational_per_stream: int = 20  # 1xx responses on one stream (100, 103, ...)
    goaways: int = 16  # GOAWAY frames on one connection
    # Frames that produce no event (on streams we reset, CONTINUATION before its block ends):
    # free up to the allowance, plus what each stream we reset may still have in flight.
    silent_frames_allowance: int = 1000
    silent_frames_per_reset: int = 64


@dataclass
class FrameBudget:
    limits: BudgetLimits = field(default_factory=BudgetLimits)
    exceeded: str | None = None
    _window_start: float = 0.0
    _control: int = 0
    _priority: int = 0
    _unknown: int = 0
    _resets: int = 0
    _acks: int = 0
    _goaways: int = 0
    _empty_in_a_row: int = 0
    _data_frames: int = 0
    _window_updates: int = 0
    _silent: int = 0
    _resets_sent: int = 0

    def count(self, event: h2.events.Event, now: float) -> None:
        """Charge one received event to its budget; the events not named here cost nothing."""
        kind = type(event)
        if kind is h2.events.DataReceived:
            length = event.flow_controlled_length or 0  # type: ignore[attr-defined]
            if length == 0 and not event.stream_ended:  # type: ignore[attr-defined]
                self._empty_in_a_row += 1
                if self._empty_in_a_row > self.limits.consecutive_empty_frames:
                    self.exceeded = "empty DATA frame flood"
            else:
                self._empty_in_a_row = 0
        elif kind in _HEADERS_EVENTS:
            self._empty_in_a_row = 0
        elif kind is h2.events.WindowUpdated:
            self._window_updates += 1
            allowed = (
                self.limits.window_update_allowance
                + self.limits.window_updates_per_data_frame * self._data_frames
            )
            if self._window_updates > allowed:
                self.exceeded = "WINDOW_UPDATE flood"
        elif kind in _CONTROL_EVENTS:
            self._roll(now)
            self._control += 1
            if self._control > self.limits.control_frames_per_window:
                self.exceeded = "PING/SETTINGS flood"
        elif kind in _ACK_EVENTS:
            self._roll(now)
            self._acks += 1
            if self._acks > self.limits.acks_per_window:
                self.exceeded = "flood of unsolicited PING/SETTINGS ACKs"
        elif kind is h2.events.PriorityUpdated:
            self._roll(now)
            self._priority += 1
            if self._priority > self.limits.priority_frames_per_window:
                self.exceeded = "PRIORITY flood"
        elif kind is h2.events.StreamReset:
            self._roll(now)
            self._resets += 1
            if self._resets > self.limits.resets_per_window:
                self.exceeded = "RST_STREAM flood"
        elif kind in _UNKNOWN_EVENTS:
            self._roll(now)
            self._unknown += 1
            if self._unknown > self.limits.unknown_frames_per_window:
                self.exceeded = "flood of unknown or ignored frames"
        elif kind is h2.events.ConnectionTerminated:
            self._goaways += 1
            if self._goaways > self.limits.goaways:
                self.exceeded = "GOAWAY flood"

    def informational(self, count_on_stream: int) -> None:
        """A 1xx response arrived; ``count_on_stream`` is how many that stream has had."""
        if count_on_stream > self.limits.informational_per_stream:
            self.exceeded = "1xx response flood"

    def _roll(self, now: float) -> None:
        if now - self._window_start >= self.limits.window:
            self._window_start = now
            self._control = 0
            self._priority = 0
            self._unknown = 0
            self._resets = 0
            self._acks = 0
            self._silent = 0
            self._resets_sent = 0

    def silent(self, frames_minus_events: int, now: float) -> None:
        """A slice held ``frames_minus_events`` more frames than h2 made events of.

        A running balance over the budget window: a frame split across two reads counts in the
        first and its event comes in the second, and frames that make several events pay back
        earlier ones; the window keeps a long-lived connection's legitimate leftovers (a header
        block's CONTINUATION frames) from adding up for ever.
        """
        self._roll(now)
        self._silent = max(0, self._silent + frames_minus_events)
        allowed = (
            self.limits.silent_frames_allowance
            + self.limits.silent_frames_per_reset * self._resets_sent
        )
        if self._silent > allowed:
            self.exceeded = "flood of frames on closed streams"

    def reset_sent(self) -> None:
        """We reset a stream: frames the peer already sent on it are still to come."""
        self._resets_sent += 1

    def data_sent(self) -> None:
        """Our DATA frames earn the peer WINDOW_UPDATEs."""
        self._data_frames += 1


_HEADERS_EVENTS = frozenset(
    {h2.events.RequestReceived, h2.events.ResponseReceived, h2.events.TrailersReceived}
)
_CONTROL_EVENTS = frozenset({h2.events.RemoteSettingsChanged, h2.events.PingReceived})
# We send one PING per keepalive interval and one SETTINGS: a flood of ACKs nobody asked for
# costs as much as one of PINGs.
_ACK_EVENTS = frozenset({h2.events.PingAckReceived, h2.events.SettingsAcknowledged})
_UNKNOWN_EVENTS = frozenset({h2.events.UnknownFrameReceived, h2.events.AlternativeServiceAvailable})

"""The h2 connection object both tunnel ends use, with settings chosen for bulk transfer.

Two adaptations of python-hyper h2, each for a documented reason:

* h2 treats any GOAWAY, sent or received, as the end of the connection: it closes its state
  machine, drops queued output and refuses every later frame. RFC 9113 §6.8 says the opposite:
  streams at or below the last stream id keep running. Graceful drain is the point of GOAWAY here,
  so a NO_ERROR GOAWAY is sent and received without touching h2's connection state.
* h2's ``config.logger`` needs ``.debug`` and ``.trace``; a plain ``logging.Logger`` has no trace.
* h2 formats ``repr(frame)`` for a trace line on every frame it receives, logged or not, and
  hyperframe's DATA frame repr re-serialises and hex-encodes the whole payload (64 KiB) to show
  its first ten bytes: about an eighth of the router's CPU in a bulk download. A DATA frame's
  repr here names its size instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, cast

import h2.config
import h2.connection
import h2.events
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import DataFrame, GoAwayFrame

__all__ = ["GRACEFUL_LAST_STREAM", "H2Settings", "TunnelH2Connection", "make_connection"]


def _data_frame_body_repr(self: DataFrame) -> str:
    return f"<{len(self.data)} bytes>"


DataFrame._body_repr = _data_frame_body_repr  # type: ignore[method-assign,assignment]

# RFC 9113 §6.8: a first GOAWAY with 2^31-1 announces the drain without refusing anything.
GRACEFUL_LAST_STREAM = 2**31 - 1


class _H2Logger:
    """What h2 expects of ``config.logger``: ``debug`` and ``trace`` that accept %-args."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def debug(self, fmtstr: str, *args: Any) -> None:
        pass  # h2 logs every frame; far too chatty even at DEBUG

    def trace(self, fmtstr: str, *args: Any) -> None:
        pass


@dataclass(frozen=True)
class H2Settings:
    """HTTP/2 parameters for the tunnel. Windows are large on purpose: see benchmarks/README.md.

    Memory per stream is bounded by ``stream_window`` (data is acknowledged only when consumed),
    per tunnel by ``connection_window``.
    """

    max_concurrent_streams: int = 100
    stream_window: int = 4 * 1024 * 1024
    connection_window: int = 16 * 1024 * 1024
    max_frame_size: int = 256 * 1024
    max_header_list_size: int = 64 * 1024


class TunnelH2Connection(h2.connection.H2Connection):
    """An h2 connection whose graceful GOAWAY leaves in-flight streams usable (RFC 9113 §6.8)."""

    def send_graceful_goaway(self, last_stream_id: int) -> None:
        frame = GoAwayFrame(0)
        frame.last_stream_id = last_stream_id
        frame.error_code = ErrorCodes.NO_ERROR
        self._prepare_for_sending([frame])

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Any], list[h2.events.Event]]:
        if frame.error_code != ErrorCodes.NO_ERROR:
            result: tuple[list[Any], list[h2.events.Event]] = super()._receive_goaway_frame(frame)
            return result
        event = h2.events.ConnectionTerminated()
        event.error_code = ErrorCodes.NO_ERROR
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


def make_connection(
    *, client_side: bool, settings: H2Settings, logger: logging.Logger
) -> TunnelH2Connection:
    """A connection with our settings applied and the preface queued (call data_to_send next)."""
    config = h2.config.H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_inbound_headers=True,
        validate_outbound_headers=True,
        normalize_outbound_headers=True,
        logger=cast(Any, _H2Logger(logger)),  # h2 only calls .debug and .trace
    )
    conn = TunnelH2Connection(config=config)
    local: dict[h2.settings.SettingCodes, int] = {
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: settings.stream_window,
        h2.settings.SettingCodes.MAX_FRAME_SIZE: settings.max_frame_size,
        h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: settings.max_header_list_size,
    }
    if client_side:
        # The router never wants pushed streams; h2 accepts them unless told otherwise.
        local[h2.settings.SettingCodes.ENABLE_PUSH] = 0
    else:
        local[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = settings.max_concurrent_streams
        local[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL] = 1  # RFC 8441 WebSockets
    conn.local_settings = h2.settings.Settings(client=client_side, initial_values=local)
    # h2 does not derive this from local_settings; without it, frames above 16 KiB are refused.
    conn.max_inbound_frame_size = settings.max_frame_size
    conn.decoder.max_header_list_size = settings.max_header_list_size
    conn.initiate_connection()
    extra = settings.connection_window - 65535
    if extra > 0:
        conn.increment_flow_control_window(extra)
    return conn

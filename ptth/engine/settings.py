"""HTTP/2 parameters of one engine connection, every default in one place (ARCHITECTURE.md).

Receive windows start small and grow for streams whose consumer keeps up, so bulk transfers
reach line rate while a stalled stream holds only ``stream_window`` bytes: see
:meth:`ptth.engine.Engine.read` and benchmarks/README.md for the measurements behind them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Settings"]


@dataclass(frozen=True)
class Settings:
    # Streams the peer may open on us (server role). Memory is bounded by the windows below,
    # not by the stream count, so the limit is large (long-lived WebSockets hold streams).
    max_concurrent_streams: int = 1000
    stream_window: int = 256 * 1024  # initial receive window of every stream
    max_stream_window: int = 16 * 1024 * 1024  # a stream that keeps up grows to this
    window_pool: int = 64 * 1024 * 1024  # growth beyond the initial windows, per connection
    connection_window: int = 16 * 1024 * 1024
    max_buffered: int = 96 * 1024 * 1024  # unread bytes per connection before credit is held
    max_frame_size: int = 256 * 1024
    max_header_list_size: int = 64 * 1024
    enable_connect_protocol: bool = True  # server role: RFC 8441 WebSockets
    # Every header block ptth sends is built by its own rules (ptth/proto/fields.py, headers.py:
    # names validated and lower-cased, CR/LF/NUL refused, hop-by-hop fields stripped), which are
    # stricter than h2's outbound checks; those cost ~5 % of a request's CPU for nothing. Inbound
    # validation stays on: the peer is not trusted.
    validate_outbound_headers: bool = False

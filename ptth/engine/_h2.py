"""The one place ptth adapts python-hyper h2 and hyperframe; checked at import, versions bounded.

Each adaptation has a documented reason (ARCHITECTURE.md, "The engine"):

* **Graceful GOAWAY.** h2 treats any GOAWAY, sent or received, as the end of the connection: it
  closes its state machine, drops queued output and refuses every later frame. RFC 9113 §6.8 says
  the opposite: streams at or below the last stream id keep running. A NO_ERROR GOAWAY is sent
  and received here without touching h2's connection state.
* **No eager frame formatting.** h2 formats ``repr(frame)`` for a trace line on every frame it
  receives, logged or not, and hyperframe's reprs re-serialise and hex-encode payloads: about an
  eighth of the CPU in a bulk transfer, and a measurable share per request. Frames here repr as
  their type and stream id.
* **Open-stream counting.** h2 counts open streams by walking every stream it knows on each new
  stream (O(streams)). The engine keeps its own exact count and enforces the limits itself; h2's
  walk (which also forgets closed streams) runs only once per ``_SWEEP_EVERY`` new streams.
* **Is output queued?** h2 only offers ``data_to_send()``, which takes it; the driver asks
  whether there is anything at all before it wakes its writer.
* **hpack's debug lines.** hpack calls ``log.debug`` two dozen times per request (each a
  call into ``logging`` that checks the level), whatever the level: its module loggers are
  replaced by one whose ``debug`` does nothing.
* **A logger with ``trace``.** h2's ``config.logger`` needs ``.debug`` and ``.trace``; a plain
  ``logging.Logger`` has no ``trace``. h2 logs every frame: far too chatty even at DEBUG.

Versions are bounded in pyproject.toml (``h2>=4.1,<5``, ``hyperframe>=6,<7``, ``hpack>=4,<5``) and
checked here at import, as is every name this module touches: another major version, or a release
that renames one of them, fails at import with a clear message instead of misbehaving.
"""

from __future__ import annotations

from typing import Any, cast

import h2
import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import hpack.hpack
import hpack.table
import hyperframe
import hyperframe.frame
from h2.errors import ErrorCodes
from hyperframe.frame import Frame, GoAwayFrame

from ..errors import ConfigError

__all__ = ["GRACEFUL_LAST_STREAM", "H2Connection", "make_h2"]

# RFC 9113 §6.8: a first GOAWAY with 2^31-1 announces the drain without refusing anything.
GRACEFUL_LAST_STREAM = 2**31 - 1
_SWEEP_EVERY = 64


def _check() -> None:
    """Fail at import, with a readable message, if h2 or hyperframe changed under us."""
    sample = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    needed: dict[str, tuple[object, tuple[str, ...]]] = {
        "H2Connection": (
            sample,
            (
                "_prepare_for_sending",
                "_receive_goaway_frame",
                "_open_streams",
                "open_inbound_streams",
                "open_outbound_streams",
                "highest_inbound_stream_id",
                "max_inbound_frame_size",
                "max_outbound_frame_size",
                "streams",
                "_data_to_send",
            ),
        ),
        "Frame": (Frame, ("__repr__",)),
    }
    for owner_name, (owner, names) in needed.items():
        missing = [name for name in names if not hasattr(owner, name)]
        if missing:
            raise ConfigError(
                f"unsupported h2 {h2.__version__} / hyperframe {hyperframe.__version__}: "
                f"{owner_name} lacks {', '.join(missing)} (ptth needs h2>=4.1,<5)"
            )
    # Each patched library by the major version its adaptation was written and tested against.
    for library, version, major in (
        ("h2", h2.__version__, 4),
        ("hyperframe", hyperframe.__version__, 6),
        ("hpack", hpack.__version__, 4),
    ):
        if int(version.split(".")[0]) != major:
            raise ConfigError(f"ptth needs {library} {major}.x, found {version}")


_check()


class _Silent:
    """What h2 expects of ``config.logger`` (``debug`` and ``trace``), and all hpack uses."""

    def debug(self, fmtstr: str, *args: Any) -> None:
        pass

    def trace(self, fmtstr: str, *args: Any) -> None:
        pass


for _module in (hpack.hpack, hpack.table):
    if not hasattr(_module, "log"):
        raise ConfigError(f"unsupported hpack: {_module.__name__} has no module logger")
    _module.log = _Silent()  # type: ignore[attr-defined]


def _frame_repr(self: Frame) -> str:
    return f"{type(self).__name__}(stream_id={self.stream_id})"


Frame.__repr__ = _frame_repr  # type: ignore[method-assign]


class H2Connection(h2.connection.H2Connection):
    """h2's connection with the adaptations named in the module docstring."""

    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config=config)
        self._opened_since_sweep = 0
        # The engine's own counts (see `set_open_counts`); h2 checks them against the limits.
        self._engine_inbound = 0
        self._engine_outbound = 0

    def set_open_counts(self, inbound: int, outbound: int) -> None:
        self._engine_inbound = inbound
        self._engine_outbound = outbound

    def _sweep(self) -> None:
        self._opened_since_sweep += 1
        if self._opened_since_sweep >= _SWEEP_EVERY:
            self._opened_since_sweep = 0
            self._open_streams(0)  # forgets closed streams (the count itself is unused)

    @property
    def open_outbound_streams(self) -> int:
        self._sweep()
        return self._engine_outbound

    @property
    def open_inbound_streams(self) -> int:
        self._sweep()
        return self._engine_inbound

    def has_output(self) -> bool:
        """Frames are queued (h2 has no public way to ask without taking them)."""
        return bool(self._data_to_send)

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


def make_h2(
    *,
    client_side: bool,
    local: dict[h2.settings.SettingCodes, int],
    max_frame_size: int,
    max_header_list_size: int,
    connection_window: int,
    validate_outbound: bool = True,
) -> H2Connection:
    """A connection with ``local`` settings applied and the preface queued."""
    config = h2.config.H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_inbound_headers=True,
        validate_outbound_headers=validate_outbound,
        normalize_outbound_headers=validate_outbound,
        logger=cast(Any, _Silent()),  # h2 only calls .debug and .trace
    )
    conn = H2Connection(config=config)
    conn.local_settings = h2.settings.Settings(client=client_side, initial_values=local)
    # h2 does not derive this from local_settings; without it, frames above 16 KiB are refused.
    conn.max_inbound_frame_size = max_frame_size
    conn.decoder.max_header_list_size = max_header_list_size
    conn.initiate_connection()
    extra = connection_window - 65535
    if extra > 0:
        conn.increment_flow_control_window(extra)
    return conn

"""Check HTTP/2 frame headers as bytes arrive, before h2 buffers them; no I/O.

h2 validates a frame's declared length only once the whole frame is buffered, so a peer that
announces a 16 MiB frame (or sends an HTTP/1.1 response instead of a preface) makes it buffer up
to 16 MiB first. This guard reads each 9-byte header as it streams past and names the problem
at once: a frame over our SETTINGS_MAX_FRAME_SIZE (RFC 9113 §4.2), or a first frame that is not
SETTINGS (§3.4).
"""

from __future__ import annotations

__all__ = ["CLIENT_PREFACE", "FrameGuard"]

CLIENT_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_SETTINGS = 0x4
_HEADER_SIZE = 9


class FrameGuard:
    def __init__(self, *, max_frame_size: int, server_side: bool) -> None:
        self.max_frame_size = max_frame_size
        # A server first sees the client's 24-byte preface (h2 checks its bytes itself).
        self._skip = len(CLIENT_PREFACE) if server_side else 0
        self._header = b""
        self._first = True

    def check(self, data: bytes) -> str | None:
        """None if ``data`` continues a well-formed frame sequence, else what is wrong."""
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                pos += step
                self._skip -= step
                continue
            take = min(_HEADER_SIZE - len(self._header), end - pos)
            self._header += data[pos : pos + take]
            pos += take
            if len(self._header) < _HEADER_SIZE:
                return None
            length = int.from_bytes(self._header[:3], "big")
            frame_type = self._header[3]
            self._header = b""
            if self._first and frame_type != _SETTINGS:
                return "first frame is not SETTINGS (not an HTTP/2 peer?)"
            self._first = False
            if length > self.max_frame_size:
                return f"frame of {length} bytes exceeds SETTINGS_MAX_FRAME_SIZE"
            self._skip = length
        return None

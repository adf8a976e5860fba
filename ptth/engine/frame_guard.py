"""Check HTTP/2 frame headers as bytes arrive, before h2 buffers them; no I/O.

h2 validates a frame's declared length only once the whole frame is buffered, so a peer that
announces a 16 MiB frame (or sends an HTTP/1.1 response instead of a preface) makes it buffer up
to 16 MiB first. This guard reads each 9-byte header as it streams past and names the problem
at once: a frame over our SETTINGS_MAX_FRAME_SIZE (RFC 9113 §4.2), or a first frame that is not
SETTINGS (§3.4).

The engine walks what arrived one slice at a time (:meth:`FrameGuard.scan`), at most
``FRAMES_PER_SLICE`` frames, and feeds h2 each slice before the guard looks further: h2 parses
all it is given before it returns an event, and a 256 KiB read of ten-byte frames (a 1xx flood)
is ~26,000 frames, over a second of CPU, before any budget could be checked.
"""

from __future__ import annotations

__all__ = ["CLIENT_PREFACE", "FRAMES_PER_SLICE", "FrameGuard"]

CLIENT_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_SETTINGS = 0x4
_PROTOCOL_ERROR = 0x1
_FRAME_SIZE_ERROR = 0x6
_HEADER_SIZE = 9
FRAMES_PER_SLICE = 64


class FrameGuard:
    def __init__(
        self, *, max_frame_size: int, server_side: bool, frames_per_slice: int = FRAMES_PER_SLICE
    ) -> None:
        self.max_frame_size = max_frame_size
        self.frames_per_slice = frames_per_slice
        # A server first sees the client's 24-byte preface (h2 checks its bytes itself).
        self._skip = len(CLIENT_PREFACE) if server_side else 0
        self._header = b""
        self._first = True
        self.slice_frames = 0  # frame headers completed by the last scan()
        self.error_code = _PROTOCOL_ERROR  # the GOAWAY code for the problem last reported

    def check(self, data: bytes) -> str | None:
        """None if ``data`` continues a well-formed frame sequence, else what is wrong."""
        pos, end = 0, len(data)
        while pos < end:
            pos, problem = self.scan(data, pos)
            if problem is not None:
                return problem
        return None

    def scan(self, data: bytes, start: int = 0) -> tuple[int, str | None]:
        """Check ``data[start:]`` up to ``frames_per_slice`` frame headers; returns where the
        checked slice ends (the next frame's first byte, or ``len(data)``) and what is wrong
        with it, if anything. Every byte up to that end is checked; none after it."""
        pos, end = start, len(data)
        frames = self.slice_frames = 0
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                pos += step
                self._skip -= step
                continue
            if not self._header:
                if frames == self.frames_per_slice:
                    return pos, None
                frames += 1
            take = min(_HEADER_SIZE - len(self._header), end - pos)
            self._header += data[pos : pos + take]
            pos += take
            if len(self._header) < _HEADER_SIZE:
                return pos, None
            length = int.from_bytes(self._header[:3], "big")
            frame_type = self._header[3]
            self._header = b""
            self.slice_frames += 1
            if self._first and frame_type != _SETTINGS:
                return pos, "first frame is not SETTINGS (not an HTTP/2 peer?)"
            self._first = False
            if length > self.max_frame_size:
                self.error_code = _FRAME_SIZE_ERROR  # RFC 9113 §4.2
                return pos, f"frame of {length} bytes exceeds SETTINGS_MAX_FRAME_SIZE"
            self._skip = length
        return end, None

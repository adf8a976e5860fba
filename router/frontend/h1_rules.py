"""HTTP/1.1 rules h11 leaves to its user, applied before and after it parses (pure: no I/O).

h11 is lenient where a proxy must not be (ARCHITECTURE.md, "The front end", attack 21): it
splits lines on a bare LF, so ``X-A: a\\nX-Injected: 1`` would become two fields, and it unfolds
obs-fold. :func:`scan_head` reads the raw head first and refuses both, as well as bare CR, NUL
and heads over the size or field-count caps. :func:`split_target` reduces an absolute-form target
to origin form (RFC 9112 §3.2.2).
"""

from __future__ import annotations

import base64
import hashlib
from http import HTTPStatus

from ptth.proto.fields import Headers

__all__ = [
    "HeadError",
    "reason",
    "scan_head",
    "split_target",
    "websocket_accept",
]

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_REASONS = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}


class HeadError(Exception):
    """A request head refused before or after h11 parsed it; ``status`` is the answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def reason(status: int) -> bytes:
    """The reason phrase for ``status`` (RFC 9112 §4; some clients count a blank one a failure)."""
    return _REASONS.get(status, b"")


def scan_head(buffer: bytes | bytearray, *, max_size: int, max_fields: int) -> int | None:
    """The length of the complete request head at the start of ``buffer``, or None if more bytes
    are needed; raises :class:`HeadError` for a head the front end refuses.

    Empty lines before the request line are skipped, as RFC 9112 §2.2 allows.
    """
    start = 0
    while buffer.startswith(b"\r\n", start):
        start += 2
    end = buffer.find(b"\r\n\r\n", start)
    if end < 0:
        if len(buffer) - start > max_size:
            raise HeadError(431, f"request head over {max_size} bytes")
        stray = buffer.find(b"\n", start)
        while stray >= 0:
            if stray == 0 or buffer[stray - 1] != 13:  # 13: CR
                raise HeadError(400, "bare LF in the request head")
            stray = buffer.find(b"\n", stray + 1)
        return None
    if end - start > max_size:
        raise HeadError(431, f"request head over {max_size} bytes")
    head = bytes(buffer[start:end])
    lines = head.split(b"\r\n")
    bare = head.replace(b"\r\n", b"")
    if b"\n" in bare or b"\r" in bare:
        raise HeadError(400, "bare LF or CR in the request head")
    if b"\x00" in head:
        raise HeadError(400, "NUL in the request head")
    if len(lines) - 1 > max_fields:
        raise HeadError(431, f"more than {max_fields} header fields")
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise HeadError(400, "obsolete line folding in the request head (RFC 9112 §5.2)")
    return end + 4


def split_target(target: bytes, method: bytes) -> tuple[bytes | None, bytes]:
    """``(authority, origin-form target)``: the authority of an absolute-form target (which
    then wins over Host, RFC 9112 §3.2.2), or None for origin and asterisk form."""
    if target.startswith(b"/") or (target == b"*" and method == b"OPTIONS"):
        return None, target
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        raise HeadError(400, "request target is neither origin nor absolute form")
    cut = len(rest)
    for mark in (b"/", b"?"):
        found = rest.find(mark)
        if 0 <= found < cut:
            cut = found
    authority, path = rest[:cut], rest[cut:]
    if not authority or b"@" in authority:
        raise HeadError(400, "request target with userinfo or without a host")
    if not path.startswith(b"/"):
        path = b"/" + path
    return authority, path


def websocket_accept(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for ``key`` (RFC 6455 §4.2.2)."""
    digest = hashlib.sha1(key + _WS_GUID, usedforsecurity=False).digest()
    return base64.b64encode(digest)


def websocket_key(headers: Headers) -> bytes:
    """The handshake's Sec-WebSocket-Key, checked to be 16 bytes in base64 (RFC 6455 §4.1)."""
    keys = [v for n, v in headers if n == b"sec-websocket-key"]
    if len(keys) != 1:
        raise HeadError(400, "WebSocket handshake without one Sec-WebSocket-Key")
    try:
        if len(base64.b64decode(keys[0], validate=True)) != 16:
            raise ValueError
    except ValueError:
        raise HeadError(400, "invalid Sec-WebSocket-Key") from None
    versions = [v for n, v in headers if n == b"sec-websocket-version"]
    if versions != [b"13"]:
        raise HeadError(426, "unsupported Sec-WebSocket-Version (13 is spoken)")
    return keys[0]


_HEX = frozenset(b"0123456789abcdefABCDEF")
MAX_CHUNK_DIGITS = 16  # 2^64 - 1 at most: a longer size is an overflow attack, not a body


class ChunkScanner:
    """Follow a chunked body's framing over the raw bytes, ahead of h11, and refuse chunk
    sizes h11 would take: more than 16 hex digits, or whitespace around the size (RFC 9112
    §7.1 has none; h11 tolerates trailing whitespace). Stops at the end of the trailer section;
    bytes after it belong to the next request."""

    def __init__(self) -> None:
        self._line = bytearray()
        self._skip = 0  # chunk data (and its CRLF) still to pass over
        self._trailers = False
        self.done = False

    def feed(self, data: bytes | bytearray) -> None:
        view = memoryview(data)
        i = 0
        while i < len(view) and not self.done:
            if self._skip:
                step = min(self._skip, len(view) - i)
                self._skip -= step
                i += step
                continue
            end = bytes(view[i:]).find(b"\n")
            if end < 0:
                self._line += view[i:]
                if len(self._line) > 4096:
                    raise HeadError(400, "chunk header line too long")
                return
            self._line += view[i : i + end + 1]
            i += end + 1
            self._line_done(bytes(self._line))
            self._line.clear()

    def _line_done(self, line: bytes) -> None:
        if not line.endswith(b"\r\n"):
            raise HeadError(400, "bare LF in a chunked body")
        line = line[:-2]
        if self._trailers:
            if not line:
                self.done = True
            return
        size, _, _ext = line.partition(b";")
        if not size or not _HEX.issuperset(size) or len(size) > MAX_CHUNK_DIGITS:
            raise HeadError(400, f"invalid chunk size {size[:32]!r}")
        length = int(size, 16)
        if length == 0:
            self._trailers = True
        else:
            self._skip = length + 2

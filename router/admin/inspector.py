"""The request inspector: the last N finished requests, for the status page.

The proxy hands over each finished request once (:class:`~router.proxy_common.Finished`); this
keeps it in a ring and pushes it to the page's live subscribers, all without I/O. Turning a
record into what the page sees (:func:`record`) happens only when someone looks, and is where
secrets are masked: credentials in Authorization, Cookie, Set-Cookie and the proxy fields, and
query parameters whose name says they carry one (ARCHITECTURE.md, "Operations: the admin
listener").
"""

from __future__ import annotations

import itertools
import re
import time
from collections import deque
from dataclasses import dataclass

import trio

from ..proxy_common import Finished

__all__ = ["MASK", "Inspector", "Inspected", "mask_headers", "mask_target", "record"]

MASK = "(masked)"
# Header fields whose values are credentials, whatever their scheme.
SECRET_FIELDS = frozenset(
    {
        b"authorization",
        b"proxy-authorization",
        b"cookie",
        b"set-cookie",
        b"x-api-key",
        b"x-auth-token",
    }
)
# Query parameters that usually carry a credential (?token=..., ?api_key=..., ?password=...).
_SECRET_PARAM = re.compile(
    r"(?i)(^|[&;])([^=&;]*(?:token|secret|passw|auth|key|sig|session)[^=&;]*)=([^&;]*)"
)
BODY_LIMIT = 4096  # bytes of each body kept with --inspect-bodies
SUBSCRIBER_BUFFER = 256  # requests a slow page may fall behind before it misses some


@dataclass(slots=True)
class Inspected:
    """A finished request with its place in the inspector and the wall-clock time it ended."""

    id: int
    at: float  # time.time() when it ended
    done: Finished


def mask_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """Header fields as text, credentials replaced by :data:`MASK`."""
    return [
        (
            name.decode("latin-1"),
            MASK if name.lower() in SECRET_FIELDS else value.decode("latin-1"),
        )
        for name, value in headers
    ]


def mask_target(target: str) -> str:
    """The request target with credential-looking query values replaced by :data:`MASK`."""
    path, sep, query = target.partition("?")
    if not sep:
        return target
    return path + "?" + _SECRET_PARAM.sub(lambda m: f"{m[1]}{m[2]}={MASK}", query)


def _body(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", "replace")


def record(item: Inspected) -> dict[str, object]:
    """What the page shows of one request (JSON-ready, secrets masked)."""
    done = item.done
    request = done.request
    return {
        "id": item.id,
        "at": item.at,
        "kind": done.kind,
        "client": request.client[0],
        "method": request.method.decode("latin-1"),
        "host": request.host,
        "path": mask_target(request.target.decode("latin-1")),
        "http_version": request.http_version,
        "status": done.status,
        "duration_ms": round((done.ended - done.started) * 1000, 3),
        "headers_ms": (
            round((done.headers_at - done.started) * 1000, 3) if done.headers_at else None
        ),
        "bytes_in": done.bytes_in,
        "bytes_out": done.bytes_out,
        "service": done.service,
        "tunnel": done.tunnel_id,
        "instance": done.instance,
        "request_headers": mask_headers(request.headers),
        "response_headers": mask_headers(done.response_headers),
        "request_body": _body(done.request_body),
        "response_body": _body(done.response_body),
    }


class Inspector:
    """A ring of the last ``size`` requests, and the memory channels of live subscribers."""

    def __init__(self, size: int, *, bodies: bool = False) -> None:
        self.body_limit = BODY_LIMIT if bodies else 0
        self._ring: deque[Inspected] = deque(maxlen=max(1, size))
        self._ids = itertools.count(1)
        self._subscribers: set[trio.MemorySendChannel[Inspected | None]] = set()

    def add(self, done: Finished) -> None:
        item = Inspected(next(self._ids), time.time(), done)
        self._ring.append(item)
        self._push(item)

    def changed(self) -> None:
        """Tell the live pages the status changed (a tunnel came or went): None on the channel."""
        self._push(None)

    def _push(self, item: Inspected | None) -> None:
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(item)
            except trio.WouldBlock:
                pass  # a page this far behind misses requests; the ring still has them
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.discard(channel)

    def recent(self) -> list[Inspected]:
        return list(self._ring)

    def subscribe(self) -> trio.MemoryReceiveChannel[Inspected | None]:
        """A channel of every request from now on (None: the status changed); close it to
        unsubscribe."""
        send, receive = trio.open_memory_channel[Inspected | None](SUBSCRIBER_BUFFER)
        self._subscribers.add(send)
        return receive

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

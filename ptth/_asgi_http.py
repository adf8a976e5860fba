"""Serve one tunnel stream as an ASGI 3 ``http`` call.

The request body is handed to the app chunk by chunk through ``receive()`` (each chunk is
acknowledged to the router only then), and the response streams back as the app sends it.
A crash after the response started resets the stream, so the user sees an aborted response,
never a short body that looks complete.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote, unquote_to_bytes

import anyio
import anyio.abc
from h2.errors import ErrorCodes

from .driver import Stream
from .engine import Headers
from .errors import HeaderError, TunnelError
from .proto.fields import declared_length, strip_hop_by_hop
from .proto.forwarded import Hop, take_hop
from .proto.headers import RequestHead, clean_trailers
from .types import ASGIApp, Message

__all__ = ["build_scope", "log_app_error", "serve_http"]

log = logging.getLogger("ptth.asgi")


def _client_from(headers: Headers, hop: Hop | None) -> tuple[str, int] | None:
    """The user as the router saw it (its Forwarded element: address and port), else the first
    X-Forwarded-For address; a trusted proxy's X-Forwarded-For names the user behind it."""
    forwarded_for = None
    for name, value in headers:
        if name == b"x-forwarded-for":
            forwarded_for = value.split(b",")[0].strip().decode("latin-1")
            break
    if hop is not None and hop.client is not None:
        if forwarded_for and forwarded_for != hop.client[0]:
            return (forwarded_for, 0)  # behind a trusted proxy: its user, port unknown
        return hop.client
    for name, value in headers:
        if name == b"x-forwarded-for":
            first = value.split(b",")[0].strip().decode("latin-1")
            if first:
                return (first, 0)
    return None


def _scheme_from(headers: Headers, default: str, websocket: bool) -> str:
    scheme = default
    for name, value in headers:
        if name == b"x-forwarded-proto":
            candidate = value.split(b",")[0].strip().decode("latin-1").lower()
            if candidate in ("http", "https"):
                scheme = candidate
    if websocket:
        return {"http": "ws", "https": "wss"}[scheme]
    return scheme


def _prefix_from(headers: Headers) -> bytes:
    """The path prefix the router cut (X-Forwarded-Prefix, set only by the router), or b""."""
    for name, value in headers:
        if name == b"x-forwarded-prefix":
            value = value.strip()
            return value.rstrip(b"/") if value.startswith(b"/") else b""
    return b""


def _decoded(raw: bytes) -> str:
    return unquote_to_bytes(raw).decode("utf-8", "replace")


def build_scope(
    head: RequestHead,
    *,
    scope_type: str,
    server: tuple[str, int | None] | None,
    root_path: str,
) -> dict[str, Any]:
    """The ASGI scope, with scheme and client taken from the router's X-Forwarded-* fields.

    Mount semantics, as uvicorn's ``--root-path``: ``root_path`` is where the app is mounted in
    the user's URL space, and ``path`` (and ``raw_path``) is the full path *including* it, which
    Starlette (``get_route_path``) and Django (``path_info``) cut off again to route. The mount
    point is the option ``root_path`` (prefix removed by a proxy in front of the router)
    followed by the X-Forwarded-Prefix of a router that stripped the tunnel's path prefix.
    """
    outer = root_path.rstrip("/")
    fields, hop = take_hop(head.headers)
    prefix = _prefix_from(fields)
    mount = outer + _decoded(prefix)
    raw_mount = quote(outer, safe="/!$&'()*+,;=:@").encode("ascii") + prefix
    scope: dict[str, Any] = {
        "type": scope_type,
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": (hop.http_version if hop else None) or "2",
        "scheme": _scheme_from(fields, head.scheme or "http", scope_type == "websocket"),
        "path": mount + _decoded(head.path),
        "raw_path": raw_mount + head.path,
        "query_string": head.query_string,
        "root_path": mount,
        "headers": fields,
        "client": _client_from(fields, hop),
        "server": (hop.server if hop else None) or server,
        "extensions": {"http.response.trailers": {}},
    }
    if scope_type == "http":
        scope["method"] = head.method
    return scope


class ContentLengthMismatch(RuntimeError):
    """The app's body disagrees with the Content-Length it declared."""


class _Responder:
    """The ``send`` side: turns ASGI messages into HEADERS/DATA/trailers on the stream."""

    def __init__(self, stream: Stream, method: str) -> None:
        self.stream = stream
        self.head_only = method == "HEAD"
        self.status: int | None = None
        self.headers: Headers = []
        self.trailers = False
        self.trailer_fields: Headers = []  # gathered across more_trailers messages
        self.headers_sent = False
        self.complete = False
        self.gone = False  # the router reset the stream: further sends are dropped
        self.remaining: int | None = None  # body bytes still owed under Content-Length

    async def send(self, message: Message) -> None:
        if self.gone or self.complete:
            return
        try:
            await self._send(message)
        except TunnelError:
            self.gone = True

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.status is not None:
                raise RuntimeError("http.response.start sent twice")
            self.status = int(message["status"])
            self.headers = strip_hop_by_hop(message.get("headers", []))
            self.trailers = bool(message.get("trailers", False))
            self.remaining = declared_length(self.headers)
        elif kind == "http.response.body":
            if self.status is None:
                raise RuntimeError("http.response.body before http.response.start")
            body = bytes(message.get("body", b""))
            more = bool(message.get("more_body", False))
            end = not more and not self.trailers
            if not self.headers_sent:
                await self._send_headers(end_stream=end and (not body or self.head_only))
                if end and (not body or self.head_only):
                    self._completed()
                    return
            if self.head_only:
                body = b""
            elif self.remaining is not None:
                # h2 treats a Content-Length mismatch as a connection error (RFC 9113 §8.1.1),
                # which would take down every stream on the tunnel: fail just this one.
                self.remaining -= len(body)
                if self.remaining < 0 or (end and self.remaining > 0):
                    raise ContentLengthMismatch(
                        f"response body does not match its content-length ({self.remaining:+d})"
                    )
            if body or end:
                await self.stream.send_data(body, end_stream=end)
            if end:
                self._completed()
        elif kind == "http.response.trailers":
            if not self.trailers:
                raise RuntimeError("trailers sent without 'trailers': True in response start")
            if not self.headers_sent:
                await self._send_headers(end_stream=False)
            self.trailer_fields.extend(message.get("headers", []))
            if not message.get("more_trailers", False):
                trailers = clean_trailers(self.trailer_fields)
                if trailers:
                    await self.stream.send_trailers(trailers)
                else:
                    # An empty section cannot be a HEADERS frame (h2 raises IndexError):
                    # end the stream with an empty DATA frame, as if there were no trailers.
                    await self.stream.end()
                self._completed()
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    def _completed(self) -> None:
        self.complete = True
        self.stream.wake()  # a receive() waiting for disconnect can now return

    async def _send_headers(self, *, end_stream: bool) -> None:
        block = [(b":status", str(self.status).encode()), *self.headers]
        await self.stream.send_headers(block, end_stream=end_stream)
        self.headers_sent = True


async def serve_http(
    app: ASGIApp,
    stream: Stream,
    head: RequestHead,
    *,
    server: tuple[str, int | None] | None = None,
    root_path: str = "",
) -> None:
    """Run ``app`` for one request on ``stream``; returns when the exchange is over."""
    scope = build_scope(head, scope_type="http", server=server, root_path=root_path)
    responder = _Responder(stream, head.method)
    finished = anyio.Event()
    body_done = False

    async def receive() -> Message:
        nonlocal body_done
        if not body_done and not finished.is_set():
            try:
                body = await stream.receive_data()
            except TunnelError:
                return {"type": "http.disconnect"}
            body_done = stream.received_end and stream.buffered == 0
            return {"type": "http.request", "body": body, "more_body": not body_done}
        # The body is done: the next event an app can get is the user going away (a reset),
        # or the response completing.
        while stream.error is None and not responder.complete and not finished.is_set():
            await stream.wait_changed()
        return {"type": "http.disconnect"}

    try:
        await app(scope, receive, responder.send)
    except Exception as exc:
        log_app_error(stream, exc)
        await _abort(responder)
        return
    finally:
        finished.set()
        stream.wake()
    if not responder.complete and not responder.gone:
        log.warning("tunnel %s: app returned without completing the response", stream.tunnel_id)
        await _abort(responder)


def log_app_error(stream: Stream, exc: Exception) -> None:
    """Log what the app raised (call it in the ``except`` block: the traceback comes from there).

    A bad header the app sent is one line; anything else is logged with its traceback.
    """
    if isinstance(exc, HeaderError):
        log.warning("tunnel %s: app sent a bad header: %s", stream.tunnel_id, exc)
    else:
        log.exception("tunnel %s: ASGI app raised", stream.tunnel_id)


async def _abort(responder: _Responder) -> None:
    """500 if nothing was sent yet; otherwise reset so the truncation is visible downstream."""
    if responder.gone or responder.complete:
        return
    try:
        if not responder.headers_sent:
            body = b"Internal Server Error\n"
            await responder.stream.send_headers(
                [
                    (b":status", b"500"),
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                ]
            )
            await responder.stream.send_data(body, end_stream=True)
        else:
            await responder.stream.reset(ErrorCodes.INTERNAL_ERROR)
    except TunnelError:
        pass

"""Agent mode, ``http://`` upstream: relay tunnel streams as HTTP/1.1 requests with httpx.

Both bodies stream: the request body is an async generator that takes the next chunk off the
tunnel stream (acknowledging it to the router) only when httpx asks for it, and the response is
read with ``aiter_raw`` (bytes as the server sent them, no decompression) and each chunk sent
into the tunnel at once, so server-sent events are not held back. HTTP/1.1 has no place for the
tunnel's trailers in httpx, so request trailers are dropped and ``te: trailers`` is not sent.

Errors: the upstream unreachable, or failing before its response head, gives a 502 with a
plain-text reason; failing mid-body resets the tunnel stream (the router then aborts the user's
response instead of ending it cleanly).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import anyio
import anyio.abc
import httpx

from ._upstream_common import (
    Progress,
    UpstreamFailed,
    downstream,
    receive_downstream,
    relaying,
    send_plain,
    watch_downstream,
)
from ._upstream_url import UpstreamURL
from .driver import Stream
from .engine import Headers
from .errors import HeaderError
from .proto.fields import strip_hop_by_hop
from .proto.headers import RequestHead

__all__ = ["HTTPUpstream"]

log = logging.getLogger("ptth.agent")

# Fields httpx must not see from the tunnel: it frames the body itself (RFC 9112 §6), and TE
# would promise trailers the agent cannot deliver over httpx.
_REQUEST_DROP = frozenset({b"te", b"transfer-encoding"})


class HTTPUpstream:
    """One pooled httpx client for an HTTP/1.1 upstream server."""

    def __init__(self, target: UpstreamURL, *, connect_timeout: float = 10.0) -> None:
        self.target = target
        # No read timeout: a stream may stay quiet for long (the router's idle timeout bounds
        # it); no pool limit: the tunnel's stream limit already bounds concurrency; no proxy
        # from the environment: the upstream is local.
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=connect_timeout),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=20),
            follow_redirects=False,
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    def build_request(self, stream: Stream, head: RequestHead) -> httpx.Request:
        url = httpx.URL(
            scheme="http", host=self.target.host, port=self.target.port, raw_path=head.raw_path
        )
        # The user's Host is kept (head.headers starts with it), as the in-process mode shows the
        # app the routed host; X-Forwarded-* from the router pass through.
        headers = [(n, v) for n, v in head.headers if n not in _REQUEST_DROP]
        no_body = stream.received_end and stream.buffered == 0
        content = None if no_body else _request_body(stream)
        return httpx.Request(head.method, url, headers=headers, content=content)

    async def relay(self, stream: Stream, head: RequestHead) -> None:
        try:
            request = self.build_request(stream, head)
        except (httpx.InvalidURL, ValueError) as exc:  # e.g. "OPTIONS *": httpx has no form
            await send_plain(stream, 501, f"cannot forward this request target: {exc}")
            return
        progress = Progress()
        async with relaying(stream, progress), anyio.create_task_group() as nursery:
            nursery.start_soon(watch_downstream, stream)
            await self._exchange(request, stream, progress)
            nursery.cancel_scope.cancel()

    async def _exchange(self, request: httpx.Request, stream: Stream, progress: Progress) -> None:
        try:
            response = await self.client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise UpstreamFailed(f"{self.target}: {_describe(exc)}") from None
        try:
            try:
                fields = strip_hop_by_hop(response.headers.raw)
            except HeaderError as exc:
                raise UpstreamFailed(f"upstream sent an invalid response: {exc}") from None
            block: Headers = [(b":status", str(response.status_code).encode()), *fields]
            await downstream(stream.send_headers(block))
            progress.headers_sent = True
            try:
                async for chunk in response.aiter_raw():
                    if chunk:
                        await downstream(stream.send_data(chunk))
            except httpx.TransportError as exc:
                raise UpstreamFailed(
                    f"{self.target} failed mid-response: {_describe(exc)}"
                ) from None
            await downstream(stream.end())
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()


async def _request_body(stream: Stream) -> AsyncIterator[bytes]:
    while chunk := await receive_downstream(stream):
        yield chunk


def _describe(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return f"upstream unreachable ({exc or type(exc).__name__})"
    return str(exc) or type(exc).__name__

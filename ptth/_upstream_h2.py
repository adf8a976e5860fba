"""Agent mode, ``h2c://`` upstream: relay tunnel streams onto HTTP/2 streams to a local server.

The upstream connections are the router's own h2 client, :class:`Connection` with
``client_side=True``, over a plain TCP stream: it sends the connection preface itself (prior
knowledge, RFC 9113 §3.3), so there is no handshake. A small pool keeps a few of them, opened
lazily, replaced when they close or drain (GOAWAY), and grown only when every open one is at the
upstream's SETTINGS_MAX_CONCURRENT_STREAMS.

A stream is relayed field for field: request headers and body up, response headers, body and
trailers down (gRPC's status lives in trailers), request trailers up too. Each direction reads
from one side only after the other side accepted the previous chunk, and tunnel DATA is
acknowledged as it is consumed, so HTTP/2 flow control carries backpressure across both hops.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc

from ._upstream_common import (
    Progress,
    UpstreamFailed,
    downstream,
    receive_downstream,
    relaying,
    watch_downstream,
)
from ._upstream_url import UpstreamURL
from .driver import Connection, Stream
from .engine import Headers, Liveness, Settings
from .errors import HeaderError, TunnelError
from .proto.headers import clean_trailers, from_tunnel_response

__all__ = ["H2Upstream"]

log = logging.getLogger("ptth.agent")

# Pings every few seconds on an idle connection make gRPC servers answer GOAWAY "too_many_pings"
# (their minimum is 5 minutes without data): the upstream is local, and a lost connection shows
# up as a closed socket anyway.
UPSTREAM_LIVENESS = Liveness(interval=3600.0, dead_after=7200.0, write_timeout=30.0)
MAX_CONNECTIONS = 8
WS_CLOSE_LINGER = 10.0  # how long a WebSocket's server may take to close after the client did
ATTEMPTS = 3  # a stream the upstream refused unprocessed (REFUSED_STREAM, GOAWAY) is retried


class H2Upstream:
    """A pool of HTTP/2 prior-knowledge connections to one upstream server."""

    def __init__(
        self,
        target: UpstreamURL,
        nursery: anyio.abc.TaskGroup,
        *,
        connect_timeout: float = 10.0,
        max_connections: int = MAX_CONNECTIONS,
        settings: Settings | None = None,
    ) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self._nursery = nursery
        self._settings = settings or Settings()
        self._connections: list[Connection] = []
        self._connect_lock = anyio.Lock()
        self._ids = itertools.count(1)

    # -- the pool ------------------------------------------------------------------------------

    async def acquire(self) -> Connection:
        """A connection with room for one more stream; raises UpstreamFailed if none can be had."""
        while True:
            self._prune()
            for conn in self._connections:
                if conn.open_streams < conn.peer_max_concurrent_streams:
                    return conn
            if len(self._connections) < self.max_connections:
                async with self._connect_lock:
                    self._prune()
                    if not any(self._has_room(c) for c in self._connections):
                        self._connections.append(await self._connect())
                continue
            # Every connection is full: wait for a stream to finish somewhere.
            with anyio.move_on_after(0.05):
                await self._connections[0].wait_streams_changed()

    @staticmethod
    def _has_room(conn: Connection) -> bool:
        return conn.open_streams < conn.peer_max_concurrent_streams

    def _prune(self) -> None:
        keep: list[Connection] = []
        for conn in self._connections:
            if not conn.draining:
                keep.append(conn)
            elif not conn.closed:
                # The upstream sent GOAWAY: let its streams finish, then close our side.
                self._nursery.start_soon(conn.drain, 30.0)
        self._connections = keep

    async def _connect(self) -> Connection:
        name = f"{self.target}#{next(self._ids)}"
        try:
            with anyio.fail_after(self.connect_timeout):
                sock = await anyio.connect_tcp(self.target.host, self.target.port)
        except (OSError, TimeoutError) as exc:
            raise UpstreamFailed(f"cannot connect to {self.target}: {_describe(exc)}") from None
        conn = Connection(
            sock,
            client_side=True,
            tunnel_id=name,
            settings=self._settings,
            liveness=UPSTREAM_LIVENESS,
        )
        await self._nursery.start(_run_quietly, conn)
        # Its SETTINGS prove the upstream speaks HTTP/2 (an HTTP/1.1 server answers the preface
        # with an error and closes) and tell us its stream limit before we use it.
        with anyio.move_on_after(self.connect_timeout) as waiting:
            await _settings_or_close(conn)
        if conn.closed or waiting.cancelled_caught:
            await conn.aclose()
            raise UpstreamFailed(f"{self.target} did not answer as an HTTP/2 (h2c) server")
        log.info("upstream connection %s open", name)
        return conn

    async def aclose(self) -> None:
        for conn in self._connections:
            await conn.aclose()
        self._connections = []

    # -- one stream ----------------------------------------------------------------------------

    async def relay(self, stream: Stream, headers: Headers) -> None:
        """Forward ``stream`` (whose request block is ``headers``) and its response back."""
        up: Stream | None = None
        progress = _Progress(extended_connect=any(n == b":protocol" for n, _ in headers))
        try:
            async with relaying(stream, progress):
                up = await self._open(stream, headers, progress)
                async with anyio.create_task_group() as nursery:
                    if progress.request_done:
                        nursery.start_soon(watch_downstream, stream)
                    else:
                        nursery.start_soon(_pump_request, stream, up, progress)
                    await _relay_response(up, stream, progress)
                    nursery.cancel_scope.cancel()
        finally:
            if up is not None:
                with anyio.CancelScope(shield=True):
                    await up.aclose()

    async def _open(self, stream: Stream, headers: Headers, progress: _Progress) -> Stream:
        ended = stream.received_end and stream.buffered == 0
        for attempt in range(ATTEMPTS):
            conn = await self.acquire()
            try:
                up = await conn.open_stream(headers, end_stream=ended)
            except TunnelError as exc:
                if attempt == ATTEMPTS - 1:
                    raise UpstreamFailed(f"cannot open a stream to {self.target}: {exc}") from None
                continue
            progress.request_done = ended
            return up
        raise AssertionError("unreachable")


class _Progress(Progress):
    """Also how far the request side got, and whether the exchange is a WebSocket."""

    def __init__(self, extended_connect: bool) -> None:
        self.extended_connect = extended_connect
        self.request_done = False
        self.headers_sent = False


async def _pump_request(src: Stream, up: Stream, progress: _Progress) -> None:
    """Tunnel → upstream: body, then trailers or END_STREAM; then watch for a reset."""
    while chunk := await receive_downstream(src):
        try:
            await up.send_data(chunk)
        except TunnelError:
            return  # the upstream stream failed: the response side reports it
    trailers: Headers = []
    try:
        trailers = clean_trailers(src.trailers or [])
    except HeaderError as exc:
        log.warning("tunnel %s: dropping bad request trailers: %s", src.tunnel_id, exc)
    if progress.extended_connect and not up.received_end:
        # A WebSocket (RFC 8441) whose client side ended: the server closes its side once the
        # closing handshake is done. Wait for that before sending END_STREAM, because hypercorn
        # forgets such a stream as soon as it answered the Close frame and then fails its whole
        # connection on the empty DATA frame that carries our END_STREAM.
        with anyio.move_on_after(WS_CLOSE_LINGER):
            while not up.received_end and up.error is None:
                await up.wait_changed()
    if up.received_end and not trailers:
        # The upstream already finished its side: END_STREAM would tell it nothing, and the
        # exchange ends with RST_STREAM(CANCEL) from aclose() instead, which is how a client
        # abandons the rest of a request whose response is complete (RFC 9113 §8.1).
        progress.request_done = True
        await watch_downstream(src)
        return
    try:
        await (up.send_trailers(trailers) if trailers else up.end())
    except TunnelError:
        return
    progress.request_done = True
    await watch_downstream(src)


async def _relay_response(up: Stream, stream: Stream, progress: _Progress) -> None:
    """Upstream → tunnel: final headers, body, trailers (1xx responses are not relayed)."""
    try:
        headers = await up.receive_headers()
    except TunnelError as exc:
        raise UpstreamFailed(f"upstream failed before its response: {exc}") from None
    try:
        status, fields = from_tunnel_response(headers)
    except HeaderError as exc:
        raise UpstreamFailed(f"upstream sent an invalid response: {exc}") from None
    block = [(b":status", str(status).encode()), *fields]
    # A header block that ends the stream (gRPC's "trailers-only" error responses) stays one.
    only_headers = up.received_end and up.buffered == 0 and up.trailers is None
    await downstream(stream.send_headers(block, end_stream=only_headers))
    progress.headers_sent = True
    if only_headers:
        return
    while True:
        try:
            chunk = await up.receive_data()
        except TunnelError as exc:
            raise UpstreamFailed(f"upstream failed mid-response: {exc}") from None
        if not chunk:
            break
        await downstream(stream.send_data(chunk))
    trailers: Headers = []
    if up.trailers:
        try:
            trailers = clean_trailers(up.trailers)
        except HeaderError as exc:
            raise UpstreamFailed(f"upstream sent invalid trailers: {exc}") from None
    if trailers:
        await downstream(stream.send_trailers(trailers))
    else:
        await downstream(stream.end())


async def _run_quietly(conn: Connection, task_status: anyio.abc.TaskStatus[None]) -> None:
    """Run an upstream connection; its loss is reported to the streams on it, not raised here."""
    try:
        await conn.run(task_status=task_status)
    except (TunnelError, OSError) as exc:
        log.info("upstream connection %s closed: %s", conn.tunnel_id, exc)
        try:
            task_status.started()  # it failed before starting: _connect sees it closed
        except RuntimeError:
            pass  # it had started


async def _settings_or_close(conn: Connection) -> None:
    async with anyio.create_task_group() as nursery:

        async def first(wait: Callable[[], Awaitable[None]]) -> None:
            await wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(first, conn.wait_remote_settings)
        nursery.start_soon(first, conn.wait_closed)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__

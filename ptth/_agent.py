"""Agent mode: serve through the tunnel by forwarding to an existing local server (any language).

``python -m ptth --to http://127.0.0.1:3000 --router HOST:PORT`` keeps the same tunnels as
``ptth.serve`` (same registration, reconnects, drain), but each tunnel stream is handed to an
upstream relay instead of an ASGI app:

* ``http://``: HTTP/1.1 through httpx (:mod:`ptth._upstream_http`); WebSockets (RFC 8441 extended
  CONNECT in the tunnel) become HTTP/1.1 Upgrades (:mod:`ptth._upstream_ws`);
* ``h2c://``: HTTP/2 prior knowledge through the router's own h2 client
  (:mod:`ptth._upstream_h2`), trailers included, so gRPC works end to end.

Errors map as in the in-process mode: the upstream down or failing before its response → 502 with
a plain-text reason; failing mid-body → the stream is reset, so the user sees an abort.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Sequence

import anyio
import anyio.abc

from ._backend import BackendOptions, resolve_arguments, run_backend
from ._upstream_common import send_plain
from ._upstream_h2 import H2Upstream
from ._upstream_http import HTTPUpstream
from ._upstream_url import UpstreamURL, parse_upstream_url
from ._upstream_ws import relay_websocket
from .driver import Stream
from .errors import HeaderError
from .proto.headers import parse_request_block

__all__ = ["Agent", "serve_upstream"]

log = logging.getLogger("ptth.agent")

CONNECT_TIMEOUT = 10.0


class Agent:
    """The stream handler of agent mode; ``nursery`` hosts the upstream h2 connections."""

    def __init__(
        self,
        target: UpstreamURL,
        nursery: anyio.abc.TaskGroup,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self.h2: H2Upstream | None = None
        self.http: HTTPUpstream | None = None
        if target.scheme == "h2c":
            self.h2 = H2Upstream(target, nursery, connect_timeout=connect_timeout)
        else:
            self.http = HTTPUpstream(target, connect_timeout=connect_timeout)

    async def handle(self, stream: Stream) -> None:
        headers = await stream.receive_headers()
        try:
            head = parse_request_block(headers)
        except HeaderError as exc:
            log.warning("tunnel %s: bad request block: %s", stream.tunnel_id, exc)
            await send_plain(stream, 400, str(exc))
            return
        if self.h2 is not None:
            # h2 to h2: the block is forwarded as received (already validated above), so
            # extended CONNECT, te: trailers and gRPC's fields reach the upstream unchanged.
            await self.h2.relay(stream, headers)
            return
        assert self.http is not None
        if head.method == "CONNECT":
            if head.protocol != "websocket":
                await send_plain(stream, 501, f"protocol {head.protocol!r} is not supported")
                return
            await relay_websocket(self.target, stream, head, connect_timeout=self.connect_timeout)
            return
        await self.http.relay(stream, head)

    async def aclose(self) -> None:
        if self.h2 is not None:
            await self.h2.aclose()
        if self.http is not None:
            await self.http.aclose()


async def serve_upstream(
    url: str,
    router_addr: str | Sequence[str],
    *,
    service: str = "default",
    hosts: Sequence[str] = (),
    path_prefix: str | None = None,
    token: str | None = None,
    connections: int = 1,
    max_concurrent_streams: int = 1000,
    max_connections: int = 0,
    weight: float = 1.0,
    strip_prefix: bool = False,
    ca_file: str | os.PathLike[str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    identity: bool | str | os.PathLike[str] = False,
    client_cert: str | os.PathLike[str] | None = None,
    client_key: str | os.PathLike[str] | None = None,
    proxy: str | None = None,
    options: BackendOptions | None = None,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Like :func:`ptth.serve`, but every request is forwarded to the server at ``url``.

    ``url`` is ``http://HOST:PORT`` (HTTP/1.1) or ``h2c://HOST:PORT`` (HTTP/2 prior knowledge,
    e.g. a gRPC server). Cancelling drains the tunnels; in-flight requests finish first.
    """
    target = parse_upstream_url(url)
    addresses, options = resolve_arguments(
        router_addr,
        options,
        service=service,
        hosts=hosts,
        path_prefix=path_prefix,
        token=token,
        connections=connections,
        max_concurrent_streams=max_concurrent_streams,
        max_connections=max_connections,
        weight=weight,
        strip_prefix=strip_prefix,
        ca_file=ca_file,
        ssl_context=ssl_context,
        identity=identity,
        client_cert=client_cert,
        client_key=client_key,
        proxy=proxy,
    )
    async with anyio.create_task_group() as nursery:
        # The upstream connections must outlive a cancelled serve_upstream while its tunnels
        # drain (in-flight requests still use them), so they live under a shield of their own
        # that is lifted only once run_backend has returned.
        upstream_nursery, upstream_scope = await nursery.start(_shielded_nursery)
        agent = Agent(target, upstream_nursery)
        log.info("agent mode: forwarding to %s", target)
        try:
            await run_backend(
                None, addresses, options, handler=agent.handle, task_status=task_status
            )
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await agent.aclose()
            upstream_scope.cancel()


async def _shielded_nursery(
    task_status: anyio.abc.TaskStatus[tuple[anyio.abc.TaskGroup, anyio.CancelScope]],
) -> None:
    with anyio.CancelScope(shield=True) as scope:
        async with anyio.create_task_group() as nursery:
            task_status.started((nursery, scope))
            await anyio.sleep_forever()

"""ptth: serve an ASGI app through a ReverseHTTP tunnel that the backend dials out.

    import ptth
    ptth.run(app, "router.example.com:8887", service="api")

See ``ptth.serve`` (async: awaitable from asyncio and trio programs alike) and
``python -m ptth module:app --router HOST:PORT``. Agent mode
forwards to a local server in any language instead: ``ptth.serve_upstream("h2c://127.0.0.1:50051",
...)`` or ``python -m ptth --to http://127.0.0.1:3000 --router HOST:PORT``.
"""

from __future__ import annotations

import os
import signal
import ssl
from collections.abc import Awaitable, Callable, Sequence

import anyio

from ._agent import serve_upstream
from ._backend import BackendOptions, serve
from ._loop import LOOPS, resolve_loop
from .engine import Liveness
from .errors import (
    ConfigError,
    HandshakeError,
    HandshakeRefused,
    LifespanError,
    PTTHError,
    StreamReset,
    TunnelClosed,
    TunnelError,
    TunnelTLSError,
)
from .groups import unwrap
from .types import ASGIApp

__all__ = [
    "BackendOptions",
    "ConfigError",
    "HandshakeError",
    "HandshakeRefused",
    "LifespanError",
    "LOOPS",
    "Liveness",
    "PTTHError",
    "StreamReset",
    "TunnelClosed",
    "TunnelError",
    "TunnelTLSError",
    "run",
    "serve",
    "serve_upstream",
]

__version__ = "0.1.0"


def run(
    app: ASGIApp,
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
    loop: str = "auto",
) -> None:
    """Blocking ``serve`` on ``loop`` (``auto``: uvloop if installed, else asyncio; or
    ``asyncio``, ``uvloop``, ``trio``): SIGINT/SIGTERM start a graceful drain, then it returns."""

    async def serve_app() -> None:
        await serve(
            app,
            router_addr,
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
            options=options,
        )

    _run_until_signal(serve_app, loop)


def _run_until_signal(serve_fn: Callable[[], Awaitable[None]], loop: str = "auto") -> None:
    """Run ``serve_fn`` on ``loop``; SIGINT/SIGTERM cancel it (it drains), then this returns."""
    backend, backend_options = resolve_loop(loop)

    async def main() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as group:
                serve_scope = anyio.CancelScope()

                async def serve_task() -> None:
                    with serve_scope:
                        await serve_fn()
                    group.cancel_scope.cancel()

                group.start_soon(serve_task)
                async for _ in signals:
                    serve_scope.cancel()  # serve drains, then serve_task ends the group
                    break
                await anyio.sleep_forever()

    try:
        anyio.run(main, backend=backend, backend_options=backend_options)
    except BaseExceptionGroup as group:
        raise unwrap(group, PTTHError) from None

"""ptth: serve an ASGI app through a ReverseHTTP tunnel that the backend dials out.

    import ptth
    ptth.run(app, "router.example.com:8887", service="api")

See ``ptth.serve`` (async, trio) and ``python -m ptth module:app --router HOST:PORT``. Agent mode
forwards to a local server in any language instead: ``ptth.serve_upstream("h2c://127.0.0.1:50051",
...)`` or ``python -m ptth --to http://127.0.0.1:3000 --router HOST:PORT``.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable, Sequence

import trio

from ._agent import serve_upstream
from ._backend import BackendOptions, serve
from ._groups import unwrap
from ._liveness import Liveness
from ._types import ASGIApp
from .errors import (
    ConfigError,
    HandshakeError,
    HandshakeRefused,
    LifespanError,
    PTTHError,
    StreamReset,
    TunnelClosed,
    TunnelError,
)

__all__ = [
    "BackendOptions",
    "ConfigError",
    "HandshakeError",
    "HandshakeRefused",
    "LifespanError",
    "Liveness",
    "PTTHError",
    "StreamReset",
    "TunnelClosed",
    "TunnelError",
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
    max_concurrent_streams: int = 100,
    weight: float = 1.0,
    options: BackendOptions | None = None,
) -> None:
    """Blocking ``serve``: SIGINT/SIGTERM start a graceful drain, then it returns."""

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
            weight=weight,
            options=options,
        )

    _run_until_signal(serve_app)


def _run_until_signal(serve_fn: Callable[[], Awaitable[None]]) -> None:
    """Run ``serve_fn`` under trio; SIGINT/SIGTERM cancel it (it drains), then this returns."""

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def serve_then_stop() -> None:
                    await serve_fn()
                    nursery.cancel_scope.cancel()

                serve_scope = trio.CancelScope()

                async def serve_task() -> None:
                    with serve_scope:
                        await serve_then_stop()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(serve_task)
                async for _ in signals:
                    serve_scope.cancel()  # serve drains, then serve_task ends the nursery
                    break
                await trio.sleep_forever()

    try:
        trio.run(main)
    except BaseExceptionGroup as group:
        raise unwrap(group, PTTHError) from None

"""``python -m router``: run a ptth router (see ``--help``)."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence

import trio

from ptth.allocator import tune_allocator
from ptth.errors import PTTHError

from .config import load_config
from .server import Router


def main(argv: Sequence[str] | None = None) -> int:
    tune_allocator()
    try:
        config = load_config(argv)
    except PTTHError as exc:
        print(f"router: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        router = Router(config)
    except PTTHError as exc:  # e.g. a TLS certificate that cannot be read
        print(f"router: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        wanted = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        with trio.open_signal_receiver(*wanted) as signals:
            async with trio.open_nursery() as nursery:

                async def serve() -> None:
                    await router.serve()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(serve)
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        router.reload()
                        continue
                    router.shutdown()
                    break
                await trio.sleep_forever()

    try:
        trio.run(run)
    except (OSError, BaseExceptionGroup) as exc:
        # Port in use, address not available: one line, no traceback (a traceback is a bug).
        error: BaseException = exc
        while isinstance(error, BaseExceptionGroup):
            error = error.exceptions[0]
        if not isinstance(error, OSError):
            raise
        print(f"router: cannot listen: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

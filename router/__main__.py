"""``python -m router``: run a ptth router (see ``--help``)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

import trio

from ptth import logs
from ptth.allocator import tune_allocator
from ptth.errors import PTTHError
from ptth.proto.handshake import WorkerInfo

from . import worker_process
from .config import load_router, print_config
from .server import Router
from .workers import supervise, worker_count


def _worker_arguments() -> argparse.ArgumentParser:
    """What the supervisor adds to a worker's command line (router/workers.py); not for users."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # abbreviations: --workers
    p.add_argument("--worker-id")
    p.add_argument("--worker-count", type=int)
    p.add_argument("--worker-parent-fd", type=int)
    p.add_argument("--inherit-fd", action="append", default=[])
    p.add_argument("--worker-restarted", action="store_true")
    return p


def _worker_context(args: argparse.Namespace) -> worker_process.WorkerContext:
    info = WorkerInfo(args.worker_id, args.worker_count or 0)  # ValueError if not given
    sockets: dict[str, tuple[int, ...]] = {}
    for item in args.inherit_fd:
        name, _, fds = item.partition("=")
        sockets[name] = tuple(int(fd) for fd in fds.split(","))
    index = int(info.id.rpartition("/")[2])
    return worker_process.WorkerContext(
        index=index,
        info=info,
        sockets=sockets,
        restarted=args.worker_restarted,
        parent_fd=args.worker_parent_fd,
    )


async def _watch_supervisor(fd: int, router: Router) -> None:
    """A worker drains when its supervisor is gone, however it died (even SIGKILL): the pipe's
    write end, held only by the supervisor, closes, and the read end turns readable (EOF). An
    orphan holding a SO_REUSEPORT socket would take connections nobody supervises."""
    await trio.lowlevel.wait_readable(fd)
    logging.getLogger("router").warning("the supervisor is gone; draining")
    router.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    tune_allocator()
    argv = list(sys.argv[1:] if argv is None else argv)
    worker_args, argv = _worker_arguments().parse_known_args(argv)
    try:
        config, wants_print = load_router(argv)
        if wants_print:
            sys.stdout.write(print_config(config))
            return 0
        context = _worker_context(worker_args) if worker_args.worker_id else None
    except (PTTHError, ValueError) as exc:
        print(f"router: {exc}", file=sys.stderr)
        return 2
    prefix = "" if context is None else f"worker {context.index} "
    try:
        static = {} if context is None else {"worker": context.index}
        logs.configure(config.log_level, config.log_format, prefix=prefix, static=static)
    except ValueError as exc:
        print(f"router: {exc}", file=sys.stderr)
        return 2
    if context is not None:
        worker_process.set_current(context)
    try:
        router = Router(config)
    except PTTHError as exc:  # e.g. a TLS certificate that cannot be read
        print(f"router: {exc}", file=sys.stderr)
        return 2
    count = worker_count(config.workers)
    if context is None and count > 1:
        # The Router above only checked the files every worker will load: a bad one is
        # reported once, here, rather than by each worker until the supervisor gives up.
        return supervise(config, argv, count)

    async def run() -> None:
        wanted = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        with trio.open_signal_receiver(*wanted) as signals:
            async with trio.open_nursery() as nursery:

                async def serve() -> None:
                    await router.serve()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(serve)
                if context is not None and context.parent_fd is not None:
                    nursery.start_soon(_watch_supervisor, context.parent_fd, router)
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

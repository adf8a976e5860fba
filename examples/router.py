#!/usr/bin/env python3
"""Run a ptth router inside your own program (``python -m router`` does the same, with more flags).

    python examples/router.py                       # front end :8888, tunnel port :8887
    python examples/router.py --http 127.0.0.1:0 --tunnel 127.0.0.1:0 --log-level WARNING

Once both ports are bound it prints one line on stdout (whatever the log level), so a parent
process can start it on port 0 and read where it landed::

    ready: front end on http://127.0.0.1:41234, tunnel port on 127.0.0.1:39871

SIGINT or SIGTERM starts a graceful drain; the program exits when it is done.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

# Run as a script, Python puts examples/ first on sys.path, and this file (router.py) would then
# shadow the `router` package. Take that entry out before importing the package.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import trio

from router.config import RouterConfig
from router.server import Router


async def serve(router: Router) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            # `start` returns once both ports are bound, with the real addresses (port 0 resolved).
            addresses = await nursery.start(router.serve)
            print(
                f"ready: front end on {addresses.http_url}, tunnel port on {addresses.tunnel_addr}",
                flush=True,
            )
            if addresses.admin is not None:
                print(f"status page on {addresses.admin_url}", flush=True)
            async for _ in signals:
                router.shutdown()  # stop accepting, finish in-flight requests, close tunnels
                break
            # leaving the nursery waits for router.serve to finish the drain


def main() -> int:
    parser = argparse.ArgumentParser(description="An in-process ptth router.")
    parser.add_argument("--http", default="127.0.0.1:8888", help="front end HOST:PORT")
    parser.add_argument("--tunnel", default="127.0.0.1:8887", help="tunnel port HOST:PORT")
    parser.add_argument("--token", default=None, help="bearer token backends must present")
    parser.add_argument(
        "--admin", default="127.0.0.1:8889", help="status page and /metrics HOST:PORT, or none"
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    args = parser.parse_args()

    # The same logging set-up as `python -m router`; the library itself never configures it.
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = RouterConfig(
        http=args.http,
        tunnel=args.tunnel,
        token=args.token,
        log_level=args.log_level,
        admin=args.admin,
    )
    try:
        trio.run(serve, Router(config))
    except OSError as exc:  # typically: address already in use
        print(f"router: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

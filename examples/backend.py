#!/usr/bin/env python3
"""A tiny ASGI backend served through a ptth tunnel: ``GET /foo`` answers ``bar``.

    python examples/backend.py --router 127.0.0.1:8887 --name backend-1
    python -m ptth examples.backend:app --router 127.0.0.1:8887   # the same app, through the CLI

Every response carries ``X-Backend: <instance id>`` so a load test can show which backend served
what. The id is ``--name``, else ``$PTTH_INSTANCE``, else ``<hostname>-<pid>``; the script hands the
same id to ptth (``BackendOptions.instance``), so the router's and the backend's logs match.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import ptth

# ASGI 3 signatures (asgiref's typing, written out to keep the example self-contained).
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("examples.backend")


def make_app(instance: str) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    log.info("backend %s: starting", instance)
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    log.info("backend %s: stopped", instance)
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return  # no WebSockets here: returning without accepting refuses the handshake
        if scope["path"] == "/foo" and scope["method"] in ("GET", "HEAD"):
            status, body = 200, b"bar"
        else:
            status, body = 404, b"not found\n"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-backend", instance.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def default_instance() -> str:
    return os.environ.get("PTTH_INSTANCE") or f"{socket.gethostname()}-{os.getpid()}"


# What `python -m ptth examples.backend:app` and hypercorn serve.
app = make_app(default_instance())


def main() -> int:
    parser = argparse.ArgumentParser(description="Serve the example app through a ptth router.")
    parser.add_argument(
        "--router",
        default=os.environ.get("PTTH_ROUTER", "127.0.0.1:8887"),
        help="router tunnel address HOST:PORT (env PTTH_ROUTER; default 127.0.0.1:8887)",
    )
    parser.add_argument("--name", default=None, help="instance id (default $PTTH_INSTANCE)")
    parser.add_argument("--token", default=os.environ.get("PTTH_TOKEN"), help="router token")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    args = parser.parse_args()

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    instance = args.name or default_instance()
    options = ptth.BackendOptions(instance=instance, token=args.token)
    try:
        ptth.run(make_app(instance), args.router, options=options)  # returns after SIGINT/SIGTERM
    except ptth.PTTHError as exc:  # e.g. the router refused the tunnel (bad token)
        print(f"backend {instance}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

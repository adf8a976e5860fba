"""ASGI apps for the drain and CLI tests (importable as ``tests.e2e.apps_drain:app``).

Every response carries ``X-Backend: <name>``; the name comes from ``make_app(name)`` or, for the
module-level ``app`` run by ``python -m ptth``, from the ``PTTH_TEST_BACKEND`` environment variable.

Paths: ``/slow?s=SECONDS`` sleeps first (default 1 s); anything else answers at once. POST
echoes its body. ``/started`` never reaches the network: see ``started`` below.

The apps use anyio, so they run on any loop the helper runs on.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs

import anyio

from ptth.types import ASGIApp, Receive, Scope, Send
from tests.support import ThreadSafeEvent, read_body, serve_lifespan

__all__ = ["app", "make_app"]


def make_app(
    name: str, *, started: ThreadSafeEvent | None = None, events: list[str] | None = None
) -> ASGIApp:
    """An app answering as ``name``; ``started`` (if given) is set when a /slow request begins.

    ``events``, if given, records ``"startup"``, ``"shutdown"`` (lifespan) and ``"sent /slow"``
    (once a /slow response was sent), in order.
    """

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send, events)
            return
        assert scope["type"] == "http"
        body = await read_body(receive)
        if scope["path"] == "/slow":
            query = parse_qs(scope["query_string"].decode("latin-1"))
            delay = float(query.get("s", ["1"])[0])
            if started is not None:
                started.set()
            await anyio.sleep(delay)
        payload = body if scope["method"] == "POST" else f"hello from {name}".encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/plain"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"x-backend", name.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
        if events is not None and scope["path"] == "/slow":
            events.append("sent /slow")

    return app


app = make_app(os.environ.get("PTTH_TEST_BACKEND", "unnamed"))

"""ASGI app run in a child process by tests/e2e/test_faults.py (``python -m ptth``).

``/big`` starts a 10 MiB response, sends the first 256 KiB, then hangs: the test SIGKILLs the
process while the user is reading, so the router must turn the lost tunnel into an aborted
response. Anything else answers 200 "ok".
"""

from __future__ import annotations

import anyio

from ptth.types import Receive, Scope, Send
from tests.support import serve_lifespan

BIG_SIZE = 10 * 1024 * 1024
FIRST_PART = 256 * 1024


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await serve_lifespan(receive, send)
        return
    if scope["path"] == "/big":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/octet-stream"),
                    (b"content-length", str(BIG_SIZE).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"x" * FIRST_PART, "more_body": True})
        await anyio.sleep(3600)
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

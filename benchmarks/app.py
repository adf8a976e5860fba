"""The benchmarked ASGI app: ``examples.backend``'s app, ``GET /stream/<bytes>``, ``PUT /upload``.

``/stream/N`` sends N bytes (with Content-Length, so a short body is detectable) in chunks of
``CHUNK`` bytes, all slices of one preallocated buffer: the app itself costs next to nothing, so
the numbers measure the transport. ``PUT`` or ``POST /upload`` reads the request body, counts its
bytes (keeping none) and answers the count as text. Served the same way through the router
(``python -m ptth benchmarks.app:app``) and directly (``hypercorn benchmarks.app:app``,
``uvicorn benchmarks.app:app``).
"""

from __future__ import annotations

from examples.backend import Receive, Scope, Send, make_app

CHUNK = 256 * 1024
_BLOCK = bytes(CHUNK)
_example = make_app("bench")


async def upload(receive: Receive, send: Send) -> None:
    received = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        received += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = str(received).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    path = scope.get("path", "")
    if scope["type"] == "http" and path == "/upload" and scope["method"] in ("PUT", "POST"):
        await upload(receive, send)
        return
    if scope["type"] != "http" or not path.startswith("/stream/"):
        await _example(scope, receive, send)
        return
    size_text = path.removeprefix("/stream/")
    if not size_text.isdigit():
        await _example(scope, receive, send)  # a 404
        return
    remaining = int(size_text)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(remaining).encode()),
            ],
        }
    )
    while remaining > CHUNK:
        await send({"type": "http.response.body", "body": _BLOCK, "more_body": True})
        remaining -= CHUNK
    await send({"type": "http.response.body", "body": _BLOCK[:remaining], "more_body": False})

"""The benchmarked ASGI app: ``examples.backend``'s app plus ``GET /stream/<bytes>``.

``/stream/N`` sends N bytes (with Content-Length, so a short body is detectable) in chunks of
``CHUNK`` bytes, all slices of one preallocated buffer: the app itself costs next to nothing, so
the numbers measure the transport. Served the same way through the router (``python -m ptth
benchmarks.app:app``) and directly (``hypercorn benchmarks.app:app``).
"""

from __future__ import annotations

from examples.backend import Receive, Scope, Send, make_app

CHUNK = 256 * 1024
_BLOCK = bytes(CHUNK)
_example = make_app("bench")


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    path = scope.get("path", "")
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

"""ASGI apps for the streaming tests (importable as ``tests.e2e.apps_streaming:app``).

Paths:

* ``POST /sha256`` hashes the request body while it arrives (never holding it whole) and
  answers ``{"sha256": HEX, "size": N, "chunks": K}``.
* ``GET /download?size=N`` streams ``N`` bytes of :func:`tests.support.deterministic_chunk`
  data, 64 KiB per ``http.response.body`` message, with a Content-Length. The app's
  :class:`Progress` counts the bytes whose ``send`` returned (i.e. that entered the tunnel).
* ``GET /two-chunks`` sends ``first``, sleeps ``DELAY`` seconds, then sends ``second``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import anyio

from ptth.types import ASGIApp, Receive, Scope, Send
from tests.support import deterministic_chunk, serve_lifespan

__all__ = ["CHUNK", "DELAY", "Progress", "app", "expected_sha256", "make_app"]

CHUNK = 64 * 1024
DELAY = 0.5


@dataclass
class Progress:
    """What the app managed to send on its latest download (times: the app's loop clock)."""

    sent: int = 0
    started: float | None = None
    finished: float | None = None
    samples: list[tuple[float, int]] = field(default_factory=list)


def download_chunks(size: int) -> list[tuple[int, int]]:
    """(index, length) of every chunk of a ``size``-byte download."""
    return [(i, min(CHUNK, size - off)) for i, off in enumerate(range(0, size, CHUNK))]


def expected_sha256(size: int) -> str:
    digest = hashlib.sha256()
    for index, length in download_chunks(size):
        digest.update(deterministic_chunk(index, length))
    return digest.hexdigest()


def make_app(progress: Progress | None = None) -> ASGIApp:
    """A fresh app; ``progress`` (if given) is updated by every download."""
    state = progress if progress is not None else Progress()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        assert scope["type"] == "http"
        path = scope["path"]
        if path == "/sha256":
            digest = hashlib.sha256()
            size = chunks = 0
            while True:
                message = await receive()
                body = message.get("body", b"")
                digest.update(body)
                size += len(body)
                chunks += 1
                if not message.get("more_body", False):
                    break
            payload = json.dumps(
                {"sha256": digest.hexdigest(), "size": size, "chunks": chunks}
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": payload})
        elif path == "/download":
            query = parse_qs(scope["query_string"].decode("latin-1"))
            size = int(query.get("size", [str(CHUNK)])[0])
            state.sent = 0
            state.started = anyio.current_time()
            state.finished = None
            state.samples = []
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/octet-stream"),
                        (b"content-length", str(size).encode()),
                    ],
                }
            )
            for index, length in download_chunks(size):
                await send(
                    {
                        "type": "http.response.body",
                        "body": deterministic_chunk(index, length),
                        "more_body": True,
                    }
                )
                state.sent += length
                state.samples.append((anyio.current_time(), state.sent))
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            state.finished = anyio.current_time()
        elif path == "/two-chunks":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/plain")],
                }
            )
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            await anyio.sleep(DELAY)
            await send({"type": "http.response.body", "body": b"second", "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"not found"})

    return app


app = make_app()

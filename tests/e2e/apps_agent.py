"""The upstream server of the agent-mode tests: an ASGI app run by a separate hypercorn process.

Routes (GET unless said): ``/hello`` (echoes what the upstream saw: host, forwarded fields,
HTTP version), ``POST /echo`` (streams the body back chunk by chunk while reading it),
``POST /upload`` (reads the whole body, answers its size and SHA-256), ``/sse?n=N&every=S``
(server-sent events carrying their send time; ``/active`` counts the streams in progress),
``/trailers`` (body plus trailers when the request said ``te: trailers``), ``/status/CODE``,
``/big?size=N`` (deterministic bytes), ``/crash`` (headers, some body, then the app raises),
``/quiet`` (headers then silence), and the WebSocket ``/ws`` (echo; picks the first offered
subprotocol; ``/ws/refuse`` refuses with 403).
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any
from urllib.parse import parse_qs

import trio

Scope = dict[str, Any]


def chunk(index: int, size: int) -> bytes:
    seed = hashlib.sha256(index.to_bytes(8, "big")).digest()
    return (seed * (size // len(seed) + 1))[:size]


def big_body(size: int, piece: int = 65536) -> bytes:
    return b"".join(chunk(i, min(piece, size - off)) for i, off in enumerate(range(0, size, piece)))


ACTIVE = [0]  # SSE streams in progress (a stream whose user went away must stop)


async def _stop_on_disconnect(receive: Any, scope: trio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


async def app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].rsplit(".", 1)[1]
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    if scope["type"] == "websocket":
        await websocket(scope, receive, send)
        return
    path = scope["path"]
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in scope["headers"]]

    async def start(status: int = 200, extra: list[tuple[bytes, bytes]] | None = None, **kw: Any):
        await send({"type": "http.response.start", "status": status, "headers": extra or [], **kw})

    async def body(data: bytes, more: bool = False) -> None:
        await send({"type": "http.response.body", "body": data, "more_body": more})

    if path == "/hello":
        seen = {"headers": headers, "http_version": scope["http_version"], "path": path}
        seen["raw_path"] = scope["raw_path"].decode("latin-1")
        seen["query"] = scope["query_string"].decode("latin-1")
        await start(200, [(b"content-type", b"application/json"), (b"x-upstream", b"yes")])
        await body(json.dumps(seen).encode())
    elif path == "/echo":
        await start(200, [(b"content-type", b"application/octet-stream")])
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            data = message.get("body", b"")
            more = message.get("more_body", False)
            if data or not more:
                await body(data, more)
            if not more:
                return
    elif path == "/upload":
        digest, size = hashlib.sha256(), 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            digest.update(message.get("body", b""))
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await start(200, [(b"content-type", b"application/json")])
        await body(json.dumps({"size": size, "sha256": digest.hexdigest()}).encode())
    elif path == "/sse":
        count, every = int(query.get("n", "5")), float(query.get("every", "0.2"))
        await start(200, [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")])
        ACTIVE[0] += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_disconnect, receive, nursery.cancel_scope)
                for i in range(count):
                    event = json.dumps({"i": i, "sent": time.time()})
                    await body(f"data: {event}\n\n".encode(), more=True)
                    await trio.sleep(every)
                await body(b"", more=False)
                nursery.cancel_scope.cancel()
        finally:
            ACTIVE[0] -= 1
    elif path == "/active":
        await start(200, [(b"content-type", b"text/plain")])
        await body(str(ACTIVE[0]).encode())
    elif path == "/trailers":
        wants = any(n == "te" and "trailers" in v for n, v in headers)
        await start(200, [(b"content-type", b"text/plain")], trailers=wants)
        await body(b"part one, ", more=True)
        await body(b"part two")  # with trailers: True, the trailers message follows
        if wants:
            await send(
                {
                    "type": "http.response.trailers",
                    "headers": [(b"x-checksum", b"abc123"), (b"x-count", b"2")],
                    "more_trailers": False,
                }
            )
    elif path.startswith("/status/"):
        code = int(path.rsplit("/", 1)[1])
        await start(code, [(b"content-type", b"text/plain")])
        await body(f"status {code}".encode())
    elif path == "/big":
        size = int(query.get("size", "1048576"))
        await start(200, [(b"content-length", str(size).encode())])
        for i, off in enumerate(range(0, size, 65536)):
            await body(chunk(i, min(65536, size - off)), more=True)
        await body(b"")
    elif path == "/crash":
        await start(200, [(b"content-type", b"text/plain")])
        await body(b"partial ", more=True)
        await trio.sleep(0.2)
        raise RuntimeError("upstream app crashed mid-body (on purpose)")
    elif path == "/quiet":
        await start(200, [(b"content-type", b"text/plain")])
        await body(b"first ", more=True)
        await trio.sleep(3600)
    else:
        await start(404, [(b"content-type", b"text/plain")])
        await body(b"not found upstream")


async def websocket(scope: Scope, receive: Any, send: Any) -> None:
    message = await receive()
    assert message["type"] == "websocket.connect"
    if scope["path"] == "/ws/refuse":
        await send({"type": "websocket.close", "code": 1008})
        return
    offered = scope.get("subprotocols") or []
    accept: dict[str, Any] = {"type": "websocket.accept"}
    if offered:
        accept["subprotocol"] = offered[0]
    await send(accept)
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") == "close":
            await send({"type": "websocket.close", "code": 1000})
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": "echo: " + message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})

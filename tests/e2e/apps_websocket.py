"""WebSocket ASGI apps for tests/e2e/test_websocket.py (in process, or ``python -m ptth`` child).

Paths:

* ``/echo`` accepts (choosing the first offered subprotocol it knows, ``SUBPROTOCOLS``) and
  echoes every message. A text message ``close:CODE:REASON`` makes the app close with that code;
  ``send:N`` makes it send one binary message of N bytes.
* ``/whoami`` accepts, sends the app's name and waits for the user to close.
* ``/deny`` closes before accepting (the user sees 403).
* ``/deny-401`` answers with a ``websocket.http.response`` 401 and a body.
* ``/crash-before`` raises before accepting (500); ``/crash-after`` raises after (close 1011).
* ``/slow-accept`` never answers the handshake (the router's response timeout applies).
* ``/flood?size=N`` accepts and sends N bytes as 1 MiB binary messages, counting what it sent.

Every disconnect event the app receives is kept in ``Recorder.disconnects``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs

import anyio

from ptth.types import ASGIApp, Message, Receive, Scope, Send
from tests.support import serve_lifespan

SUBPROTOCOLS = ("chat.v2", "chat")
FLOOD_CHUNK = 1024 * 1024


@dataclass
class Recorder:
    disconnects: list[Message] = field(default_factory=list)
    open_sessions: int = 0
    max_open_sessions: int = 0
    flood_sent: int = 0
    messages: int = 0


def make_app(name: str = "app", recorder: Recorder | None = None) -> ASGIApp:
    rec = recorder if recorder is not None else Recorder()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "websocket":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"websocket only"})
            return
        connect = await receive()
        assert connect["type"] == "websocket.connect", connect
        rec.open_sessions += 1
        rec.max_open_sessions = max(rec.max_open_sessions, rec.open_sessions)
        try:
            await _route(name, rec, scope, receive, send)
        finally:
            rec.open_sessions -= 1

    return app


async def _route(name: str, rec: Recorder, scope: Scope, receive: Receive, send: Send) -> None:
    path = scope["path"]
    if path == "/deny":
        await send({"type": "websocket.close"})
    elif path == "/deny-401":
        body = b"token required"
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"text/plain"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    elif path == "/crash-before":
        raise RuntimeError("crash before accept")
    elif path == "/slow-accept":
        await anyio.sleep(3600)
    elif path == "/whoami":
        await send({"type": "websocket.accept", "headers": [(b"x-backend", name.encode())]})
        await send({"type": "websocket.send", "text": name})
        rec.disconnects.append(await receive())
    elif path == "/flood":
        size = int(parse_qs(scope["query_string"].decode())["size"][0])
        await send({"type": "websocket.accept"})
        chunk = b"f" * FLOOD_CHUNK
        while rec.flood_sent < size:
            await send({"type": "websocket.send", "bytes": chunk})
            rec.flood_sent += len(chunk)
        rec.disconnects.append(await receive())
    else:
        await _echo(name, rec, scope, receive, send)


async def _echo(name: str, rec: Recorder, scope: Scope, receive: Receive, send: Send) -> None:
    chosen = next((p for p in scope["subprotocols"] if p in SUBPROTOCOLS), None)
    await send(
        {
            "type": "websocket.accept",
            "subprotocol": chosen,
            "headers": [(b"x-backend", name.encode())],
        }
    )
    if scope["path"] == "/crash-after":
        raise RuntimeError("crash after accept")
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            rec.disconnects.append(message)
            return
        rec.messages += 1
        text = message.get("text")
        if text is not None and text.startswith("close:"):
            _, code, reason = text.split(":", 2)
            await send({"type": "websocket.close", "code": int(code), "reason": reason})
            rec.disconnects.append(await receive())
            return
        if text is not None and text.startswith("send:"):
            await send({"type": "websocket.send", "bytes": b"s" * int(text[5:])})
        elif text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


app = make_app("child")

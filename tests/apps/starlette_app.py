"""A Starlette app: a paced ``StreamingResponse`` and a WebSocket endpoint.

* ``GET /stream?n=N&interval=S`` -> N lines, one every S seconds (``asyncio.sleep`` between
  them); each line is ``"<index> <time.time() when produced>\\n"``.
* ``WS /ws`` -> on connect sends ``{"hello": NAME}`` as JSON (``?name=``, default ``"anon"``),
  then echoes JSON messages with ``"echo": true`` added; ``{"close": CODE}`` closes with that code.
* ``GET /loop`` -> ``"module.Class id=N"``: the running loop's class and ``id()``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


async def stream(request: Request) -> StreamingResponse:
    n = int(request.query_params.get("n", "5"))
    interval = float(request.query_params.get("interval", "0.05"))

    async def lines() -> AsyncIterator[bytes]:
        for i in range(n):
            if i:
                await asyncio.sleep(interval)
            yield f"{i} {time.time():.6f}\n".encode()

    return StreamingResponse(lines(), media_type="text/plain", headers={"X-Chunks": str(n)})


async def which_loop(request: Request) -> PlainTextResponse:
    loop = asyncio.get_running_loop()
    kind = type(loop)
    return PlainTextResponse(f"{kind.__module__}.{kind.__qualname__} id={id(loop)}")


async def ws(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"hello": websocket.query_params.get("name", "anon")})
    try:
        while True:
            data = await websocket.receive_json()
            if "close" in data:
                await websocket.close(code=int(data["close"]), reason="asked to close")
                return
            await websocket.send_json({**data, "echo": True})
    except WebSocketDisconnect:
        return


app = Starlette(
    routes=[
        Route("/stream", stream),
        Route("/loop", which_loop),
        WebSocketRoute("/ws", ws),
    ]
)

"""A FastAPI app that leans on asyncio: ``asyncio.sleep``, ``run_in_executor``, ``gather``.

* ``GET /loop`` -> ``{"loop": "module.Class"}`` of the running event loop.
* ``GET /sleep?delay=S`` -> sleeps S seconds with ``asyncio.sleep``.
* ``GET /executor?n=N`` -> sha256 of N zero bytes computed by ``loop.run_in_executor`` in the
  default thread pool, and the worker thread's name.
* ``GET /gather?count=C&delay=S`` -> C concurrent ``asyncio.sleep(S)`` via ``asyncio.gather``,
  and how long they took together.
* ``WS /ws`` -> sends ``"ready"``, then echoes text and bytes; ``"bye"`` closes with 4000.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

app = FastAPI()


def loop_name() -> str:
    loop = type(asyncio.get_running_loop())
    return f"{loop.__module__}.{loop.__qualname__}"


@app.get("/loop")
async def which_loop() -> dict[str, str]:
    return {"loop": loop_name()}


@app.get("/sleep")
async def sleep(delay: float = 0.1) -> dict[str, float]:
    start = time.monotonic()
    await asyncio.sleep(delay)
    return {"slept": time.monotonic() - start}


def _blocking_digest(n: int) -> tuple[str, str]:
    time.sleep(0.05)  # genuinely blocking: it must not run on the event loop's thread
    return hashlib.sha256(bytes(n)).hexdigest(), threading.current_thread().name


@app.get("/executor")
async def executor(n: int = 1024) -> dict[str, str | bool]:
    loop = asyncio.get_running_loop()
    digest, thread = await loop.run_in_executor(None, _blocking_digest, n)
    return {
        "sha256": digest,
        "thread": thread,
        "off_loop_thread": thread != threading.current_thread().name,
    }


@app.get("/gather")
async def gather(count: int = 5, delay: float = 0.2) -> dict[str, float | list[int]]:
    async def one(i: int) -> int:
        await asyncio.sleep(delay)
        return i * i

    start = time.monotonic()
    results = await asyncio.gather(*(one(i) for i in range(count)))
    return {"results": list(results), "elapsed": time.monotonic() - start}


@app.websocket("/ws")
async def ws_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("ready")
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") == "bye":
                await websocket.close(code=4000, reason="bye from fastapi")
                return
            if message.get("text") is not None:
                await websocket.send_text(message["text"])
            else:
                await websocket.send_bytes(message["bytes"])
    except WebSocketDisconnect:
        return

"""A Quart app (asyncio-native Flask API): ``GET /hello``, ``POST /json``, lifespan hooks.

``POST /json`` takes ``{"numbers": [...], "name": "..."}`` and answers their sum and count.
``before_serving`` runs at lifespan startup; ``GET /hello`` reports whether it ran.
"""

from __future__ import annotations

import asyncio
from typing import Any

from quart import Quart, request

app = Quart(__name__)
state: dict[str, Any] = {"started": False}


@app.before_serving
async def startup() -> None:
    await asyncio.sleep(0)
    state["started"] = True


@app.get("/hello")
async def hello() -> tuple[str, int, dict[str, str]]:
    await asyncio.sleep(0.01)
    return (
        "hello from quart\n",
        200,
        {"Content-Type": "text/plain", "X-Started": str(state["started"]).lower()},
    )


@app.post("/json")
async def json_endpoint() -> tuple[dict[str, Any], int]:
    data = await request.get_json()
    if not isinstance(data, dict) or not isinstance(data.get("numbers"), list):
        return {"error": "expected {'numbers': [...]}"}, 400
    numbers = data["numbers"]
    return {"name": data.get("name"), "count": len(numbers), "sum": sum(numbers)}, 201

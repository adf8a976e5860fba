"""A Flask (WSGI) app served as ASGI through ``a2wsgi.WSGIMiddleware``.

a2wsgi runs the WSGI app in a thread pool driven from the running asyncio loop.

* ``GET /hello`` -> text; ``GET /missing`` -> Flask's 404.
* ``POST /echo`` -> the request body, byte for byte, same content type.
* ``POST /digest`` -> JSON ``{"length": ..., "sha256": ..., "sum": ...}`` of the body
  (``sum`` is the sum of its bytes).
"""

from __future__ import annotations

import hashlib
import threading

from a2wsgi import WSGIMiddleware
from flask import Flask, Response, jsonify, request

flask_app = Flask(__name__)


@flask_app.get("/hello")
def hello() -> Response:
    return Response(
        f"hello from flask in {threading.current_thread().name}\n", content_type="text/plain"
    )


@flask_app.post("/echo")
def echo() -> Response:
    body = request.get_data(cache=False)
    return Response(body, content_type=request.content_type or "application/octet-stream")


@flask_app.post("/digest")
def digest() -> Response:
    body = request.get_data(cache=False)
    return jsonify(length=len(body), sha256=hashlib.sha256(body).hexdigest(), sum=sum(body))


app = WSGIMiddleware(flask_app)

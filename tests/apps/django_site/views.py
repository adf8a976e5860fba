"""Views: an async one (runs on the server's asyncio loop), a sync one (asgiref runs it in a
thread from that loop), and a CSRF-protected POST."""

from __future__ import annotations

import asyncio
import threading

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import get_token


async def hello(request: HttpRequest) -> HttpResponse:
    await asyncio.sleep(0.01)
    loop = type(asyncio.get_running_loop())
    response = HttpResponse(f"hello from django on {request.path}\n", content_type="text/plain")
    response["X-Loop"] = f"{loop.__module__}.{loop.__qualname__}"
    return response


def sync_view(request: HttpRequest) -> HttpResponse:
    """A plain sync view: Django's ASGI handler runs it in a worker thread."""
    return HttpResponse(
        f"sync view in thread {threading.current_thread().name}\n", content_type="text/plain"
    )


def token(request: HttpRequest) -> JsonResponse:
    """GET: the CSRF token (also set as the csrftoken cookie)."""
    return JsonResponse({"token": get_token(request)})


def submit(request: HttpRequest) -> HttpResponse:
    """POST only, CSRF-protected (the middleware answers 403 without a valid token)."""
    if request.method != "POST":
        return HttpResponse(status=405, headers={"Allow": "POST"})
    return HttpResponse(
        f"accepted {len(request.body)} bytes: {request.POST.get('name', '')}\n",
        content_type="text/plain",
    )

"""Real-framework apps for tests/e2e/test_path_prefix.py (in process, or ``python -m ptth``).

Each app routes ``/count`` (named ``count``) and ``/`` (named ``home``) and answers JSON with what
it saw: the framework's view of the path, the ASGI ``path``/``root_path``, the user-facing URL the
framework builds for ``count`` and the X-Forwarded-Prefix header. ``starlette_app`` also has a
WebSocket route ``/ws`` that sends the same as its first message.

* ``starlette_app``: Starlette routes on ``get_route_path`` (``path`` minus ``root_path``) and
  ``request.url_for`` builds on ``root_path``. Plain async routes: they run on trio too (anyio).
* ``django_app`` (built on first access: Django's settings are process-wide): Django's
  ``ASGIHandler`` routes on ``path_info`` (``path`` minus ``root_path``) and ``reverse()``
  prefixes ``root_path`` (the script prefix). It is asyncio-only (``asyncio.create_task``,
  ``asyncio.wait``): serve it with ``python -m ptth ... --loop asyncio``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import path, reverse
from starlette._utils import get_route_path
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

# -- Starlette -------------------------------------------------------------------------------


def _starlette_seen(conn: HTTPConnection, view: str) -> dict[str, Any]:
    return {
        "framework": "starlette",
        "view": view,
        "path": conn.scope["path"],
        "raw_path": conn.scope["raw_path"].decode("latin-1"),
        "root_path": conn.scope["root_path"],
        "route_path": get_route_path(conn.scope),
        "query": conn.url.query,
        "url": str(conn.url),
        "count_url": str(conn.url_for("count")),
        "home_url": str(conn.url_for("home")),
        "forwarded_prefix": conn.headers.getlist("x-forwarded-prefix"),
    }


async def _starlette_count(request: Request) -> JSONResponse:
    return JSONResponse(_starlette_seen(request, "count"))


async def _starlette_home(request: Request) -> JSONResponse:
    return JSONResponse(_starlette_seen(request, "home"))


async def _starlette_ws(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json(_starlette_seen(websocket, "ws"))
    await websocket.close()


starlette_app = Starlette(
    routes=[
        Route("/", _starlette_home, name="home"),
        Route("/count", _starlette_count, name="count"),
        WebSocketRoute("/ws", _starlette_ws, name="ws"),
    ]
)

# -- Django ----------------------------------------------------------------------------------


def _django_seen(request: HttpRequest, view: str) -> JsonResponse:
    return JsonResponse(
        {
            "framework": "django",
            "view": view,
            "path": request.path,
            "path_info": request.path_info,
            "script_name": request.META["SCRIPT_NAME"],
            "query": request.META["QUERY_STRING"],
            "count_url": request.build_absolute_uri(reverse("count")),
            "home_url": request.build_absolute_uri(reverse("home")),
            "forwarded_prefix": request.headers.get("x-forwarded-prefix"),
        }
    )


async def _django_count(request: HttpRequest) -> JsonResponse:
    return _django_seen(request, "count")


async def _django_home(request: HttpRequest) -> JsonResponse:
    return _django_seen(request, "home")


urlpatterns = [path("count", _django_count, name="count"), path("", _django_home, name="home")]


def make_django_app() -> Any:
    """Django's real ASGI handler; settings are process-wide, so configured once."""
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="ptth-tests-only",
            ALLOWED_HOSTS=["127.0.0.1"],
            ROOT_URLCONF=__name__,
            MIDDLEWARE=[],
            INSTALLED_APPS=[],
            DATABASES={},
        )
    from django.core.asgi import get_asgi_application

    return get_asgi_application()


_django: list[Any] = []


def __getattr__(name: str) -> Any:
    """``django_app``, configured on first access (importing this module configures nothing)."""
    if name == "django_app":
        if not _django:
            _django.append(make_django_app())
        return _django[0]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

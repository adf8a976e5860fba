"""Small apps on real frameworks (Django, Flask via a2wsgi, Quart, FastAPI, Starlette).

Each is served through a real router by ``tests/e2e/test_frameworks.py``, with the backend
helper as a child process: ``python -m ptth tests.apps.X:app --router HOST:PORT --loop asyncio``.
They can also be served directly, to check them without the router:
``python -m uvicorn tests.apps.fastapi_app:app --port 8000``.
"""

"""ASGI app run by ``python -m ptth`` in tests/e2e/test_identities.py: it names itself
(``PTTH_TEST_NAME``) in ``X-Backend``, so a test sees which backend a request reached."""

from __future__ import annotations

import os

from tests.support import make_hello_app

app = make_hello_app(os.environ.get("PTTH_TEST_NAME", "unnamed"))

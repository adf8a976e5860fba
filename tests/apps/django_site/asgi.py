"""``app``: the Django ASGI application (``tests.apps.django_site.asgi:app``)."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.apps.django_site.settings")

app = get_asgi_application()

"""Settings for the test project: DEBUG off (the real 404 and 403 pages), no database."""

from __future__ import annotations

SECRET_KEY = "ptth-tests-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "tests.apps.django_site.urls"
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
TEMPLATES: list[dict[str, object]] = []
USE_TZ = True
LOGGING_CONFIG = None

"""A minimal Django ASGI project: no database, no migrations, no installed apps.

Serve it as ``tests.apps.django_site.asgi:app``.
"""

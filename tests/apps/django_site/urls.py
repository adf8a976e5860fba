from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("hello", views.hello),
    path("sync", views.sync_view),
    path("token", views.token),
    path("submit", views.submit),
]

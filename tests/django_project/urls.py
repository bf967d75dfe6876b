from __future__ import annotations

from django.urls import include, path

from tests.django_project import views

urlpatterns = [
    path("refresherd/", include("refresherd.contrib.django.urls")),
    path("page/<int:user_id>/", views.page, name="page"),
]

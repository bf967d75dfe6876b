from __future__ import annotations

from django.apps import AppConfig


class DjangoProjectConfig(AppConfig):
    name = "tests.django_project"
    label = "django_project"

    def ready(self) -> None:
        from refresherd.contrib.django import refresh_tags_on_change
        from tests.django_project.models import Profile

        # Every value built from a profile is tagged user:{its pk} in refresherd.
        refresh_tags_on_change(Profile, tags=["user:{pk}"])

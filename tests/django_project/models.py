from __future__ import annotations

from django.db import models


class Profile(models.Model):
    name = models.CharField(max_length=100)
    bio = models.TextField(blank=True)

    class Meta:
        app_label = "django_project"

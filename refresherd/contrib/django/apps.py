"""The Django application C{refresherd.contrib.django} (label C{refresherd})."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core import checks
from django.utils.module_loading import autodiscover_modules


class RefresherdConfig(AppConfig):
    name = "refresherd.contrib.django"
    label = "refresherd"
    verbose_name = "refresherd"

    def ready(self) -> None:
        # The settings' signal receiver, and the application's registered callbacks.
        from refresherd.contrib.django import conf  # noqa: F401

        autodiscover_modules("refreshers")
        checks.register(check_settings)


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """A system check: C{settings.REFRESHERD} is valid."""
    from django.core.exceptions import ImproperlyConfigured

    from refresherd.contrib.django.conf import load_settings

    try:
        load_settings()
    except ImproperlyConfigured as e:
        return [checks.Error(str(e), id="refresherd.E001")]
    return []

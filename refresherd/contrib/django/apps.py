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
        checks.register(check_nonce_cache)


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """A system check: C{settings.REFRESHERD} is valid."""
    from django.core.exceptions import ImproperlyConfigured

    from refresherd.contrib.django.conf import load_settings

    try:
        load_settings()
    except ImproperlyConfigured as e:
        return [checks.Error(str(e), id="refresherd.E001")]
    return []


def check_nonce_cache(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """
    A system check: the cache that remembers the callbacks' nonces protects
    them from replays in every process.  Only with C{SECRET} set (no callback
    is accepted without it).
    """
    from django.core.cache import InvalidCacheBackendError, caches
    from django.core.cache.backends.dummy import DummyCache
    from django.core.cache.backends.locmem import LocMemCache
    from django.core.exceptions import ImproperlyConfigured

    from refresherd.contrib.django.conf import load_settings
    from refresherd.contrib.signing import WINDOW

    try:
        configured = load_settings()
    except ImproperlyConfigured:
        return []  # refresherd.E001 says why
    if not configured.secrets:
        return []
    alias = configured.nonce_cache
    where = f"REFRESHERD['NONCE_CACHE'] ({alias!r})"
    try:
        cache = caches[alias]
    except InvalidCacheBackendError as e:
        return [checks.Error(f"{where} is not a usable cache: {e}", id="refresherd.E002")]
    shared = "use a cache every process of the site shares (Redis, Memcached, the database)"
    if isinstance(cache, DummyCache):
        return [
            checks.Error(
                f"{where} is a DummyCache, which remembers nothing: a signed callback can be "
                f"replayed any number of times within its {WINDOW} s window",
                hint=shared,
                id="refresherd.E003",
            )
        ]
    if isinstance(cache, LocMemCache):
        return [
            checks.Warning(
                f"{where} is a LocMemCache, kept by each process alone: a signed callback can "
                "be replayed once to every other process (and after a restart) within its "
                f"{WINDOW} s window",
                hint=shared + "; one process alone, as runserver, is protected",
                id="refresherd.W001",
            )
        ]
    return []

"""
C{settings.REFRESHERD}, and the one L{Client} (and L{AsyncClient}) of the process built on it.

    REFRESHERD = {
        "URL": "http://127.0.0.1:8080",      # public listener
        "ADMIN_URL": "http://127.0.0.1:8081",# admin listener: purges
        "TOKEN": "...",                      # a write token (reads, PUT, purges of keys and tags)
        "TIMEOUT": 10.0,                     # seconds per request
        "CONNECT_TIMEOUT": None,             # seconds to connect (default: TIMEOUT)
        "SECRET": "...",                     # the `sign` secret of the callback jobs (or a list)
        "NONCE_CACHE": "default",            # the cache alias that remembers the nonces seen
        "CIRCUIT_FAILURES": 3,               # failures in a row that open the circuit (0: never)
        "CIRCUIT_COOLDOWN": 5.0,             # seconds the open circuit fails at once
        "TRUSTED_HTML_JOBS": [],             # jobs whose raw body the tag inserts as HTML
        "REDIS_URL": None,                   # the service's Redis: fresh hits read there
    }

Every key is optional; an unknown key, or a value of the wrong kind, is
C{ImproperlyConfigured} (and an error of C{manage.py check}).  The client is
built on first use and rebuilt when the setting changes (Django's
C{setting_changed} signal, sent by C{override_settings} in tests).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import attrs
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

from refresherd.client import (
    DEFAULT_ADMIN_URL,
    DEFAULT_CIRCUIT_COOLDOWN,
    DEFAULT_CIRCUIT_FAILURES,
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    AsyncClient,
    Client,
)

SETTING = "REFRESHERD"
KEYS = (
    "URL",
    "ADMIN_URL",
    "TOKEN",
    "TIMEOUT",
    "CONNECT_TIMEOUT",
    "SECRET",
    "NONCE_CACHE",
    "CIRCUIT_FAILURES",
    "CIRCUIT_COOLDOWN",
    "TRUSTED_HTML_JOBS",
    "REDIS_URL",
)


@attrs.frozen
class RefresherdSettings:
    """C{settings.REFRESHERD}, checked."""

    url: str = DEFAULT_URL
    admin_url: str = DEFAULT_ADMIN_URL
    token: str | None = attrs.field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float | None = None
    secrets: tuple[str, ...] = attrs.field(default=(), repr=False)
    nonce_cache: str = "default"
    circuit_failures: int = DEFAULT_CIRCUIT_FAILURES
    circuit_cooldown: float = DEFAULT_CIRCUIT_COOLDOWN
    trusted_html_jobs: frozenset[str] = frozenset()
    """The jobs whose raw body the C{refreshed} tag inserts as HTML, unescaped."""
    redis_url: str | None = attrs.field(default=None, repr=False)
    """The Redis the service stores in: fresh hits are read there (direct reads)."""

    def client(self) -> Client:
        """A new client on these settings."""
        return Client(**self._client_options())

    def async_client(self) -> AsyncClient:
        """A new async client on these settings."""
        return AsyncClient(**self._client_options())

    def _client_options(self) -> dict[str, Any]:
        return dict(
            url=self.url,
            admin_url=self.admin_url,
            token=self.token,
            timeout=self.timeout,
            connect_timeout=self.connect_timeout,
            circuit_failures=self.circuit_failures,
            circuit_cooldown=self.circuit_cooldown,
            redis_url=self.redis_url,
        )


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ImproperlyConfigured(f"{SETTING}[{name!r}] must be a positive number of seconds")
    return float(value)


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ImproperlyConfigured(f"{SETTING}[{name!r}] must be a non-empty string")
    return value


def load_settings() -> RefresherdSettings:
    """C{settings.REFRESHERD} checked, or C{ImproperlyConfigured} saying what is wrong."""
    given = getattr(settings, SETTING, None) or {}
    if not isinstance(given, Mapping):
        raise ImproperlyConfigured(f"settings.{SETTING} must be a dict")
    unknown = sorted(str(key) for key in set(given) - set(KEYS))
    if unknown:
        raise ImproperlyConfigured(
            f"settings.{SETTING} has an unknown key {unknown[0]!r}; the keys are {', '.join(KEYS)}"
        )
    values: dict[str, Any] = {}
    for name in ("URL", "ADMIN_URL", "NONCE_CACHE", "REDIS_URL"):
        if given.get(name) is not None:
            values[name.lower()] = _string(name, given[name])
    if given.get("TOKEN") is not None:
        values["token"] = _string("TOKEN", given["TOKEN"])
    for name in ("TIMEOUT", "CONNECT_TIMEOUT", "CIRCUIT_COOLDOWN"):
        if given.get(name) is not None:
            values[name.lower()] = _seconds(name, given[name])
    failures = given.get("CIRCUIT_FAILURES")
    if failures is not None:
        if isinstance(failures, bool) or not isinstance(failures, int) or failures < 0:
            raise ImproperlyConfigured(
                f"{SETTING}['CIRCUIT_FAILURES'] must be an integer, 0 or more"
            )
        values["circuit_failures"] = failures
    secret = given.get("SECRET")
    if secret is not None:
        secrets = [secret] if isinstance(secret, str) else secret
        if not isinstance(secrets, list | tuple) or not secrets:
            raise ImproperlyConfigured(f"{SETTING}['SECRET'] must be a string or a list of them")
        values["secrets"] = tuple(_string("SECRET", s) for s in secrets)
    trusted = given.get("TRUSTED_HTML_JOBS")
    if trusted is not None:
        if not isinstance(trusted, list | tuple | set | frozenset) or not all(
            isinstance(job, str) and job for job in trusted
        ):
            raise ImproperlyConfigured(
                f"{SETTING}['TRUSTED_HTML_JOBS'] must be a list of job names, such as [\"sidebar\"]"
            )
        values["trusted_html_jobs"] = frozenset(trusted)
    result = RefresherdSettings(**values)
    try:
        # The client checks its URLs and token; never the token in the message.
        result.client().close()
    except (ValueError, ImportError) as e:
        raise ImproperlyConfigured(f"settings.{SETTING}: {e}") from None
    return result


_lock = threading.Lock()
_settings: RefresherdSettings | None = None
_client: Client | None = None
_async_client: AsyncClient | None = None


def get_settings() -> RefresherdSettings:
    """C{settings.REFRESHERD}, checked once per process (and again when it changes)."""
    global _settings
    with _lock:
        if _settings is None:
            _settings = load_settings()
        return _settings


def get_client() -> Client:
    """The process's client on C{settings.REFRESHERD}; thread-safe, pooled, built once."""
    global _settings, _client
    with _lock:
        if _settings is None:
            _settings = load_settings()
        if _client is None:
            _client = _settings.client()
        return _client


def get_async_client() -> AsyncClient:
    """The process's L{AsyncClient} on C{settings.REFRESHERD}; built once, for every event loop."""
    global _settings, _async_client
    with _lock:
        if _settings is None:
            _settings = load_settings()
        if _async_client is None:
            _async_client = _settings.async_client()
        return _async_client


def reset() -> None:
    """
    Forget the settings and close the client (the async client is forgotten:
    its connections belong to their event loops): the next use reads
    C{settings.REFRESHERD} anew.
    """
    global _settings, _client, _async_client
    with _lock:
        client, _client, _settings, _async_client = _client, None, None, None
    if client is not None:
        client.close()


@receiver(setting_changed, dispatch_uid="refresherd.contrib.django.conf")
def _setting_changed(setting: str, **kwargs: Any) -> None:
    if setting == SETTING:
        reset()

"""
The application's own functions that refresherd calls back, by name.

    # myapp/refreshers.py (imported at start-up, like admin.py)
    from refresherd.contrib.django import callback

    @callback("sidebar", content_type="text/html; charset=utf-8")
    def sidebar(user_id: str) -> str:
        return render_to_string("sidebar.html", {"user": User.objects.get(pk=user_id)})

with, in refresherd's configuration,

    [jobs.sidebar]
    args = ["user_id"]
    url = "https://app.example/refresherd/sidebar?user_id={user_id}"
    sign = "env:RFD_SECRET"
    fresh = "10m"

A function is called with the query arguments of the call as keyword
arguments (strings).  It returns the value: a C{str} (C{text/plain;
charset=utf-8} unless its registration names another content type, such as
C{text/html; charset=utf-8} for a snippet), C{bytes}
(C{application/octet-stream} unless named), an C{HttpResponse} sent as it
is, or anything else, which is sent as JSON (C{DjangoJSONEncoder}: dates,
decimals and UUIDs too; a queryset as a list, so C{.values()} querysets work
as they are).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import attrs

NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What a callback may be named: what a job may be named."""

F = TypeVar("F", bound=Callable[..., Any])


@attrs.frozen
class Callback:
    """A registered function: its C{name} in the callback URL and the content type of its text."""

    name: str
    function: Callable[..., Any]
    content_type: str | None = None


_lock = threading.Lock()
_registry: dict[str, Callback] = {}


def _same(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    """The same function, or the same one defined again (a module imported twice)."""
    return a is b or (
        getattr(a, "__module__", None) == getattr(b, "__module__", object())
        and getattr(a, "__qualname__", None) == getattr(b, "__qualname__", object())
    )


def register(
    name: str, function: Callable[..., Any], *, content_type: str | None = None
) -> Callback:
    """
    Register C{function} under C{name}.  Another function already registered
    under that name is a L{ValueError} (the same one, imported again, replaces
    it).
    """
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(f"a callback name is 1 to 64 of A-Z a-z 0-9 _ -, not {name!r}")
    if not callable(function):
        raise TypeError("a callback is a function")
    if content_type is not None and (not content_type or not content_type.isprintable()):
        raise ValueError("a content type is one line of printable text")
    registration = Callback(name, function, content_type)
    with _lock:
        existing = _registry.get(name)
        if existing is not None and not _same(existing.function, function):
            raise ValueError(f"another function is already registered as callback {name!r}")
        _registry[name] = registration
    return registration


def callback(name: str | None = None, *, content_type: str | None = None) -> Callable[[F], F]:
    """
    A decorator registering a function as the callback C{name} (default: the
    function's own name); C{content_type} is that of the text or bytes it
    returns.
    """

    def decorate(function: F) -> F:
        register(name or function.__name__, function, content_type=content_type)
        return function

    return decorate


def unregister(name: str) -> None:
    """Forget the callback C{name}, if there is one."""
    with _lock:
        _registry.pop(name, None)


def registered(name: str) -> Callback | None:
    """The callback registered as C{name}, if any."""
    with _lock:
        return _registry.get(name)


def registrations() -> dict[str, Callback]:
    """Every registered callback, by name."""
    with _lock:
        return dict(_registry)

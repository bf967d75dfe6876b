"""The test project's callbacks; C{CALLS} counts how often refresherd called each."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from django.template.loader import render_to_string

from refresherd.contrib.django import callback
from tests.django_project.models import Profile

CALLS: Counter[str] = Counter()
_lock = threading.Lock()


def _called(name: str) -> None:
    with _lock:
        CALLS[name] += 1


@callback("sidebar", content_type="text/html; charset=utf-8")
def sidebar(user_id: str) -> str:
    _called("sidebar")
    profile = Profile.objects.filter(pk=int(user_id)).first()
    html: str = render_to_string("django_project/sidebar.html", {"profile": profile})
    return html


@callback("echo")
def echo(q: str, lang: str = "en") -> dict[str, str]:
    _called("echo")
    return {"q": q, "lang": lang}


@callback("names")
def names() -> Any:
    _called("names")
    return Profile.objects.order_by("pk").values("pk", "name")


@callback("blob")
def blob(n: str) -> bytes:
    _called("blob")
    return bytes(range(256))[: int(n)]

"""
The view refresherd calls back for a C{fetch = "http"} job with C{sign}:
mount it with C{path("refresherd/", include("refresherd.contrib.django.urls"))}
and point the job's C{url} at C{https://app.example/refresherd/NAME?arg={arg}}.

Each call is checked (L{refresherd.contrib.signing}; docs/configuration.md,
"Signed requests (`sign`)"): a signature over the request target exactly as
sent, made with C{REFRESHERD["SECRET"]}, whose C{t} is within 300 s of the
application's clock and whose nonce was not seen before (nonces are kept in
the cache C{REFRESHERD["NONCE_CACHE"]} with C{cache.add}, so that every
process of the application sees them: use a cache that they share, as the
system checks of L{refresherd.contrib.django.apps} say).  A bad, stale or
replayed signature is 403; then an unregistered name is 404; then the
registered function runs with the query arguments as keyword arguments (and,
for a C{method = "POST"} job, the members of its JSON object body), and its
result is the answer (L{refresherd.contrib.django.callbacks}).  Arguments
the function does not take are 400.

Which request target: the raw one when the server passes it
(C{RAW_URI} from gunicorn, C{REQUEST_URI} from uWSGI and mod_wsgi, the ASGI
C{raw_path}); else, as with Django's development server, it is rebuilt from
the decoded path and the raw query string.  The query is always exact; a
rebuilt path is exact for paths of names and C{/} (which is why the
arguments belong in the query of the job's URL, not in its path).
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from typing import Any
from urllib.parse import quote, urlsplit

from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models.query import QuerySet
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseForbidden,
    HttpResponseNotAllowed,
    HttpResponseNotFound,
)
from django.utils.cache import patch_cache_control
from django.views.decorators.csrf import csrf_exempt

from refresherd.contrib.django.callbacks import Callback, registered
from refresherd.contrib.django.conf import get_settings
from refresherd.contrib.signing import (
    SIGNATURE_HEADER,
    WINDOW,
    BadSignature,
    check_signature,
)

logger = logging.getLogger("refresherd.contrib.django")

_PATH_SAFE = "/!$&'()*+,;=:@~"
"""The characters of a path that are never percent-encoded in what refresherd sends (RFC 3986)."""
NONCE_PREFIX = "refresherd-nonce:"


class _JSONEncoder(DjangoJSONEncoder):
    def default(self, o: Any) -> Any:
        if isinstance(o, QuerySet):
            return list(o)
        return super().default(o)


def _origin_form(target: str) -> str:
    """The path and query of a request target that may be in absolute form."""
    if target.startswith("/"):
        return target
    parts = urlsplit(target)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def request_target(request: HttpRequest) -> str:
    """The path and query of C{request} as the client sent them, percent-encoding included."""
    meta = request.META
    for name in ("RAW_URI", "REQUEST_URI"):
        raw = meta.get(name)
        if isinstance(raw, str) and raw:
            return _origin_form(raw)
    scope = getattr(request, "scope", None)
    if isinstance(scope, dict) and scope.get("raw_path"):
        path = scope["raw_path"].decode("latin-1")
        query = (scope.get("query_string") or b"").decode("latin-1")
    else:
        # Django decodes the path (as UTF-8); the query string stays as it came.
        path = quote(request.path.encode("utf-8"), safe=_PATH_SAFE)
        query = meta.get("QUERY_STRING", "")
    return path + (f"?{query}" if query else "")


def _remember(alias: str) -> Any:
    cache = caches[alias]

    def remember(nonce: str, t: int) -> bool:
        # Kept for longer than any t that can still be accepted.
        return bool(cache.add(NONCE_PREFIX + nonce, t, timeout=2 * WINDOW + 1))

    return remember


def verify(request: HttpRequest) -> None:
    """Raise L{BadSignature} unless C{request} carries a good, fresh, unseen signature."""
    configured = get_settings()
    if not configured.secrets:
        raise ImproperlyConfigured(
            "REFRESHERD['SECRET'] is not set: refresherd's callbacks cannot be checked"
        )
    check_signature(
        configured.secrets,
        request.headers.get(SIGNATURE_HEADER),
        request.method or "GET",
        request_target(request),
        request.body,
        _remember(configured.nonce_cache),
        now=time.time(),
    )


def _arguments(request: HttpRequest) -> dict[str, Any]:
    """The query arguments, and for a POST the members of its JSON object body."""
    arguments: dict[str, Any] = {}
    for name in request.GET:
        values = request.GET.getlist(name)
        if len(values) != 1:
            raise ValueError(f"argument {name!r} is repeated")
        arguments[name] = values[0]
    if request.method == "POST" and request.body:
        try:
            document = json.loads(request.body)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise ValueError("a POST body must be a JSON object")
        for name, value in document.items():
            if name in arguments:
                raise ValueError(f"argument {name!r} is both in the query and in the body")
            arguments[name] = value
    return arguments


def render(registration: Callback, result: Any) -> HttpResponse:
    """The answer carrying a callback's result."""
    if isinstance(result, HttpResponse):
        return result
    if isinstance(result, str):
        return HttpResponse(
            result.encode("utf-8"),
            content_type=registration.content_type or "text/plain; charset=utf-8",
        )
    if isinstance(result, bytes | bytearray | memoryview):
        return HttpResponse(
            bytes(result), content_type=registration.content_type or "application/octet-stream"
        )
    body = json.dumps(result, cls=_JSONEncoder, allow_nan=False, ensure_ascii=False)
    return HttpResponse(
        body.encode("utf-8"), content_type=registration.content_type or "application/json"
    )


@csrf_exempt
def callback_view(request: HttpRequest, name: str) -> HttpResponse:
    """Run the callback C{name} for a signed call of refresherd."""
    if request.method not in ("GET", "POST"):
        return HttpResponseNotAllowed(["GET", "POST"])
    try:
        verify(request)
    except BadSignature as e:
        logger.warning("refresherd callback %r refused: %s", name, e.reason)
        return HttpResponseForbidden(
            b"refused: a bad, stale or replayed signature", content_type="text/plain"
        )
    registration = registered(name)
    if registration is None:
        return HttpResponseNotFound(b"no such callback", content_type="text/plain")
    try:
        arguments = _arguments(request)
        inspect.signature(registration.function).bind(**arguments)
    except (TypeError, ValueError) as e:
        return HttpResponseBadRequest(
            f"callback {name!r}: {e}".encode(), content_type="text/plain; charset=utf-8"
        )
    response = render(registration, registration.function(**arguments))
    patch_cache_control(response, no_store=True)
    return response

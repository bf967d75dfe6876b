"""
What the two HTTP faces (L{refresherd.http.public}, L{refresherd.http.admin}) share: the
error object, the JSON of a stored value, request timing, and the handlers
Klein calls for errors, unknown routes and methods.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request
from werkzeug.exceptions import MethodNotAllowed as RouteMethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound
from werkzeug.routing import RequestRedirect

from refresherd import logs
from refresherd.entry import Entry, is_json_content_type
from refresherd.errors import BadArgs, MethodNotAllowed, NotFound, RefresherdError, Unauthorized
from refresherd.http.site import LimitedRequest
from refresherd.http.wire import QuickRequest
from refresherd.metrics import Metrics

JSON = b"application/json"
UNMATCHED = "_unmatched"
"""The route label of requests that match no route."""


class _Guarded(Resource):
    """
    A Klein app's resource behind the checks Klein would answer with a bare
    HTML 400 and a logged traceback: a path or host name that is not UTF-8
    once percent-decoded gets the JSON C{bad_args} object instead.
    """

    isLeaf = True

    def __init__(self, inner: IResource) -> None:
        super().__init__()
        self.inner = inner

    def render(self, request: IRequest) -> Any:
        try:
            b"/".join(request.prepath + request.postpath).decode("utf-8")
            request.getRequestHostname().decode("utf-8")
        except UnicodeDecodeError:
            return render_error(request, BadArgs("the path and host must be UTF-8"))
        return self.inner.render(request)


def guarded(resource: IResource) -> IResource:
    """C{resource}, a Klein app's, answering URLs that are not UTF-8 with the error object."""
    return _Guarded(resource)


def header(request: IRequest, name: bytes) -> bytes | None:
    value: bytes | str | None = request.getHeader(name)
    return value.encode("latin-1") if isinstance(value, str) else value


def query(request: IRequest) -> bytes:
    """The query string of C{request}'s URI, undecoded (empty without one)."""
    uri: bytes = request.uri
    return uri.partition(b"?")[2]


def render_error(request: IRequest, error: RefresherdError) -> bytes:
    """The error object (docs/README.md, "Errors"), with its status and headers."""
    request.setResponseCode(error.status)
    request.setHeader(b"Content-Type", JSON)
    if isinstance(error, Unauthorized):
        request.setHeader(b"WWW-Authenticate", b"Bearer")
    return json.dumps(error.to_json()).encode("utf-8")


def with_value(head: dict[str, Any], entry: Entry) -> bytes:
    """
    The JSON object C{head} with the stored value of C{entry} added: C{value}
    spliced in as stored when its content type is JSON, else as text, or
    C{value_b64} when the body is not UTF-8.
    """
    return json.dumps(head).encode("utf-8")[:-1] + b"," + value_member(entry) + b"}"


def value_member(entry: Entry) -> bytes:
    """The member of L{with_value}'s object that holds the stored value of C{entry}."""
    body = entry.body or b""
    if is_json_content_type(entry.content_type):
        return b'"value":' + body
    try:
        return b'"value":' + json.dumps(body.decode("utf-8")).encode("utf-8")
    except UnicodeDecodeError:
        return b'"value_b64":' + json.dumps(base64.b64encode(body).decode("ascii")).encode("ascii")


ACCESS = Logger(namespace=logs.ACCESS_NAMESPACE)
"""Where access log lines go (C{[server] access_log = true})."""


def observe(
    metrics: Metrics,
    clock: IReactorTime,
    request: IRequest,
    route: str,
    access_log: bool = False,
    start: float | None = None,
) -> None:
    """
    Time C{request} into C{refresherd_http_request_duration_seconds} under
    C{route}, from C{start} (default: now); with C{access_log}, log it once
    answered: method, route template (never the query, whose values are the
    caller's), status, duration and client address (never a header, so
    never a token).
    """
    if start is None:
        start = clock.seconds()
    web_request: Request = request  # type: ignore[assignment]

    def done(_: object = None) -> None:
        now = clock.seconds()
        duration = now - start
        code = web_request.code
        metrics.observe_http(route, code, duration)
        if access_log:
            address = web_request.getClientAddress()
            lines = logs.access_log()
            if lines is not None:  # formatted together, written in batches
                lines.write(now, web_request.method, route, code, duration, address)
                return
            client = getattr(address, "host", None) or str(address)
            method = web_request.method.decode("latin-1")
            # The line is the format itself (braces escaped): formatting an
            # event field by field would cost more than the rest of the request.
            took = f"{duration:.4f}"
            line = f"{method} {route} {code} {took}s {client}"
            ACCESS.info(
                line.replace("{", "{{").replace("}", "}}"),
                method=method,
                route=route,
                code=code,
                duration=float(took),  # as the message, and L{logs.AccessLog}, write it
                client=client,
            )

    if isinstance(web_request, LimitedRequest | QuickRequest):
        web_request.when_answered = done
    else:  # A request of another Site (tests' StubTreq).
        web_request.notifyFinish().addBoth(done)


def handle_errors(
    app: Klein,
    metrics: Callable[[Any], Metrics],
    clock: Callable[[Any], IReactorTime],
    fallback: Callable[[Any], IResource | None] = lambda face: None,
    access_log: Callable[[Any], bool] = lambda face: False,
) -> None:
    """
    Install on C{app} the handlers every face has: L{RefresherdError} as its
    error object, an unknown route as C{not_found} (or handed to the face's
    C{fallback} resource), a wrong method as C{method_not_allowed}, and
    anything else logged and answered with a JSON 500, never a traceback.
    The callables take the face and give its metrics, clock and fallback.
    """

    @app.handle_errors(RefresherdError)
    def refresherd_error(self: Any, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, RefresherdError)
        return render_error(request, error)

    # An empty path segment ("/v1/jobs//raw") is no route: never a redirect
    # that would name another one.
    app.url_map.merge_slashes = False

    @app.handle_errors(RouteNotFound, RequestRedirect)
    def not_found(self: Any, request: IRequest, failure: Failure) -> bytes | IResource:
        resource = fallback(self)
        if resource is not None:
            request.prepath, request.postpath = [], request.path.split(b"/")[1:]
            return resource
        observe(metrics(self), clock(self), request, UNMATCHED, access_log(self))
        return render_error(request, NotFound(f"no route {request.path.decode('latin-1')!r}"))

    @app.handle_errors(RouteMethodNotAllowed)
    def wrong_method(self: Any, request: IRequest, failure: Failure) -> bytes:
        observe(metrics(self), clock(self), request, UNMATCHED, access_log(self))
        allowed = getattr(failure.value, "valid_methods", None) or []
        request.setHeader(b"Allow", ", ".join(sorted(allowed)).encode("ascii"))
        method = request.method.decode("latin-1")
        return render_error(request, MethodNotAllowed(f"method {method} is not allowed here"))

    @app.handle_errors(Exception)
    def unexpected(self: Any, request: IRequest, failure: Failure) -> bytes:
        return render_unexpected(request, failure)


_LOG = Logger()


def render_unexpected(request: IRequest, failure: Failure) -> bytes:
    """A bug: logged with its traceback, answered with a JSON 500 that shows none."""
    _LOG.failure("Error answering {uri}", failure, uri=request.uri)
    request.setResponseCode(500)
    request.setHeader(b"Content-Type", JSON)
    return json.dumps({"error": {"code": "internal", "message": "internal error"}}).encode()

"""
The errors the client raises (L{RefresherdClientError} and its subclasses,
one L{ServiceError} subclass per error code of the API), and the mapping
from the service's error object to them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

MAX_MESSAGE = 300


def _one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """C{text} on one line (white space runs folded), cut to C{limit} characters."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


class RefresherdClientError(Exception):
    """
    The root of every error this client raises: the service could not be
    reached, or it answered with an error.  C{message} is one line for a user.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unreachable(RefresherdClientError):
    """
    refresherd could not be reached at C{url} (connection refused, unknown
    host, connection lost) or did not answer within the client's timeout.
    """

    def __init__(self, url: str, message: str) -> None:
        super().__init__(message)
        self.url = url


class CircuitOpen(Unreachable):
    """
    The client did not even try: its last requests to C{url} all failed to
    reach it, so it fails at once until its cooldown has passed.
    """


class Pending(RefresherdClientError):
    """
    The job has no value yet for these arguments (C{on_miss = "empty"}): it is
    being fetched in the background.  Raised by L{Client.value} without a
    C{default}.
    """

    def __init__(self, job: str, key: str) -> None:
        super().__init__(f"pending: no value yet for {key or job}; it is being fetched")
        self.job = job
        self.key = key


class BadResponse(RefresherdClientError):
    """The service answered with success but not with the JSON it should have."""


class ServiceError(RefresherdClientError):
    """
    refresherd answered with an error: C{status} is the HTTP status, C{code}
    the error code (docs/README.md, "Errors"; or C{http_<status>} when the
    answer was not refresherd's error object, say from a proxy in front of it)
    and C{message} the server's own one-line explanation.
    """

    code: str = ""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    @property
    def outage(self) -> bool:
        """
        True for a 5xx (C{fetch_failed}, C{wait_timeout}, C{store_unavailable},
        C{overloaded}, or a proxy's 5xx): the service or its origin is down
        or busy, which a caller's C{default} covers.  A 4xx is the caller's
        mistake and always raises.
        """
        return self.status >= 500


class UnknownJob(ServiceError):
    """No job of that name is configured."""

    code = "unknown_job"


class BadArgs(ServiceError):
    """The arguments are missing, unknown, repeated, too long or do not match their pattern."""

    code = "bad_args"


class BadJson(ServiceError):
    """The request body is not the JSON the route takes."""

    code = "bad_json"


class BodyTooLarge(ServiceError):
    """The request body is larger than the service accepts."""

    code = "body_too_large"


class UriTooLong(ServiceError):
    """The request line (path and query) is longer than the service reads."""

    code = "uri_too_long"


class HeadersTooLarge(ServiceError):
    """The request's headers are more, or larger, than the service reads."""

    code = "headers_too_large"


class BadRequest(ServiceError):
    """The request is not HTTP/1.1 the service reads (a malformed request line or header)."""

    code = "bad_request"


class Unauthorized(ServiceError):
    """No token was given, or the service does not know it."""

    code = "unauthorized"


class Forbidden(ServiceError):
    """The token is known but its class may not do this."""

    code = "forbidden"


class FetchFailed(ServiceError):
    """The origin failed and no value can be served."""

    code = "fetch_failed"


class WaitTimeout(ServiceError):
    """The value was not fetched within the job's C{wait_timeout}; the fetch goes on."""

    code = "wait_timeout"


class StoreUnavailable(ServiceError):
    """The service's shared store cannot be reached."""

    code = "store_unavailable"


class Overloaded(ServiceError):
    """The job's fetch queue is full; try again later."""

    code = "overloaded"


class NotFound(ServiceError):
    """No such route, or no such entry."""

    code = "not_found"


class MethodNotAllowed(ServiceError):
    """The route exists, but not with this method."""

    code = "method_not_allowed"


class UnsupportedMediaType(ServiceError):
    """The request body has a content type the route does not take."""

    code = "unsupported_media_type"


class BatchTooLarge(ServiceError):
    """A batch names more items than the service's C{max_batch}."""

    code = "batch_too_large"


class ReloadRefused(ServiceError):
    """The configuration file, read again, was refused; the service serves the one it had."""

    code = "reload_refused"


class ReloadRunning(ServiceError):
    """A reload of the configuration is already running."""

    code = "reload_running"


class ReloadUnsupported(ServiceError):
    """This process does not reload (a worker of C{--workers}: its parent does)."""

    code = "reload_unsupported"


ERRORS: Mapping[str, type[ServiceError]] = {
    cls.code: cls
    for cls in (
        UnknownJob,
        BadArgs,
        BadJson,
        BodyTooLarge,
        Unauthorized,
        Forbidden,
        FetchFailed,
        WaitTimeout,
        StoreUnavailable,
        Overloaded,
        NotFound,
        MethodNotAllowed,
        UnsupportedMediaType,
        BatchTooLarge,
        UriTooLong,
        HeadersTooLarge,
        BadRequest,
        ReloadRefused,
        ReloadRunning,
        ReloadUnsupported,
    )
}
"""The L{ServiceError} subclass of each error code (docs/README.md, "Errors")."""

STATUSES: Mapping[str, int] = {
    "unknown_job": 404,
    "bad_args": 400,
    "bad_json": 400,
    "body_too_large": 413,
    "unauthorized": 401,
    "forbidden": 403,
    "fetch_failed": 502,
    "wait_timeout": 504,
    "store_unavailable": 503,
    "overloaded": 503,
    "not_found": 404,
    "method_not_allowed": 405,
    "unsupported_media_type": 415,
    "batch_too_large": 413,
    "uri_too_long": 414,
    "headers_too_large": 431,
    "bad_request": 400,
    "reload_refused": 422,
    "reload_running": 409,
    "reload_unsupported": 501,
}
"""
The HTTP status of each error code (docs/README.md, "Errors"); an item of a
batch has only its code.
"""


def _error_object(document: Any, status: int | None) -> ServiceError | None:
    """The L{ServiceError} of C{{"error": {"code", "message"}}}, else L{None}."""
    error = document.get("error") if isinstance(document, dict) else None
    if (
        isinstance(error, dict)
        and isinstance(error.get("code"), str)
        and isinstance(error.get("message"), str)
    ):
        code = _one_line(error["code"], 64)
        if status is None:
            status = STATUSES.get(code, 500)
        return ERRORS.get(code, ServiceError)(status, code, _one_line(error["message"]))
    return None


class _Answer(Protocol):
    @property
    def status_code(self) -> int: ...
    @property
    def reason_phrase(self) -> str: ...
    @property
    def content(self) -> bytes: ...


def service_error(response: _Answer) -> ServiceError:
    """
    The L{ServiceError} of an error answer: the subclass of its code when the
    body is refresherd's error object, else a L{ServiceError} of code
    C{http_<status>}.
    """
    status = response.status_code
    try:
        document = json.loads(response.content)
    except ValueError:
        document = None
    error = _error_object(document, status)
    if error is not None:
        return error
    reason = response.reason_phrase or "error"
    return ServiceError(status, f"http_{status}", f"the service answered {status} {reason}")

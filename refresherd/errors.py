"""
Errors that reach users.

Every error a client can see is a L{RefresherdError} subclass carrying its HTTP
status and its error code (docs/README.md, "Errors"); one handler in the HTTP face turns
them into C{{"error": {"code": ..., "message": ...}}}.  L{ConfigError} is what
stops start-up, with one line naming the file, the key and what is wrong.
"""

from __future__ import annotations

import re

MAX_MESSAGE = 300


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """C{text} on one line (white space runs folded), cut to C{limit} characters."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


class RefresherdError(Exception):
    """
    The root of every error refresherd reports to a user.
    """

    status: int = 500
    code: str = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class UnknownJob(RefresherdError):
    """The job named in the request is not configured."""

    status, code = 404, "unknown_job"


class BadArgs(RefresherdError):
    """Arguments are missing, unknown, repeated, too long or do not match their pattern."""

    status, code = 400, "bad_args"


class BadJson(RefresherdError):
    """The request body is not the JSON it should be."""

    status, code = 400, "bad_json"


class BadRequest(RefresherdError):
    """
    A request HTTP/1.1 itself cannot read: a malformed request line or
    header, a body whose length could be read two ways.
    """

    status, code = 400, "bad_request"


class BodyTooLarge(RefresherdError):
    """The request body is larger than the configured limit."""

    status, code = 413, "body_too_large"


class UriTooLong(RefresherdError):
    """The request line (method, path and query) is longer than the server reads."""

    status, code = 414, "uri_too_long"


class HeadersTooLarge(RefresherdError):
    """The request's headers are more, or larger, than the server reads."""

    status, code = 431, "headers_too_large"


class BatchTooLarge(RefresherdError):
    """A batch request names more items than C{max_batch}."""

    status, code = 413, "batch_too_large"


class Unauthorized(RefresherdError):
    """No token, or a token refresherd does not know."""

    status, code = 401, "unauthorized"


class Forbidden(RefresherdError):
    """A known token whose class may not do this."""

    status, code = 403, "forbidden"


class FetchFailed(RefresherdError):
    """The origin failed and no value can be served."""

    status, code = 502, "fetch_failed"


class WaitTimeout(RefresherdError):
    """The value was not fetched within the job's C{wait_timeout}; the fetch goes on."""

    status, code = 504, "wait_timeout"


class StoreUnavailable(RefresherdError):
    """The shared store cannot be reached."""

    status, code = 503, "store_unavailable"


class Overloaded(RefresherdError):
    """The job's fetch queue is full."""

    status, code = 503, "overloaded"


class NotFound(RefresherdError):
    """No such route or entry."""

    status, code = 404, "not_found"


class MethodNotAllowed(RefresherdError):
    """The route exists but not with this method."""

    status, code = 405, "method_not_allowed"


class UnsupportedMediaType(RefresherdError):
    """The request body has a content type this route does not take."""

    status, code = 415, "unsupported_media_type"


class ReloadRefused(RefresherdError):
    """
    The configuration file, read again, was refused: it would not start, or it
    changes what only a restart can.  The process keeps serving the one it had.
    """

    status, code = 422, "reload_refused"


class ReloadRunning(RefresherdError):
    """A reload is already running: one at a time."""

    status, code = 409, "reload_running"


class ReloadUnsupported(RefresherdError):
    """This process does not reload: a worker of C{--workers} (its parent does)."""

    status, code = 501, "reload_unsupported"


class ConfigError(Exception):
    """
    The configuration, an option or an endpoint is wrong.  The message is one
    line naming where (file, job, key) and what is wrong.
    """


class FetchError(Exception):
    """
    One fetch attempt failed.  The message is one line saying why: logged,
    stored as the entry's C{last_error} (the admin API shows it), and shown to
    callers only as L{public_reason} makes it.  C{detail} (a traceback of the
    job's own code, say) goes to the log only.
    """

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


NEEDS_ASYNCIO = (
    "the coroutine awaited asyncio, which needs twistd's asyncio reactor (twistd -r asyncio)"
)
"""Why a python job's coroutine failed under another reactor (an operator's mistake)."""

_SHOWN = re.compile(
    re.escape(NEEDS_ASYNCIO) + r"|origin answered [0-9]{3}( \(redirects are not followed\))?"
    r"|the fetch took longer than [0-9.e+]+s"
    r"|(body|result) larger than [0-9]+ bytes"
    r"|connection closed before the answer was complete"
)
_SHOWN_BEFORE_COLON = {
    "connection refused": "the origin refused the connection",
    "connection timed out": "the connection to the origin timed out",
    "cannot connect": "cannot connect to the origin",
    "connection lost while reading the body": "the connection to the origin was lost",
    "body is not valid JSON": "the origin's body is not valid JSON",
    "origin sent a Content-Type refresherd cannot store": (
        "the origin sent a Content-Type refresherd cannot store"
    ),
    "result is not valid text": "the job's result is not valid text",
    "result is not JSON-encodable": "the job's result is not JSON-encodable",
}
UNSHOWN_REASON = "the fetch failed (the reason is in refresherd's log)"


def public_reason(reason: str) -> str:
    """
    What callers are told of a failed fetch whose reason (as logged and stored)
    is C{reason}: the reasons that name no host and no text of the origin's or
    the job's own (a status code, a timeout, a size), or their kind; anything
    else (a python job's exception, a DNS error naming a host) says only that
    the fetch failed.  Stored entries are read through it too, whoever wrote them.
    """
    if _SHOWN.fullmatch(reason):
        return reason
    return _SHOWN_BEFORE_COLON.get(reason.partition(":")[0], UNSHOWN_REASON)


class FetchTimeout(FetchError):
    """One fetch attempt took longer than the job's C{timeout}."""

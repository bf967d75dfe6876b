"""
A small synchronous client of refresherd (SPEC sections 5 and 10), for web
applications of any framework, scripts and C{refresherctl}.

It speaks to both listeners over one pooled C{httpx.Client} with a timeout on
every request, sends the bearer token when it has one, and turns every failure
into a L{RefresherdClientError}: L{Unreachable} when the service cannot be
reached or does not answer in time, a L{ServiceError} subclass per error code
of SPEC section 5 when it answers with an error object.

This module is the client side: it imports nothing of the server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

DEFAULT_URL = "http://127.0.0.1:8080"
"""The public listener of a refresherd started with its defaults."""
DEFAULT_ADMIN_URL = "http://127.0.0.1:8081"
"""The admin listener of a refresherd started with its defaults."""
DEFAULT_TIMEOUT = 10.0
"""Seconds a request may take: more than a job's default C{wait_timeout}, so that a slow
miss ends in the service's own 504 rather than in the client's timeout."""

_TOKEN = re.compile(r"[\x21-\x7e]+")
_JSON = "application/json"
MAX_MESSAGE = 300


def _one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """C{text} on one line (white space runs folded), cut to C{limit} characters."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def check_base_url(url: str) -> str:
    """
    C{url} without its trailing slashes if it is an C{http://} or C{https://}
    URL with a host and neither query nor fragment, else L{ValueError}.
    """
    try:
        parts = urlsplit(url)
        _ = parts.port  # a bad port raises here
    except ValueError:
        raise ValueError(f"not a valid URL: {url!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http:// or https:// URL with a host: {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"a base URL has no query or fragment: {url!r}")
    return url.rstrip("/")


def display_url(url: str) -> str:
    """C{url} as it may be shown: without credentials."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# -- errors -------------------------------------------------------------------------------


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


class BadResponse(RefresherdClientError):
    """The service answered with success but not with the JSON it should have."""


class ServiceError(RefresherdClientError):
    """
    refresherd answered with an error: C{status} is the HTTP status, C{code}
    the error code of SPEC section 5 (or C{http_<status>} when the answer was
    not refresherd's error object, say from a proxy in front of it) and
    C{message} the server's own one-line explanation.
    """

    code: str = ""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


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
    )
}
"""The L{ServiceError} subclass of each error code of SPEC section 5."""


def service_error(response: httpx.Response) -> ServiceError:
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
    error = document.get("error") if isinstance(document, dict) else None
    if (
        isinstance(error, dict)
        and isinstance(error.get("code"), str)
        and isinstance(error.get("message"), str)
    ):
        code = _one_line(error["code"], 64)
        return ERRORS.get(code, ServiceError)(status, code, _one_line(error["message"]))
    reason = response.reason_phrase or "error"
    return ServiceError(status, f"http_{status}", f"the service answered {status} {reason}")


# -- the client ---------------------------------------------------------------------------


class Client:
    """
    A synchronous client of refresherd's public listener at C{url} and its
    admin listener at C{admin_url}.  Connections are pooled; every request
    gives up after C{timeout} seconds.  C{token}, when given, is sent as
    C{Authorization: Bearer TOKEN} to both.  C{transport} replaces the network
    (an C{httpx.MockTransport} in tests).  Close it, or use it as a context
    manager.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        admin_url: str = DEFAULT_ADMIN_URL,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if token is not None and not _TOKEN.fullmatch(token):
            raise ValueError("a token is printable ASCII without white space")
        if not timeout > 0:
            raise ValueError(f"the timeout must be a positive number of seconds, not {timeout!r}")
        self.url = check_base_url(url)
        self.admin_url = check_base_url(admin_url)
        self.timeout = timeout
        headers = {"Accept": _JSON, "User-Agent": "refresherd-client"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout),
            transport=transport,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        # Never the token.
        return f"<Client url={self.url!r} admin_url={self.admin_url!r}>"

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- public listener ----------------------------------------------------------------

    def get(self, job: str, /, **args: str) -> dict[str, Any]:
        """
        The answer of C{GET /v1/jobs/{job}?{args}}: the value with its
        metadata (C{status} hit, stale or miss), or C{{"job", "key", "status":
        "pending"}} when the job fetches in the background on a miss.
        """
        return self._object(self._send("GET", self.url, _job_path(job), params=args))

    # -- admin listener -----------------------------------------------------------------

    def purge(
        self,
        keys: Iterable[str] = (),
        jobs: Iterable[str] = (),
        tags: Iterable[str] = (),
        soft: bool = False,
    ) -> int:
        """
        Purge the entries of C{keys}, every value of C{jobs} and every value
        tagged with one of C{tags}; with C{soft}, mark them stale instead so
        the next request refreshes them.  The number purged, as the service
        counts it (keys named plus jobs and tags invalidated).
        """
        body = {
            "keys": _strings("keys", keys),
            "jobs": _strings("jobs", jobs),
            "tags": _strings("tags", tags),
            "soft": bool(soft),
        }
        answer = self._object(self._send("POST", self.admin_url, "/v1/purge", body=body))
        purged = answer.get("purged")
        if not isinstance(purged, int) or isinstance(purged, bool):
            raise BadResponse(f"the purge answer has no count: {_one_line(repr(answer))}")
        return purged

    def inspect(self, key: str, value: bool = False) -> dict[str, Any]:
        """The metadata of the entry stored at C{key}, with its value when C{value}."""
        path = "/v1/entries/" + quote(key, safe="")
        params = {"value": "1"} if value else {}
        return self._object(self._send("GET", self.admin_url, path, params=params))

    def refresh(self, job: str, /, **args: str) -> dict[str, Any]:
        """Start a refresh of C{job} with C{args} now: C{{"job", "key", "status": "pending"}}."""
        path = _job_path(job) + "/refresh"
        return self._object(self._send("POST", self.admin_url, path, params=args, body={}))

    def jobs(self) -> list[dict[str, Any]]:
        """The configured jobs, as the service describes them (secrets redacted)."""
        answer = self._object(self._send("GET", self.admin_url, "/v1/jobs"))
        jobs = answer.get("jobs")
        if not isinstance(jobs, list) or not all(isinstance(job, dict) for job in jobs):
            raise BadResponse("the jobs answer has no list of jobs")
        return jobs

    # -- plumbing -----------------------------------------------------------------------

    def _send(
        self,
        method: str,
        base: str,
        path: str,
        params: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> httpx.Response:
        """
        One request to C{base}, raising L{Unreachable} when it cannot be made
        or gets no answer in time, and a L{ServiceError} for an error answer.
        """
        headers = {}
        content = None
        if body is not None:
            headers["Content-Type"] = _JSON
            content = json.dumps(body).encode("utf-8")
        shown = display_url(base)
        try:
            response = self._http.request(
                method, base + path, params=params or None, headers=headers, content=content
            )
        except httpx.ConnectTimeout:
            raise Unreachable(
                shown, f"cannot reach {shown}: no connection within {self.timeout:g} s"
            ) from None
        except httpx.TimeoutException:
            raise Unreachable(shown, f"no answer from {shown} within {self.timeout:g} s") from None
        except httpx.TransportError as e:
            raise Unreachable(shown, f"cannot reach {shown}: {_reason(e)}") from None
        if response.status_code >= 400:
            raise service_error(response)
        return response

    def _object(self, response: httpx.Response) -> dict[str, Any]:
        try:
            document = json.loads(response.content)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise BadResponse(
                f"{response.request.method} {response.request.url.path} answered "
                f"{response.status_code} without a JSON object"
            )
        return document


def _job_path(job: str) -> str:
    return "/v1/jobs/" + quote(job, safe="")


def _strings(name: str, items: Iterable[str]) -> list[str]:
    if isinstance(items, str | bytes):
        raise TypeError(f"{name} must be an iterable of strings, not a single string")
    return list(items)


def _reason(error: httpx.TransportError) -> str:
    """Why a request could not be made, in a few words."""
    text = str(error)
    lowered = text.lower()
    if "refused" in lowered:
        return "connection refused"
    if "name or service not known" in lowered or "nodename nor servname" in lowered:
        return "unknown host"
    if isinstance(error, httpx.RemoteProtocolError):
        return "the connection was closed without an answer"
    return _one_line(text) or type(error).__name__

"""
A small synchronous client of refresherd (docs/clients.md, "The Python
client"), for web applications of any framework, scripts and C{refresherctl}.

    from refresherd.client import Client

    client = Client("http://127.0.0.1:8080", token="...", timeout=2.0)
    answer = client.get("tweets", username="bob")      # the value with its metadata
    tweets = client.value("tweets", username="bob", default=[])
    sidebar = client.raw("sidebar", user_id=42)         # the stored body itself
    client.put("motd", "Hello")                         # needs a write token
    client.purge(tags=["user:42"], soft=True)           # a write token may purge tags

It speaks to both listeners over one pooled C{httpx.Client} (safe to share
between threads) with a timeout on every request, sends the bearer token when
it has one, and turns every failure into a L{RefresherdClientError}:
L{Unreachable} when the service cannot be reached or does not answer in time,
a L{ServiceError} subclass per error code (docs/README.md, "Errors") when it answers
with an error object.

Reads (L{Client.get}, L{Client.get_many}, L{Client.raw}, L{Client.value})
take a C{default}: given, it is returned instead of raising when refresherd
is down (unreachable, or answering 5xx), so that a page renders without it.
Errors of 4xx (an unknown job, bad arguments, a bad token) always raise: they
are bugs, not outages.  A short circuit breaker per listener makes a client
that failed to reach refresherd several times in a row fail at once for a few
seconds, so that a service that is down does not add a timeout to every page.

This module is the client side: it imports nothing of the server.  It logs
with the standard library's C{logging} (logger C{refresherd.client}), since it
runs inside applications that are not Twisted programs.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, overload
from urllib.parse import quote, urlsplit, urlunsplit

import attrs
import httpx

DEFAULT_URL = "http://127.0.0.1:8080"
"""The public listener of a refresherd started with its defaults."""
DEFAULT_ADMIN_URL = "http://127.0.0.1:8081"
"""The admin listener of a refresherd started with its defaults."""
DEFAULT_TIMEOUT = 10.0
"""Seconds a request may take: more than a job's default C{wait_timeout}, so that a slow
miss ends in the service's own 504 rather than in the client's timeout."""
DEFAULT_CIRCUIT_FAILURES = 3
"""Failures to reach a listener in a row after which the circuit opens."""
DEFAULT_CIRCUIT_COOLDOWN = 5.0
"""Seconds an open circuit fails at once before one trial request is let through."""

_TOKEN = re.compile(r"[\x21-\x7e]+")
_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"
_OCTETS = "application/octet-stream"
MAX_MESSAGE = 300

log = logging.getLogger("refresherd.client")

T = TypeVar("T")

ArgValue = str | int | uuid.UUID
"""A job argument value: a string, or an integer or UUID sent as its decimal or canonical text."""
JobArgs = Mapping[str, ArgValue]
"""Job arguments by name."""
BatchItem = tuple[str, JobArgs] | Mapping[str, Any] | str
"""One item of L{Client.get_many}: C{(job, args)}, C{{"job": ..., "args": {...}}} or a job name."""


class _Missing(enum.Enum):
    MISSING = "MISSING"


_NO_DEFAULT = _Missing.MISSING


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
    error = _error_object(document, status)
    if error is not None:
        return error
    reason = response.reason_phrase or "error"
    return ServiceError(status, f"http_{status}", f"the service answered {status} {reason}")


# -- values -------------------------------------------------------------------------------


@attrs.frozen
class Raw:
    """
    An answer of C{GET /v1/jobs/{job}/raw}: the stored body itself, with its
    stored content type (C{status} 200), or, for a job that fetches in the
    background on a miss, the pending answer (C{status} 202; C{body} is then
    the JSON C{{"job", "key", "status": "pending"}}).  C{etag} and
    C{cache_status} are the answer's C{ETag} and C{Cache-Status} headers.
    """

    body: bytes
    content_type: str
    status: int = 200
    etag: str | None = None
    cache_status: str | None = None

    @property
    def pending(self) -> bool:
        """True when there is no value yet: it is being fetched in the background."""
        return self.status == 202

    @property
    def charset(self) -> str:
        """The C{charset} parameter of the content type, C{utf-8} when it has none."""
        for parameter in self.content_type.split(";")[1:]:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "charset" and value.strip():
                return value.strip().strip('"')
        return "utf-8"

    @property
    def text(self) -> str:
        """The body decoded with its charset (UTF-8 when unknown), bad bytes replaced."""
        try:
            return self.body.decode(self.charset, errors="replace")
        except LookupError:
            return self.body.decode("utf-8", errors="replace")


_TEXT_TYPES = re.compile(
    r"text/.*|application/(json|xml|javascript|ecmascript|x-www-form-urlencoded)|"
    r"application/.*\+(json|xml)"
)


def is_text_type(content_type: str) -> bool:
    """
    True for a content type whose values are text: C{text/*}, JSON, XML,
    JavaScript, or any type with a C{charset} parameter.
    """
    media, _, parameters = content_type.partition(";")
    if _TEXT_TYPES.fullmatch(media.strip().lower()):
        return True
    return any(p.split("=", 1)[0].strip().lower() == "charset" for p in parameters.split(";"))


def answer_value(answer: Mapping[str, Any]) -> Any:
    """
    The value of an answer of C{GET /v1/jobs/{job}} (or of an item of a
    batch): the parsed JSON when its content type is JSON, the text of a text
    type (L{is_text_type}), else the bytes (the service sends a body that is
    UTF-8 as text whatever its type, and any other as C{value_b64}).
    L{Pending} for a pending answer, L{BadResponse} for one without a value.
    """
    if answer.get("status") == "pending":
        raise Pending(str(answer.get("job", "")), str(answer.get("key", "")))
    if "value_b64" in answer:
        try:
            return base64.b64decode(str(answer["value_b64"]), validate=True)
        except binascii.Error:
            raise BadResponse("the answer's value_b64 is not base64") from None
    if "value" not in answer:
        raise BadResponse("the answer has no value")
    value = answer["value"]
    content_type = str(answer.get("content_type") or "")
    if isinstance(value, str) and content_type and not is_text_type(content_type):
        return value.encode("utf-8")
    return value


# -- the circuit breaker ------------------------------------------------------------------


@attrs.define
class CircuitBreaker:
    """
    Counts the failures to reach one listener.  After C{failures} of them in a
    row the circuit is open: L{check} refuses every request for C{cooldown}
    seconds, then lets one trial request through (half open), whose outcome
    closes the circuit or opens it for another C{cooldown}.  Any answer of the
    service, an error answer included, counts as reaching it.  C{failures} 0
    turns the breaker off.  Thread-safe; C{clock} gives monotonic seconds.
    """

    failures: int = DEFAULT_CIRCUIT_FAILURES
    cooldown: float = DEFAULT_CIRCUIT_COOLDOWN
    clock: Callable[[], float] = time.monotonic
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False, repr=False)
    _failed: int = attrs.field(default=0, init=False)
    _open_until: float | None = attrs.field(default=None, init=False)
    _trial: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        if isinstance(self.failures, bool) or not isinstance(self.failures, int):
            raise TypeError("failures must be an integer")
        if self.failures < 0:
            raise ValueError(f"failures must be 0 (no breaker) or more, not {self.failures}")
        if not self.cooldown > 0:
            raise ValueError(
                f"the cooldown must be a positive number of seconds, not {self.cooldown!r}"
            )

    @property
    def state(self) -> str:
        """C{"closed"}, C{"open"} or C{"half-open"} (a trial request is under way)."""
        with self._lock:
            if self._open_until is None:
                return "closed"
            return "half-open" if self._trial else "open"

    def check(self) -> str | None:
        """
        L{None} when a request may be sent now, which must then be followed by
        exactly one of L{succeeded}, L{failed} or L{abandoned}; else why not,
        in words for a message.
        """
        if self.failures == 0:
            return None
        with self._lock:
            if self._open_until is None:
                return None
            if self._trial:
                return f"circuit open after {self._failed} failures in a row; a trial is under way"
            left = self._open_until - self.clock()
            if left > 0:
                return (
                    f"circuit open after {self._failed} failures in a row; next try in {left:.1f} s"
                )
            self._trial = True
            return None

    def succeeded(self) -> bool:
        """The service answered: close the circuit.  True if it was open."""
        with self._lock:
            was_open = self._open_until is not None
            self._failed = 0
            self._open_until = None
            self._trial = False
            return was_open

    def failed(self) -> bool:
        """The service could not be reached: count it.  True if the circuit opens now."""
        if self.failures == 0:
            return False
        with self._lock:
            self._trial = False
            self._failed += 1
            if self._failed < self.failures:
                return False
            opens = self._open_until is None
            self._open_until = self.clock() + self.cooldown
            return opens

    def abandoned(self) -> None:
        """The request ended neither way (a bug, an interrupt): let another trial through."""
        with self._lock:
            self._trial = False


# -- the client ---------------------------------------------------------------------------


class Client:
    """
    A synchronous client of refresherd's public listener at C{url} and its
    admin listener at C{admin_url}.  Connections are pooled, and one client
    may be shared by every thread of a process; every request gives up after
    C{timeout} seconds (C{connect_timeout} for the connection alone, when
    given).  C{token}, when given, is sent as C{Authorization: Bearer TOKEN}
    to both.  C{transport} replaces the network (an C{httpx.MockTransport} in
    tests).  Close it, or use it as a context manager.

    After C{circuit_failures} failures in a row to reach a listener (0: never)
    requests to it fail at once with L{CircuitOpen} (or return their
    C{default}) for C{circuit_cooldown} seconds, then one trial request
    decides; C{clock} gives the breaker's monotonic seconds.

    Job arguments are keyword arguments, or a mapping given after the job
    name for names that are also parameters of a method (C{default}, C{args},
    C{content_type}): C{client.get("report", {"default": "x"}, year=2024)}.
    Values are strings, integers or UUIDs.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        admin_url: str = DEFAULT_ADMIN_URL,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        *,
        connect_timeout: float | None = None,
        circuit_failures: int = DEFAULT_CIRCUIT_FAILURES,
        circuit_cooldown: float = DEFAULT_CIRCUIT_COOLDOWN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if token is not None and not _TOKEN.fullmatch(token):
            raise ValueError("a token is printable ASCII without white space")
        if not timeout > 0:
            raise ValueError(f"the timeout must be a positive number of seconds, not {timeout!r}")
        if connect_timeout is not None and not connect_timeout > 0:
            raise ValueError(
                f"the connect timeout must be a positive number of seconds, not {connect_timeout!r}"
            )
        self.url = check_base_url(url)
        self.admin_url = check_base_url(admin_url)
        self.timeout = timeout
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        # One breaker per listener (one only when both are the same).
        self._breakers = {
            base: CircuitBreaker(circuit_failures, circuit_cooldown, clock)
            for base in dict.fromkeys((self.url, self.admin_url))
        }
        headers = {"Accept": _JSON, "User-Agent": "refresherd-client"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=self.connect_timeout),
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

    def circuit(self, listener: str = "public") -> str:
        """The state of the circuit of the C{"public"} or C{"admin"} listener."""
        base = {"public": self.url, "admin": self.admin_url}[listener]
        return self._breakers[base].state

    # -- public listener ----------------------------------------------------------------

    @overload
    def get(
        self, job: str, args: JobArgs | None = None, /, **kwargs: ArgValue
    ) -> dict[str, Any]: ...

    @overload
    def get(
        self, job: str, args: JobArgs | None = None, /, *, default: T, **kwargs: ArgValue
    ) -> dict[str, Any] | T: ...

    def get(
        self,
        job: str,
        args: JobArgs | None = None,
        /,
        *,
        default: Any = _NO_DEFAULT,
        **kwargs: ArgValue,
    ) -> Any:
        """
        The answer of C{GET /v1/jobs/{job}?{args}}: the value with its
        metadata (C{status} hit, stale or miss, C{value} or C{value_b64},
        C{content_type}, C{fetched_at}, C{fresh_until}, C{stale_until},
        C{age}), or C{{"job", "key", "status": "pending"}} when the job
        fetches in the background on a miss.  With C{default}, that is
        returned instead when refresherd is down (unreachable or 5xx).
        """
        params = _job_args(args, kwargs)

        def call() -> dict[str, Any]:
            return self._object(self._send("GET", self.url, _job_path(job), params=params))

        return _or_default(default, call)

    @overload
    def get_many(self, items: Iterable[BatchItem], /) -> list[dict[str, Any] | ServiceError]: ...

    @overload
    def get_many(
        self, items: Iterable[BatchItem], /, *, default: T
    ) -> list[dict[str, Any] | ServiceError | T]: ...

    def get_many(self, items: Iterable[BatchItem], /, *, default: Any = _NO_DEFAULT) -> Any:
        """
        Many values in one request (C{POST /v1/fetch}): one answer per item,
        in order, each as L{get} returns it or, for an item that failed, its
        L{ServiceError} (not raised).  An item is C{(job, args)},
        C{{"job": job, "args": args}} or a job name alone.  With C{default},
        an item whose error is an outage (5xx) is the default, and so is every
        item when refresherd is down.
        """
        batch = [_batch_item(item) for item in items]
        if not batch:
            return []

        def call() -> list[Any]:
            response = self._send("POST", self.url, "/v1/fetch", body={"items": batch})
            answers = self._object(response).get("items")
            if not isinstance(answers, list) or len(answers) != len(batch):
                raise BadResponse(f"the batch answer does not have {len(batch)} items")
            results: list[Any] = []
            for answer in answers:
                if not isinstance(answer, dict):
                    raise BadResponse("an item of the batch answer is not a JSON object")
                error = _error_object(answer, None)
                if error is None:
                    results.append(answer)
                elif error.outage and default is not _NO_DEFAULT:
                    results.append(default)
                else:
                    results.append(error)
            return results

        if default is _NO_DEFAULT:
            return call()
        try:
            return call()
        except (Unreachable, ServiceError) as e:
            if isinstance(e, ServiceError) and not e.outage:
                raise
            return [default] * len(batch)

    @overload
    def raw(self, job: str, args: JobArgs | None = None, /, **kwargs: ArgValue) -> Raw: ...

    @overload
    def raw(
        self, job: str, args: JobArgs | None = None, /, *, default: T, **kwargs: ArgValue
    ) -> Raw | T: ...

    def raw(
        self,
        job: str,
        args: JobArgs | None = None,
        /,
        *,
        default: Any = _NO_DEFAULT,
        **kwargs: ArgValue,
    ) -> Any:
        """
        The stored body itself (C{GET /v1/jobs/{job}/raw}) as a L{Raw}: an
        HTML snippet, an image.  With C{default}, that is returned instead
        when there is no value yet (202 pending) or refresherd is down.
        """
        params = _job_args(args, kwargs)

        def call() -> Any:
            response = self._send(
                "GET", self.url, _job_path(job) + "/raw", params=params, accept="*/*"
            )
            if response.status_code not in (200, 202):
                raise BadResponse(f"the raw answer has status {response.status_code}")
            raw = Raw(
                body=response.content,
                content_type=response.headers.get("Content-Type", _OCTETS),
                status=response.status_code,
                etag=response.headers.get("ETag"),
                cache_status=response.headers.get("Cache-Status"),
            )
            if raw.pending and default is not _NO_DEFAULT:
                return default
            return raw

        return _or_default(default, call)

    def value(
        self,
        job: str,
        args: JobArgs | None = None,
        /,
        *,
        default: Any = _NO_DEFAULT,
        **kwargs: ArgValue,
    ) -> Any:
        """
        The value alone (L{answer_value}): the parsed JSON of a JSON value,
        the text of a text value, the bytes of any other.  Without C{default},
        L{Pending} when there is no value yet; with it, the default then and
        when refresherd is down.
        """
        params = _job_args(args, kwargs)

        def call() -> Any:
            answer = self._object(self._send("GET", self.url, _job_path(job), params=params))
            if answer.get("status") == "pending" and default is not _NO_DEFAULT:
                return default
            return answer_value(answer)

        return _or_default(default, call)

    def put(
        self,
        job: str,
        body: Any,
        args: JobArgs | None = None,
        /,
        *,
        content_type: str | None = None,
        **kwargs: ArgValue,
    ) -> dict[str, Any]:
        """
        Store C{body} as the value of C{job} with C{args}, fresh now
        (C{PUT /v1/jobs/{job}}, a write token): C{bytes} as given
        (C{application/octet-stream} unless C{content_type} says otherwise),
        a C{str} as UTF-8 (C{text/plain; charset=utf-8}), anything else
        JSON-encoded (C{application/json}).  The answer a L{get} now gives.
        """
        params = _job_args(args, kwargs)
        content, media = _encode_body(body, content_type)
        response = self._send(
            "PUT", self.url, _job_path(job), params=params, content=content, content_type=media
        )
        return self._object(response)

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
        the next request is answered at once with the old value while one
        refresh regenerates it.  The number purged, as the service counts it
        (keys named plus jobs and tags invalidated).  A write token may purge
        keys and tags; jobs need an admin token.
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

    def refresh(
        self, job: str, args: JobArgs | None = None, /, **kwargs: ArgValue
    ) -> dict[str, Any]:
        """Start a refresh of C{job} with C{args} now: C{{"job", "key", "status": "pending"}}."""
        params = _job_args(args, kwargs)
        path = _job_path(job) + "/refresh"
        return self._object(self._send("POST", self.admin_url, path, params=params, body={}))

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
        *,
        content: bytes | None = None,
        content_type: str | None = None,
        accept: str | None = None,
    ) -> httpx.Response:
        """
        One request to C{base}, raising L{Unreachable} when it cannot be made
        or gets no answer in time (L{CircuitOpen} when it is not even tried),
        and a L{ServiceError} for an error answer.  C{body} is sent as JSON,
        else C{content} with C{content_type}.
        """
        headers = {}
        if body is not None:
            headers["Content-Type"] = _JSON
            content = json.dumps(body).encode("utf-8")
        elif content is not None:
            headers["Content-Type"] = content_type or _OCTETS
        if accept is not None:
            headers["Accept"] = accept
        shown = display_url(base)
        breaker = self._breakers[base]
        refused = breaker.check()
        if refused is not None:
            raise CircuitOpen(shown, f"cannot reach {shown}: {refused}")
        try:
            response = self._http.request(
                method, base + path, params=params or None, headers=headers, content=content
            )
        except httpx.TransportError as e:
            if breaker.failed():
                log.warning(
                    "refresherd at %s could not be reached %d times in a row; "
                    "failing at once for %g s",
                    shown,
                    breaker.failures,
                    breaker.cooldown,
                )
            raise self._unreachable(shown, e) from None
        except BaseException:
            breaker.abandoned()
            raise
        if breaker.succeeded():
            log.info("refresherd at %s answers again", shown)
        if response.status_code >= 400:
            raise service_error(response)
        return response

    def _unreachable(self, shown: str, error: httpx.TransportError) -> Unreachable:
        if isinstance(error, httpx.ConnectTimeout):
            return Unreachable(
                shown, f"cannot reach {shown}: no connection within {self.connect_timeout:g} s"
            )
        if isinstance(error, httpx.TimeoutException):
            return Unreachable(shown, f"no answer from {shown} within {self.timeout:g} s")
        return Unreachable(shown, f"cannot reach {shown}: {_reason(error)}")

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


def _or_default(default: Any, call: Callable[[], T]) -> T | Any:
    """C{call()}, or C{default} (when given) if refresherd is down: unreachable or 5xx."""
    if default is _NO_DEFAULT:
        return call()
    try:
        return call()
    except Unreachable:
        return default
    except ServiceError as e:
        if e.outage:
            return default
        raise


def _arg_value(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | uuid.UUID) and not isinstance(value, bool):
        return str(value)
    raise TypeError(
        f"job argument {name!r} must be a string, an integer or a UUID, not {type(value).__name__}"
    )


def _job_args(args: Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> dict[str, str]:
    """The job arguments of a call: the mapping given after the job, and the keywords."""
    if args is not None and not isinstance(args, Mapping):
        raise TypeError(f"job arguments are a mapping, not {type(args).__name__}")
    merged: dict[str, str] = {}
    for name, value in (args or {}).items():
        if not isinstance(name, str):
            raise TypeError(f"job argument names are strings, not {type(name).__name__}")
        merged[name] = _arg_value(name, value)
    for name, value in kwargs.items():
        if name in merged:
            raise TypeError(f"job argument {name!r} is given twice")
        if name == "args" and isinstance(value, Mapping):
            raise TypeError("give the mapping of job arguments after the job name, not as args=")
        merged[name] = _arg_value(name, value)
    return merged


def _batch_item(item: Any) -> dict[str, Any]:
    """One item of a batch as C{POST /v1/fetch} takes it."""
    job: Any
    args: Any
    if isinstance(item, str):
        job, args = item, None
    elif isinstance(item, Mapping):
        unknown = sorted(set(item) - {"job", "args"})
        if unknown:
            raise TypeError(f"a batch item has only job and args, not {unknown[0]!r}")
        job, args = item.get("job"), item.get("args")
    elif isinstance(item, Sequence) and len(item) == 2:
        job, args = item
    else:
        raise TypeError('a batch item is (job, args), {"job": ..., "args": {...}} or a job name')
    if not isinstance(job, str):
        raise TypeError(f"a batch item's job is a string, not {type(job).__name__}")
    return {"job": job, "args": _job_args(args, {})}


def _encode_body(body: Any, content_type: str | None) -> tuple[bytes, str]:
    """The bytes and content type of a PUT body."""
    if content_type is not None and (not content_type.isprintable() or not content_type):
        raise ValueError("a content type is one line of printable text")
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body), content_type or _OCTETS
    if isinstance(body, str):
        return body.encode("utf-8"), content_type or _TEXT
    try:
        encoded = json.dumps(body, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"the value is neither bytes, a str nor JSON-encodable: {e}") from None
    return encoded.encode("utf-8"), content_type or _JSON


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

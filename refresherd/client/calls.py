"""
The client's calls without I/O, shared by L{refresherd.client.Client} and
L{refresherd.client.AsyncClient}: each method's request (L{Request}) and how its
answer is read (L{Call}), and L{Listeners}, what happens around a request (the
circuit breaker, a failure to reach the service as L{Unreachable}, an error
answer as a L{ServiceError}, C{default=} covering an outage).  A transport only
moves a L{Request} to the service and brings back a L{Response}, or raises a
L{TransportError}.
"""

from __future__ import annotations

import base64
import enum
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit

import attrs

from refresherd.client.answers import Raw, answer_value
from refresherd.client.breaker import CircuitBreaker
from refresherd.client.errors import (
    BadResponse,
    CircuitOpen,
    RefresherdClientError,
    ServiceError,
    Unreachable,
    _error_object,
    _one_line,
    service_error,
)
from refresherd.client.urls import check_base_url, display_url

DEFAULT_URL = "http://127.0.0.1:8080"
"""The public listener of a refresherd started with its defaults."""
DEFAULT_ADMIN_URL = "http://127.0.0.1:8081"
"""The admin listener of a refresherd started with its defaults."""
DEFAULT_TIMEOUT = 10.0
"""Seconds a request may take: more than a job's default C{wait_timeout}, so that a slow
miss ends in the service's own 504 rather than in the client's timeout."""

_TOKEN = re.compile(r"[\x21-\x7e]+")
_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"
_OCTETS = "application/octet-stream"

log = logging.getLogger("refresherd.client")

ArgValue = str | int | uuid.UUID
"""A job argument value: a string, or an integer or UUID sent as its decimal or canonical text."""
JobArgs = Mapping[str, ArgValue]
"""Job arguments by name."""
BatchItem = tuple[str, JobArgs] | Mapping[str, Any] | str
"""One item of L{Client.get_many}: C{(job, args)}, C{{"job": ..., "args": {...}}} or a job name."""


class _Missing(enum.Enum):
    MISSING = "MISSING"


NO_DEFAULT = _Missing.MISSING
"""The C{default} of a read that has none: its errors are raised."""


@attrs.frozen
class Origin:
    """
    Where a listener is: C{scheme}, C{host}, C{port}, the C{prefix} of its
    base URL's path, the URL as it may be shown (without credentials), and the
    C{Authorization} header of the credentials in its URL, if any.
    """

    base: str
    scheme: str
    host: str
    port: int
    prefix: str
    shown: str
    basic: str | None

    @classmethod
    def of(cls, base: str) -> Origin:
        parts = urlsplit(base)
        basic = None
        if "@" in parts.netloc:
            user = unquote(parts.username or "")
            password = unquote(parts.password or "")
            basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        default_port = 443 if parts.scheme == "https" else 80
        return cls(
            base=base,
            scheme=parts.scheme,
            host=parts.hostname or "",
            port=parts.port or default_port,
            prefix=parts.path.rstrip("/"),
            shown=display_url(base),
            basic=basic,
        )

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default_port = 443 if self.scheme == "https" else 80
        return host if self.port == default_port else f"{host}:{self.port}"


@attrs.frozen
class Request:
    """
    One request to a listener: C{method}, the C{target} (path and query, the
    base URL's path included), C{headers} (besides those of every request) and
    C{body}; C{timeout} when it differs from the client's.
    """

    origin: Origin
    method: str
    target: str
    headers: Mapping[str, str] = attrs.field(factory=dict)
    body: bytes | None = None
    timeout: float | None = None

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def url(self) -> str:
        return f"{self.origin.scheme}://{self.origin.host_header}{self.target}"


class Headers(Protocol):
    """The headers of an answer: C{get} by name, whatever its case."""

    def get(self, name: str, default: None = None, /) -> str | None: ...


@attrs.frozen
class Response:
    """An answer as a transport brings it back: status, reason, headers (read by name)."""

    status_code: int
    reason_phrase: str
    headers: Headers
    content: bytes


class Failure(enum.Enum):
    """Why a transport could not get an answer."""

    CONNECT_TIMEOUT = "connect_timeout"
    TIMEOUT = "timeout"
    CLOSED = "the connection was closed without an answer"
    REFUSED = "connection refused"
    UNKNOWN_HOST = "unknown host"
    OTHER = "other"


class TransportError(Exception):
    """A transport got no answer: C{failure} says why, C{reason} in words for L{Failure.OTHER}."""

    def __init__(self, failure: Failure, reason: str = "") -> None:
        super().__init__(reason or failure.value)
        self.failure = failure
        self.reason = reason


def failure_of(error: OSError) -> TransportError:
    """The L{TransportError} of an C{OSError} met while connecting, sending or reading."""
    if isinstance(error, TimeoutError):
        return TransportError(Failure.TIMEOUT)
    if isinstance(error, ConnectionRefusedError):
        return TransportError(Failure.REFUSED)
    text = str(error)
    lowered = text.lower()
    if "name or service not known" in lowered or "nodename nor servname" in lowered:
        return TransportError(Failure.UNKNOWN_HOST)
    if "refused" in lowered:
        return TransportError(Failure.REFUSED)
    return TransportError(Failure.OTHER, _one_line(text) or type(error).__name__)


@attrs.frozen
class Call:
    """
    A method's request and how its answer is read: C{read} turns the answer
    into the method's result; C{fallback}, when there is one, gives the
    result instead when the service is down (unreachable or 5xx).  A call with
    no request (C{request} None) is done at once: C{read(None)}.
    """

    request: Request | None
    read: Callable[[Response], Any]
    fallback: Callable[[], Any] | None = None


@attrs.define
class Listeners:
    """
    What the sync and async clients share: the two listeners, the headers of
    every request to each (the token, or the credentials of its URL), the
    timeouts and a circuit breaker per listener; the calls of each method
    (L{get}, L{purge}, ...) and what is done around a request (L{start},
    L{unreachable}, L{answered}, L{recover}).
    """

    public: Origin
    admin: Origin
    headers: dict[str, dict[str, str]]
    timeout: float
    connect_timeout: float
    breakers: dict[str, CircuitBreaker]

    @classmethod
    def of(
        cls,
        url: str,
        admin_url: str,
        token: str | None,
        timeout: float,
        connect_timeout: float | None,
        circuit_failures: int,
        circuit_cooldown: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> Listeners:
        """Checked settings, else L{ValueError} (or L{TypeError}) saying which is wrong."""
        if token is not None and not _TOKEN.fullmatch(token):
            raise ValueError("a token is printable ASCII without white space")
        if not timeout > 0:
            raise ValueError(f"the timeout must be a positive number of seconds, not {timeout!r}")
        if connect_timeout is not None and not connect_timeout > 0:
            raise ValueError(
                f"the connect timeout must be a positive number of seconds, not {connect_timeout!r}"
            )
        public, admin = Origin.of(check_base_url(url)), Origin.of(check_base_url(admin_url))
        # One breaker per listener (one only when both are the same).
        breakers = {
            base: CircuitBreaker(circuit_failures, circuit_cooldown, clock)
            for base in dict.fromkeys((public.base, admin.base))
        }
        headers = {}
        for origin in (public, admin):
            common = {"Accept": _JSON, "User-Agent": "refresherd-client"}
            if token is not None:
                common["Authorization"] = f"Bearer {token}"
            elif origin.basic is not None:
                common["Authorization"] = origin.basic
            headers[origin.base] = common
        return cls(
            public=public,
            admin=admin,
            headers=headers,
            timeout=timeout,
            connect_timeout=timeout if connect_timeout is None else connect_timeout,
            breakers=breakers,
        )

    def circuit(self, listener: str) -> str:
        """The state of the circuit of the C{"public"} or C{"admin"} listener."""
        origin = {"public": self.public, "admin": self.admin}[listener]
        return self.breakers[origin.base].state

    # -- around a request ---------------------------------------------------------------

    def headers_of(self, request: Request) -> dict[str, str]:
        """The headers of C{request}: those of every request to its listener, and its own."""
        common = self.headers[request.origin.base]
        return {**common, **request.headers} if request.headers else common

    def start(self, request: Request) -> CircuitBreaker:
        """The breaker of the request's listener, if it lets the request go; else L{CircuitOpen}."""
        breaker = self.breakers[request.origin.base]
        refused = breaker.check()
        if refused is not None:
            shown = request.origin.shown
            raise CircuitOpen(shown, f"cannot reach {shown}: {refused}")
        return breaker

    def unreachable(
        self, request: Request, breaker: CircuitBreaker, error: TransportError
    ) -> Unreachable:
        """The L{Unreachable} of a request that got no answer, counted by its breaker."""
        shown = request.origin.shown
        if breaker.failed():
            log.warning(
                "refresherd at %s could not be reached %d times in a row; failing at once for %g s",
                shown,
                breaker.failures,
                breaker.cooldown,
            )
        if error.failure is Failure.CONNECT_TIMEOUT:
            return Unreachable(
                shown, f"cannot reach {shown}: no connection within {self.connect_timeout:g} s"
            )
        if error.failure is Failure.TIMEOUT:
            timeout = request.timeout or self.timeout
            return Unreachable(shown, f"no answer from {shown} within {timeout:g} s")
        reason = error.reason if error.failure is Failure.OTHER else error.failure.value
        return Unreachable(shown, f"cannot reach {shown}: {reason}")

    def answered(self, breaker: CircuitBreaker, request: Request, response: Response) -> Response:
        """The answer of a request that reached the service; a L{ServiceError} for an error."""
        if breaker.succeeded():
            log.info("refresherd at %s answers again", request.origin.shown)
        if response.status_code >= 400:
            raise service_error(response)
        return response

    @staticmethod
    def recover(call: Call, error: RefresherdClientError) -> Any:
        """The call's fallback for an outage (unreachable or 5xx); else C{error} raised again."""
        if call.fallback is None:
            raise error
        if isinstance(error, Unreachable) or (isinstance(error, ServiceError) and error.outage):
            return call.fallback()
        raise error

    # -- the calls ----------------------------------------------------------------------

    def _request(
        self,
        origin: Origin,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        *,
        content: bytes | None = None,
        content_type: str | None = None,
        accept: str | None = None,
        timeout: float | None = None,
    ) -> Request:
        """A request; C{body} is sent as JSON, else C{content} with C{content_type}."""
        target = origin.prefix + path
        if params:
            target += "?" + "&".join(f"{_quoted(n)}={_quoted(v)}" for n, v in params.items())
        headers = {}
        if body is not None:
            headers["Content-Type"] = _JSON
            content = json.dumps(body).encode("utf-8")
        elif content is not None:
            headers["Content-Type"] = content_type or _OCTETS
        if accept is not None:
            headers["Accept"] = accept
        return Request(origin, method, target, headers, content, timeout)

    def get(self, job: str, args: JobArgs | None, kwargs: JobArgs, default: Any) -> Call:
        request = self._request(self.public, "GET", _job_path(job), _job_args(args, kwargs))
        return Call(request, self.json_object(request), _fallback(default))

    def value(self, job: str, args: JobArgs | None, kwargs: JobArgs, default: Any) -> Call:
        request = self._request(self.public, "GET", _job_path(job), _job_args(args, kwargs))
        as_object = self.json_object(request)

        def read(response: Response) -> Any:
            answer = as_object(response)
            if answer.get("status") == "pending" and default is not NO_DEFAULT:
                return default
            return answer_value(answer)

        return Call(request, read, _fallback(default))

    def raw(self, job: str, args: JobArgs | None, kwargs: JobArgs, default: Any) -> Call:
        path = _job_path(job) + "/raw"
        request = self._request(self.public, "GET", path, _job_args(args, kwargs), accept="*/*")

        def read(response: Response) -> Any:
            if response.status_code not in (200, 202):
                raise BadResponse(f"the raw answer has status {response.status_code}")
            raw = Raw(
                body=response.content,
                content_type=response.headers.get("Content-Type") or _OCTETS,
                status=response.status_code,
                etag=response.headers.get("ETag"),
                cache_status=response.headers.get("Cache-Status"),
            )
            if raw.pending and default is not NO_DEFAULT:
                return default
            return raw

        return Call(request, read, _fallback(default))

    def get_many(self, items: Iterable[BatchItem], default: Any) -> Call:
        batch = [_batch_item(item) for item in items]
        if not batch:
            return Call(None, lambda _: [])
        request = self._request(self.public, "POST", "/v1/fetch", body={"items": batch})
        as_object = self.json_object(request)

        def read(response: Response) -> list[Any]:
            answers = as_object(response).get("items")
            if not isinstance(answers, list) or len(answers) != len(batch):
                raise BadResponse(f"the batch answer does not have {len(batch)} items")
            results: list[Any] = []
            for answer in answers:
                if not isinstance(answer, dict):
                    raise BadResponse("an item of the batch answer is not a JSON object")
                error = _error_object(answer, None)
                if error is None:
                    results.append(answer)
                elif error.outage and default is not NO_DEFAULT:
                    results.append(default)
                else:
                    results.append(error)
            return results

        fallback = None if default is NO_DEFAULT else (lambda: [default] * len(batch))
        return Call(request, read, fallback)

    def put(
        self,
        job: str,
        body: Any,
        args: JobArgs | None,
        kwargs: JobArgs,
        content_type: str | None,
    ) -> Call:
        params = _job_args(args, kwargs)
        content, media = _encode_body(body, content_type)
        request = self._request(
            self.public, "PUT", _job_path(job), params, content=content, content_type=media
        )
        return Call(request, self.json_object(request))

    def purge(
        self, keys: Iterable[str], jobs: Iterable[str], tags: Iterable[str], soft: bool
    ) -> Call:
        body = {
            "keys": _strings("keys", keys),
            "jobs": _strings("jobs", jobs),
            "tags": _strings("tags", tags),
            "soft": bool(soft),
        }
        request = self._request(self.admin, "POST", "/v1/purge", body=body)
        as_object = self.json_object(request)

        def read(response: Response) -> int:
            answer = as_object(response)
            purged = answer.get("purged")
            if not isinstance(purged, int) or isinstance(purged, bool):
                raise BadResponse(f"the purge answer has no count: {_one_line(repr(answer))}")
            return purged

        return Call(request, read)

    def inspect(self, key: str, value: bool) -> Call:
        path = "/v1/entries/" + quote(key, safe="")
        params = {"value": "1"} if value else {}
        request = self._request(self.admin, "GET", path, params)
        return Call(request, self.json_object(request))

    def refresh(self, job: str, args: JobArgs | None, kwargs: JobArgs) -> Call:
        path = _job_path(job) + "/refresh"
        request = self._request(self.admin, "POST", path, _job_args(args, kwargs), body={})
        return Call(request, self.json_object(request))

    def warm(self, job: str, sets: Sequence[Mapping[str, Any]], timeout: float | None) -> Call:
        body = {"args": [dict(arguments) for arguments in sets]}
        path = _job_path(job) + "/warm"
        request = self._request(self.admin, "POST", path, body=body, timeout=timeout)
        as_object = self.json_object(request)

        def read(response: Response) -> list[dict[str, Any]]:
            results = as_object(response).get("results")
            if (
                not isinstance(results, list)
                or len(results) != len(sets)
                or not all(
                    isinstance(r, dict) and isinstance(r.get("result"), str) for r in results
                )
            ):
                raise BadResponse("the warm answer has no result for each argument set")
            return results

        return Call(request, read)

    def reload(self) -> Call:
        request = self._request(self.admin, "POST", "/v1/reload", body={})
        return Call(request, self.json_object(request))

    def jobs(self) -> Call:
        request = self._request(self.admin, "GET", "/v1/jobs")
        as_object = self.json_object(request)

        def read(response: Response) -> list[dict[str, Any]]:
            jobs = as_object(response).get("jobs")
            if not isinstance(jobs, list) or not all(isinstance(job, dict) for job in jobs):
                raise BadResponse("the jobs answer has no list of jobs")
            return jobs

        return Call(request, read)

    def hot(self, job: str | None, n: int | None) -> Call:
        params = {}
        if job is not None:
            params["job"] = job
        if n is not None:
            params["n"] = str(n)
        request = self._request(self.admin, "GET", "/v1/hot", params)
        as_object = self.json_object(request)

        def read(response: Response) -> dict[str, list[dict[str, Any]]]:
            jobs = as_object(response).get("jobs")
            if not isinstance(jobs, dict) or not all(
                isinstance(keys, list) and all(isinstance(hot, dict) for hot in keys)
                for keys in jobs.values()
            ):
                raise BadResponse("the hot keys answer has no object of jobs")
            return jobs

        return Call(request, read)

    @staticmethod
    def json_object(request: Request) -> Callable[[Response], dict[str, Any]]:
        """The reader of an answer that is a JSON object (L{BadResponse} if it is not)."""

        def read(response: Response) -> dict[str, Any]:
            try:
                document = json.loads(response.content)
            except ValueError:
                document = None
            if not isinstance(document, dict):
                raise BadResponse(
                    f"{request.method} {request.path} answered "
                    f"{response.status_code} without a JSON object"
                )
            return document

        return read


_PLAIN = re.compile(r"[A-Za-z0-9_.~-]*")


def _quoted(text: str) -> str:
    """C{text} percent-encoded for a query (every byte but A-Z a-z 0-9 _ . ~ -)."""
    return text if _PLAIN.fullmatch(text) else quote(text, safe="")


def _fallback(default: Any) -> Callable[[], Any] | None:
    return None if default is NO_DEFAULT else (lambda: default)


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

"""
L{Client}, the synchronous client of both listeners, and its request helpers:
job arguments, batch items, PUT bodies, defaults that cover an outage.
"""

from __future__ import annotations

import enum
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, overload
from urllib.parse import quote

import httpx

from refresherd.client.answers import Raw, answer_value
from refresherd.client.breaker import (
    DEFAULT_CIRCUIT_COOLDOWN,
    DEFAULT_CIRCUIT_FAILURES,
    CircuitBreaker,
)
from refresherd.client.errors import (
    BadResponse,
    CircuitOpen,
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

    # The overload with C{default} comes first: else C{default="x"} would match
    # C{**kwargs} of the other, as if it were a job argument.
    @overload
    def get(
        self, job: str, args: JobArgs | None = None, /, *, default: T, **kwargs: ArgValue
    ) -> dict[str, Any] | T: ...

    @overload
    def get(
        self, job: str, args: JobArgs | None = None, /, **kwargs: ArgValue
    ) -> dict[str, Any]: ...

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
    def raw(
        self, job: str, args: JobArgs | None = None, /, *, default: T, **kwargs: ArgValue
    ) -> Raw | T: ...

    @overload
    def raw(self, job: str, args: JobArgs | None = None, /, **kwargs: ArgValue) -> Raw: ...

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
        (C{PUT /v1/jobs/{job}}, a write token, a job with C{writable = true}:
        L{Forbidden} otherwise): C{bytes} as given
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

    def warm(
        self, job: str, sets: Sequence[Mapping[str, Any]], timeout: float | None = None
    ) -> list[dict[str, Any]]:
        """
        Make the values of C{job} for each argument set of C{sets} (at most 100)
        ready: fetched and stored unless fresh.  One result per set, in order,
        as the service gives it (C{{"key", "result": "fresh" | "done" |
        "not_stored" | "failed", "code", "error"}}): a bad set fails alone.  The
        answer comes when every fetch is done, so C{timeout} may be longer
        than the client's.
        """
        body = {"args": [dict(arguments) for arguments in sets]}
        path = _job_path(job) + "/warm"
        answer = self._object(self._send("POST", self.admin_url, path, body=body, timeout=timeout))
        results = answer.get("results")
        if (
            not isinstance(results, list)
            or len(results) != len(sets)
            or not all(isinstance(r, dict) and isinstance(r.get("result"), str) for r in results)
        ):
            raise BadResponse("the warm answer has no result for each argument set")
        return results

    def jobs(self) -> list[dict[str, Any]]:
        """The configured jobs, as the service describes them (secrets redacted)."""
        answer = self._object(self._send("GET", self.admin_url, "/v1/jobs"))
        jobs = answer.get("jobs")
        if not isinstance(jobs, list) or not all(isinstance(job, dict) for job in jobs):
            raise BadResponse("the jobs answer has no list of jobs")
        return jobs

    def hot(self, job: str | None = None, n: int | None = None) -> dict[str, list[dict[str, Any]]]:
        """
        The keys requested most lately (C{GET /v1/hot}): per job (only C{job},
        if given), at most C{n} (default: all the service keeps), each
        C{{"key", "args", "rate", "error"}}, highest rate first.
        """
        params = {}
        if job is not None:
            params["job"] = job
        if n is not None:
            params["n"] = str(n)
        answer = self._object(self._send("GET", self.admin_url, "/v1/hot", params=params))
        jobs = answer.get("jobs")
        if not isinstance(jobs, dict) or not all(
            isinstance(keys, list) and all(isinstance(hot, dict) for hot in keys)
            for keys in jobs.values()
        ):
            raise BadResponse("the hot keys answer has no object of jobs")
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
        timeout: float | None = None,
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
                method,
                base + path,
                params=params or None,
                headers=headers,
                content=content,
                timeout=(
                    httpx.USE_CLIENT_DEFAULT
                    if timeout is None
                    else httpx.Timeout(timeout, connect=self.connect_timeout)
                ),
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
            raise self._unreachable(shown, e, timeout or self.timeout) from None
        except BaseException:
            breaker.abandoned()
            raise
        if breaker.succeeded():
            log.info("refresherd at %s answers again", shown)
        if response.status_code >= 400:
            raise service_error(response)
        return response

    def _unreachable(self, shown: str, error: httpx.TransportError, timeout: float) -> Unreachable:
        if isinstance(error, httpx.ConnectTimeout):
            return Unreachable(
                shown, f"cannot reach {shown}: no connection within {self.connect_timeout:g} s"
            )
        if isinstance(error, httpx.TimeoutException):
            return Unreachable(shown, f"no answer from {shown} within {timeout:g} s")
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

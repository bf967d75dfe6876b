"""
L{Client}, the synchronous client of both listeners: each method's call
(L{refresherd.client.calls}) sent over a transport
(L{refresherd.client.transports}).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, overload

from refresherd.client import direct
from refresherd.client.answers import Raw, answer_value
from refresherd.client.breaker import DEFAULT_CIRCUIT_COOLDOWN, DEFAULT_CIRCUIT_FAILURES
from refresherd.client.calls import (
    DEFAULT_ADMIN_URL,
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    NO_DEFAULT,
    ArgValue,
    BatchItem,
    Call,
    JobArgs,
    Listeners,
    Request,
    Response,
    TransportError,
    _batch_item,
    _job_args,
)
from refresherd.client.errors import ServiceError, Unreachable
from refresherd.client.transports import Transport, transport_of

T = TypeVar("T")
log = logging.getLogger("refresherd.client")
_NO_DEFAULT = NO_DEFAULT


class Client:
    """
    A synchronous client of refresherd's public listener at C{url} and its
    admin listener at C{admin_url}.  Connections are kept alive and pooled,
    and one client may be shared by every thread of a process; every request
    gives up after C{timeout} seconds (C{connect_timeout} for the connection
    alone, when given).  C{token}, when given, is sent as C{Authorization:
    Bearer TOKEN} to both.  C{transport} replaces the network: an
    L{HTTPTransport} of its own by default (C{http.client}), or any C{httpx}
    transport (an C{httpx.MockTransport} in tests).  Close it, or use it as a
    context manager.

    After C{circuit_failures} failures in a row to reach a listener (0: never)
    requests to it fail at once with L{CircuitOpen} (or return their
    C{default}) for C{circuit_cooldown} seconds, then one trial request
    decides; C{clock} gives the breaker's monotonic seconds.

    Job arguments are keyword arguments, or a mapping given after the job
    name for names that are also parameters of a method (C{default}, C{args},
    C{content_type}): C{client.get("report", {"default": "x"}, year=2024)}.
    Values are strings, integers or UUIDs.

    With C{redis_url}, the URL of the Redis the service stores in (a
    read-only user is enough), L{get}, L{value}, L{raw} and L{get_many} read
    fresh hits straight from Redis and answer them without asking the
    service; anything else goes to the service (docs/clients.md, "Direct
    reads").  This needs the C{redis} package (C{pip install refresherd[redis-client]}).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        admin_url: str = DEFAULT_ADMIN_URL,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: Any = None,
        *,
        connect_timeout: float | None = None,
        circuit_failures: int = DEFAULT_CIRCUIT_FAILURES,
        circuit_cooldown: float = DEFAULT_CIRCUIT_COOLDOWN,
        clock: Callable[[], float] = time.monotonic,
        redis_url: str | None = None,
    ) -> None:
        self._calls = Listeners.of(
            url,
            admin_url,
            token,
            timeout,
            connect_timeout,
            circuit_failures,
            circuit_cooldown,
            clock,
        )
        self.url = self._calls.public.base
        self.admin_url = self._calls.admin.base
        self.timeout = timeout
        self.connect_timeout = self._calls.connect_timeout
        self._transport: Transport = transport_of(transport)
        self._direct = None if redis_url is None else DirectReads(self, redis_url, clock)

    def __repr__(self) -> str:
        # Never the token.
        return f"<Client url={self.url!r} admin_url={self.admin_url!r}>"

    def close(self) -> None:
        """Close the pooled connections."""
        self._transport.close()
        if self._direct is not None:
            self._direct.close()

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
        return self._calls.circuit(listener)

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
        if self._direct is not None:
            hit = self._direct.hit(job, _job_args(args, kwargs))
            if hit is not None:
                return hit
        return self._run(self._calls.get(job, args, kwargs, default))

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
        item when refresherd is down.  With C{redis_url}, the fresh hits are
        read in Redis (one C{MGET} for all) and only the other items are
        asked of the service.
        """
        if self._direct is None:
            return self._run(self._calls.get_many(items, default))
        batch = [_batch_item(item) for item in items]
        hits = self._direct.hits([(item["job"], item["args"]) for item in batch], direct.hit_of)
        rest = [item for item, hit in zip(batch, hits, strict=True) if hit is None]
        return direct.merged(hits, self._run(self._calls.get_many(rest, default)) if rest else ())

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
        if self._direct is not None:
            raw = self._direct.hit(job, _job_args(args, kwargs), direct.raw_of)
            if raw is not None:
                return raw
        return self._run(self._calls.raw(job, args, kwargs, default))

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
        if self._direct is not None:
            hit = self._direct.hit(job, _job_args(args, kwargs))
            if hit is not None:
                return answer_value(hit)
        return self._run(self._calls.value(job, args, kwargs, default))

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
        result: dict[str, Any] = self._run(self._calls.put(job, body, args, kwargs, content_type))
        return result

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
        purged: int = self._run(self._calls.purge(keys, jobs, tags, soft))
        return purged

    def inspect(self, key: str, value: bool = False) -> dict[str, Any]:
        """The metadata of the entry stored at C{key}, with its value when C{value}."""
        entry: dict[str, Any] = self._run(self._calls.inspect(key, value))
        return entry

    def refresh(
        self, job: str, args: JobArgs | None = None, /, **kwargs: ArgValue
    ) -> dict[str, Any]:
        """Start a refresh of C{job} with C{args} now: C{{"job", "key", "status": "pending"}}."""
        answer: dict[str, Any] = self._run(self._calls.refresh(job, args, kwargs))
        return answer

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
        results: list[dict[str, Any]] = self._run(self._calls.warm(job, sets, timeout))
        return results

    def jobs(self) -> list[dict[str, Any]]:
        """The configured jobs, as the service describes them (secrets redacted)."""
        jobs: list[dict[str, Any]] = self._run(self._calls.jobs())
        return jobs

    def reload(self) -> dict[str, Any]:
        """
        Have the service read its configuration file again (C{POST /v1/reload}):
        what changed (C{{"source", "jobs", "added", "changed", "removed",
        "new_keys", "tokens"}}), or L{ReloadRefused} with the reason, the
        configuration loaded before still served.
        """
        answer: dict[str, Any] = self._run(self._calls.reload())
        return answer

    def hot(self, job: str | None = None, n: int | None = None) -> dict[str, list[dict[str, Any]]]:
        """
        The keys requested most lately (C{GET /v1/hot}): per job (only C{job},
        if given), at most C{n} (default: all the service keeps), each
        C{{"key", "args", "rate", "error"}}, highest rate first.
        """
        hot: dict[str, list[dict[str, Any]]] = self._run(self._calls.hot(job, n))
        return hot

    # -- plumbing -----------------------------------------------------------------------

    def _run(self, call: Call) -> Any:
        """The result of C{call}: its request sent, its answer read, its fallback on an outage."""
        if call.request is None:
            return call.read(None)  # type: ignore[arg-type]
        try:
            return call.read(self._send(call.request))
        except (Unreachable, ServiceError) as e:
            return self._calls.recover(call, e)

    def _send(self, request: Request) -> Response:
        calls = self._calls
        breaker = calls.start(request)
        try:
            response = self._transport.send(
                request,
                calls.headers_of(request),
                request.timeout or calls.timeout,
                calls.connect_timeout,
            )
        except TransportError as e:
            raise calls.unreachable(request, breaker, e) from None
        except BaseException:
            breaker.abandoned()
            raise
        return calls.answered(breaker, request, response)


class DirectReads:
    """
    The direct reads of a L{Client} (docs/clients.md, "Direct reads"): the
    state of L{direct.DirectReads}, the layout asked of the service with the
    client's own requests, one C{MGET} per read in Redis.
    """

    def __init__(self, client: Client, redis_url: str, clock: Callable[[], float]) -> None:
        try:
            import redis
        except ImportError:
            raise ImportError(
                "direct reads need the redis package: pip install refresherd[redis-client]"
            ) from None
        self._redis = redis.Redis.from_url(
            redis_url,
            socket_timeout=client.timeout,
            socket_connect_timeout=client.connect_timeout,
        )
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._client = client
        self._clock = clock
        self._now: Callable[[], float] = time.time
        self._random: Callable[[], float] = random.random
        self.state = direct.DirectReads()

    def close(self) -> None:
        self._redis.close()

    def hit(
        self, job: str, args: dict[str, str], answer_of: direct.AnswerOf = direct.hit_of
    ) -> Any:
        """
        The answer of a fresh hit read in Redis (by C{answer_of}: L{direct.hit_of}
        or L{direct.raw_of}); None when the service must answer.
        """
        self._recheck()
        read = self.state.read(job, args, self._clock())
        if read is None:
            return None
        values = self._mget(read.keys)
        return None if values is None else answer_of(read, values, self._now(), self._random())

    def hits(
        self, lookups: Sequence[tuple[str, dict[str, str]]], answer_of: direct.AnswerOf
    ) -> list[Any]:
        """As L{hit}, for many lookups in one C{MGET}: None for each the service must answer."""
        self._recheck()
        batch = self.state.batch(lookups, self._clock())
        values = None if batch is None else self._mget(batch.keys)
        if batch is None or values is None:
            return [None] * len(lookups)
        return batch.answers(values, self._now(), self._random, answer_of)

    def _mget(self, keys: Sequence[str]) -> Any:
        """What an C{MGET} of C{keys} finds; None when Redis failed (no direct read for a while)."""
        try:
            return self._redis.mget(keys)
        except self._errors as e:
            self.state.redis_failed(self._clock())
            log.warning("direct reads stop for %g s: Redis: %s", direct.REDIS_BACKOFF, e)
            return None

    def _recheck(self) -> None:
        """Ask the service for its layout, when it is due."""
        headers = self.state.layout_due(self._clock())
        if headers is None:
            return
        public = self._client._calls.public
        request = Request(public, "GET", public.prefix + "/v1/layout", headers)
        try:
            response = self._client._send(request)
            self.state.layout_answered(
                response.status_code, response.content, response.headers.get("ETag")
            )
        except (Unreachable, ServiceError, ValueError) as e:
            self.state.layout_failed()
            log.warning("direct reads stop for %g s: no layout: %s", direct.LAYOUT_RECHECK, e)

"""
L{AsyncClient}, the asyncio client of both listeners: the calls of
L{refresherd.client.Client} (L{refresherd.client.calls}), awaited, over
L{AsyncHTTPTransport}, HTTP/1.1 on asyncio streams kept alive.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol

from refresherd.client import direct
from refresherd.client.answers import answer_value
from refresherd.client.breaker import DEFAULT_CIRCUIT_COOLDOWN, DEFAULT_CIRCUIT_FAILURES
from refresherd.client.calls import (
    DEFAULT_ADMIN_URL,
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    NO_DEFAULT,
    ArgValue,
    BatchItem,
    Call,
    Failure,
    JobArgs,
    Listeners,
    Origin,
    Request,
    Response,
    TransportError,
    _batch_item,
    _job_args,
    failure_of,
)
from refresherd.client.errors import ServiceError, Unreachable
from refresherd.client.http11 import MAX_HEAD, Answer, BadAnswer, read_answer, request_head
from refresherd.client.transports import MAX_IDLE

log = logging.getLogger("refresherd.client")

_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class AsyncTransport(Protocol):
    """Sends a request and brings back its answer (L{TransportError} if none)."""

    async def send(
        self, request: Request, headers: dict[str, str], timeout: float, connect_timeout: float
    ) -> Response: ...

    async def aclose(self) -> None: ...


class AsyncHTTPTransport:
    """
    HTTP/1.1 connections on asyncio streams, kept alive and reused, per event
    loop: a request takes an idle connection of its listener (or opens one)
    and gives it back when its answer is read, unless the service closes it.
    The whole request, its answer read, must be done within the timeout.  A
    kept connection the service closed while idle is replaced, and a request
    that finds it closed before any answer is sent again once on a new one.
    A request cancelled midway closes its connection.  C{context} verifies
    C{https://} listeners (the system's certificates by default).
    """

    def __init__(self, context: ssl.SSLContext | None = None, max_idle: int = MAX_IDLE) -> None:
        self._context = context
        self._max_idle = max_idle
        self._idle: dict[asyncio.AbstractEventLoop, dict[str, list[_Connection]]] = {}
        self._closed = False

    async def send(
        self, request: Request, headers: dict[str, str], timeout: float, connect_timeout: float
    ) -> Response:
        if self._closed:
            raise RuntimeError("the client is closed")
        origin = request.origin
        pools = self._idle.get(loop := asyncio.get_running_loop())
        if pools is None:
            self._forget_closed_loops()
            pools = self._idle.setdefault(loop, {})
        idle = pools.setdefault(origin.base, [])
        head = request_head(
            request.method, request.target, origin.host_header, headers, request.body
        )
        if request.body:
            head += request.body
        while True:
            if idle:
                reader, writer = idle.pop()
                reused = True
                if reader.at_eof() or writer.is_closing():
                    writer.close()
                    continue
            else:
                reader, writer = await self._connect(origin, connect_timeout)
                reused = False
            try:
                async with asyncio.timeout(timeout):
                    writer.write(head)
                    try:
                        await writer.drain()
                    except (ConnectionResetError, BrokenPipeError):
                        # Refused at its head (a 401 before a large body was taken): the
                        # answer may have come before the connection was closed.
                        early = await _answer_after_failed_write(reader, request.method)
                        if early is None:
                            raise
                        writer.close()
                        return Response(early.status, early.reason, early.headers, early.body)
                    answer = await read_answer(reader, request.method)
            except asyncio.IncompleteReadError as e:
                writer.close()
                if reused and not e.partial:
                    continue  # closed by the service as the request went: no answer was sent
                raise TransportError(Failure.CLOSED) from None
            except (ConnectionResetError, BrokenPipeError) as e:
                writer.close()
                if reused:
                    continue
                raise failure_of(e) from None
            except TimeoutError:
                writer.close()
                raise TransportError(Failure.TIMEOUT) from None
            except OSError as e:
                writer.close()
                raise failure_of(e) from None
            except BadAnswer as e:
                writer.close()
                raise TransportError(Failure.OTHER, f"a bad answer: {e}") from None
            except BaseException:
                writer.close()
                raise
            if answer.keep and not self._closed and len(idle) < self._max_idle:
                idle.append((reader, writer))
            else:
                writer.close()
            return Response(answer.status, answer.reason, answer.headers, answer.body)

    def _forget_closed_loops(self) -> None:
        """
        Drop the connections of event loops closed since (one per request of a
        sync view run by asgiref's C{async_to_sync}, one per C{asyncio.run}):
        each is shut down at once, so the service sees it end, and its socket is
        closed as it is collected (its loop cannot close it any more).
        """
        for loop in [loop for loop in self._idle if loop.is_closed()]:
            for idle in self._idle.pop(loop).values():
                for _, writer in idle:
                    sock = writer.get_extra_info("socket")
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except (AttributeError, OSError):
                        pass  # no socket, or one already shut

    async def _connect(self, origin: Origin, connect_timeout: float) -> _Connection:
        context = None
        if origin.scheme == "https":
            if self._context is None:  # made once: it reads the system's certificates
                self._context = ssl.create_default_context()
            context = self._context
        try:
            async with asyncio.timeout(connect_timeout):
                return await asyncio.open_connection(
                    origin.host, origin.port, ssl=context, limit=MAX_HEAD
                )
        except TimeoutError:
            raise TransportError(Failure.CONNECT_TIMEOUT) from None
        except OSError as e:
            raise failure_of(e) from None

    async def aclose(self) -> None:
        """Close the idle connections of this loop (of others, forget them)."""
        self._closed = True
        here = self._idle.pop(asyncio.get_running_loop(), {})
        self._idle.clear()
        for idle in here.values():
            for _, writer in idle:
                writer.close()


async def _answer_after_failed_write(reader: asyncio.StreamReader, method: str) -> Answer | None:
    """
    The answer the service sent before it closed the connection a request was
    sent on, from what C{reader} holds (it refuses to be read once the
    connection failed, so its buffer is read as it is).
    """
    buffered = asyncio.StreamReader()
    buffered.feed_data(bytes(getattr(reader, "_buffer", b"")))
    buffered.feed_eof()
    try:
        return await read_answer(buffered, method)
    except (asyncio.IncompleteReadError, BadAnswer):
        return None


class AsyncClient:
    """
    L{refresherd.client.Client} for asyncio: the same constructor (C{transport}
    an L{AsyncTransport}, L{AsyncHTTPTransport} by default), the same methods
    and results, errors, C{default=} and circuit breaker, each method a
    coroutine: C{answer = await client.get("tweets", username="bob")}.  One
    client may serve every task of a process, and several event loops (its
    connections are kept per loop).  Close it with C{await client.aclose()}, or
    use it as an C{async with} context manager.

    With C{redis_url}, as L{refresherd.client.Client}: L{get}, L{value},
    L{raw} and L{get_many} read fresh hits straight from Redis
    (C{redis.asyncio}, a connection pool per event loop).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        admin_url: str = DEFAULT_ADMIN_URL,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: AsyncTransport | None = None,
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
        self._transport: AsyncTransport = transport or AsyncHTTPTransport()
        self._direct = None if redis_url is None else AsyncDirectReads(self, redis_url, clock)

    def __repr__(self) -> str:
        # Never the token.
        return f"<AsyncClient url={self.url!r} admin_url={self.admin_url!r}>"

    async def aclose(self) -> None:
        """Close the pooled connections (those to Redis: of the running event loop)."""
        await self._transport.aclose()
        if self._direct is not None:
            await self._direct.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def circuit(self, listener: str = "public") -> str:
        """The state of the circuit of the C{"public"} or C{"admin"} listener."""
        return self._calls.circuit(listener)

    # -- public listener: as Client's --------------------------------------------------

    async def get(
        self,
        job: str,
        args: JobArgs | None = None,
        /,
        *,
        default: Any = NO_DEFAULT,
        **kwargs: ArgValue,
    ) -> Any:
        """As L{Client.get}: the answer of C{GET /v1/jobs/{job}?{args}}."""
        if self._direct is not None:
            hit = await self._direct.hit(job, _job_args(args, kwargs))
            if hit is not None:
                return hit
        return await self._run(self._calls.get(job, args, kwargs, default))

    async def get_many(self, items: Iterable[BatchItem], /, *, default: Any = NO_DEFAULT) -> Any:
        """As L{Client.get_many}: many values in one request (C{POST /v1/fetch})."""
        if self._direct is None:
            return await self._run(self._calls.get_many(items, default))
        batch = [_batch_item(item) for item in items]
        lookups = [(item["job"], item["args"]) for item in batch]
        hits = await self._direct.hits(lookups, direct.hit_of)
        rest = [item for item, hit in zip(batch, hits, strict=True) if hit is None]
        asked = await self._run(self._calls.get_many(rest, default)) if rest else ()
        return direct.merged(hits, asked)

    async def raw(
        self,
        job: str,
        args: JobArgs | None = None,
        /,
        *,
        default: Any = NO_DEFAULT,
        **kwargs: ArgValue,
    ) -> Any:
        """As L{Client.raw}: the stored body itself, a L{Raw}."""
        if self._direct is not None:
            raw = await self._direct.hit(job, _job_args(args, kwargs), direct.raw_of)
            if raw is not None:
                return raw
        return await self._run(self._calls.raw(job, args, kwargs, default))

    async def value(
        self,
        job: str,
        args: JobArgs | None = None,
        /,
        *,
        default: Any = NO_DEFAULT,
        **kwargs: ArgValue,
    ) -> Any:
        """As L{Client.value}: the value alone."""
        if self._direct is not None:
            hit = await self._direct.hit(job, _job_args(args, kwargs))
            if hit is not None:
                return answer_value(hit)
        return await self._run(self._calls.value(job, args, kwargs, default))

    async def put(
        self,
        job: str,
        body: Any,
        args: JobArgs | None = None,
        /,
        *,
        content_type: str | None = None,
        **kwargs: ArgValue,
    ) -> dict[str, Any]:
        """As L{Client.put}: store C{body} as the value of C{job} with C{args}."""
        answer: dict[str, Any] = await self._run(
            self._calls.put(job, body, args, kwargs, content_type)
        )
        return answer

    # -- admin listener: as Client's ---------------------------------------------------

    async def purge(
        self,
        keys: Iterable[str] = (),
        jobs: Iterable[str] = (),
        tags: Iterable[str] = (),
        soft: bool = False,
    ) -> int:
        """As L{Client.purge}: the number purged."""
        purged: int = await self._run(self._calls.purge(keys, jobs, tags, soft))
        return purged

    async def inspect(self, key: str, value: bool = False) -> dict[str, Any]:
        """As L{Client.inspect}."""
        entry: dict[str, Any] = await self._run(self._calls.inspect(key, value))
        return entry

    async def refresh(
        self, job: str, args: JobArgs | None = None, /, **kwargs: ArgValue
    ) -> dict[str, Any]:
        """As L{Client.refresh}."""
        answer: dict[str, Any] = await self._run(self._calls.refresh(job, args, kwargs))
        return answer

    async def warm(
        self, job: str, sets: Sequence[Mapping[str, Any]], timeout: float | None = None
    ) -> list[dict[str, Any]]:
        """As L{Client.warm}."""
        results: list[dict[str, Any]] = await self._run(self._calls.warm(job, sets, timeout))
        return results

    async def jobs(self) -> list[dict[str, Any]]:
        """As L{Client.jobs}."""
        jobs: list[dict[str, Any]] = await self._run(self._calls.jobs())
        return jobs

    async def reload(self) -> dict[str, Any]:
        """As L{Client.reload}."""
        answer: dict[str, Any] = await self._run(self._calls.reload())
        return answer

    async def hot(
        self, job: str | None = None, n: int | None = None
    ) -> dict[str, list[dict[str, Any]]]:
        """As L{Client.hot}."""
        hot: dict[str, list[dict[str, Any]]] = await self._run(self._calls.hot(job, n))
        return hot

    # -- plumbing: as Client's, awaited ---------------------------------------------------

    async def _run(self, call: Call) -> Any:
        if call.request is None:
            return call.read(None)  # type: ignore[arg-type]
        try:
            return call.read(await self._send(call.request))
        except (Unreachable, ServiceError) as e:
            return self._calls.recover(call, e)

    async def _send(self, request: Request) -> Response:
        calls = self._calls
        breaker = calls.start(request)
        try:
            response = await self._transport.send(
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


class AsyncDirectReads:
    """
    The direct reads of an L{AsyncClient}: as L{refresherd.client.Client}'s,
    awaited, with a C{redis.asyncio} client per event loop.
    """

    def __init__(self, client: AsyncClient, redis_url: str, clock: Callable[[], float]) -> None:
        try:
            import redis.asyncio
        except ImportError:
            raise ImportError(
                "direct reads need the redis package: pip install refresherd[redis-client]"
            ) from None
        timeout, connect_timeout = client.timeout, client.connect_timeout

        def connect() -> Any:
            return redis.asyncio.Redis.from_url(
                redis_url, socket_timeout=timeout, socket_connect_timeout=connect_timeout
            )

        self._connect = connect
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._client = client
        self._clock = clock
        self._now: Callable[[], float] = time.time
        self._random: Callable[[], float] = random.random
        self.state = direct.DirectReads()

    def _redis(self) -> Any:
        loop = asyncio.get_running_loop()
        client = self._by_loop.get(loop)
        if client is None:
            client = self._by_loop[loop] = self._connect()
        return client

    async def aclose(self) -> None:
        client = self._by_loop.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    async def hit(
        self, job: str, args: dict[str, str], answer_of: direct.AnswerOf = direct.hit_of
    ) -> Any:
        """As L{refresherd.client._client.DirectReads.hit}, awaited."""
        await self._recheck()
        read = self.state.read(job, args, self._clock())
        if read is None:
            return None
        values = await self._mget(read.keys)
        return None if values is None else answer_of(read, values, self._now(), self._random())

    async def hits(
        self, lookups: Sequence[tuple[str, dict[str, str]]], answer_of: direct.AnswerOf
    ) -> list[Any]:
        """As L{refresherd.client._client.DirectReads.hits}, awaited."""
        await self._recheck()
        batch = self.state.batch(lookups, self._clock())
        values = None if batch is None else await self._mget(batch.keys)
        if batch is None or values is None:
            return [None] * len(lookups)
        return batch.answers(values, self._now(), self._random, answer_of)

    async def _mget(self, keys: Sequence[str]) -> Any:
        try:
            return await self._redis().mget(keys)
        except self._errors as e:
            self.state.redis_failed(self._clock())
            log.warning("direct reads stop for %g s: Redis: %s", direct.REDIS_BACKOFF, e)
            return None

    async def _recheck(self) -> None:
        """Ask the service for its layout, when it is due."""
        headers = self.state.layout_due(self._clock())
        if headers is None:
            return
        public = self._client._calls.public
        request = Request(public, "GET", public.prefix + "/v1/layout", headers)
        try:
            response = await self._client._send(request)
            self.state.layout_answered(
                response.status_code, response.content, response.headers.get("ETag")
            )
        except (Unreachable, ServiceError, ValueError) as e:
            self.state.layout_failed()
            log.warning("direct reads stop for %g s: no layout: %s", direct.LAYOUT_RECHECK, e)

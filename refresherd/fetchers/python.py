"""
The C{fetch = "python"} fetcher: a function of the operator's, named by the
job's C{callable} as C{"package.module:name"} (the name may be dotted, such
as C{"module:Class.method"}), called with the job's arguments as keyword
arguments.

Where the function runs:

  - A coroutine function (C{async def}) and a function decorated with
    L{reactor_call} run in the reactor thread.  They must not block.  A
    L{reactor_call} function may return a plain value, a L{Deferred} or a
    coroutine.  What a coroutine may await depends on the reactor:
      - under Twisted's asyncio reactor (C{twistd -r asyncio}) it runs as an
        asyncio Task on the reactor's event loop (L{as_task}), so it may
        await L{Deferred}s and asyncio futures alike (C{asyncio.sleep},
        aiohttp...), and C{asyncio.current_task()} is that Task;
      - under any other reactor it is driven by L{Deferred.fromCoroutine} and
        may await L{Deferred}s only: awaiting asyncio fails the fetch with a
        L{FetchError} saying it needs the asyncio reactor.
  - Every other function runs in the job's own thread pool (L{make_threadpool},
    at most C{concurrency} threads) and returns a plain value.  It may block;
    it must not touch the reactor or return a L{Deferred}.

The result becomes the stored value (docs/configuration.md, "Python jobs"): C{bytes} as
C{application/octet-stream}, C{str} as C{text/plain; charset=utf-8}, anything
else as its compact JSON encoding, C{application/json}.  A result that does
not encode (NaN, sets, objects...) or is larger than C{max_value_bytes} is a
failure.  The function may instead return a L{refresherd.Result}: its
C{value} is stored as above, and its windows, tags and content type are the
entry's own (L{to_fetched} checks them: a wrong field is a failure naming it).
An exception raised by the function becomes a L{FetchError} saying
C{"<ExceptionType>: <message>"} on one line, and its traceback is logged; the
function may raise L{FetchError} itself to give the exact message.

Cancelling a fetch fails it at once with L{CancelledError}.  A coroutine or
L{Deferred} is cancelled (an asyncio Task is cancelled, which throws
C{asyncio.CancelledError} into the coroutine); a function running in a thread
runs on, and its late result (or exception) is dropped.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import json
import math
import numbers
import threading
from collections.abc import Callable, Coroutine, Generator, Iterable, Mapping
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar

import attrs
from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from refresherd.config import JobConfig
from refresherd.entry import (
    Fetched,
    Lifetimes,
    check_json_body,
    content_type_problem,
    is_json_content_type,
)
from refresherd.errors import NEEDS_ASYNCIO, FetchError, one_line
from refresherd.fetchers import abandonable
from refresherd.interfaces import IFetcher
from refresherd.result import Result

_F = TypeVar("_F", bound=Callable[..., Any])
_T = TypeVar("_T")
_REACTOR_CALL = "__refresherd_reactor_call__"

JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"
BYTES_TYPE = "application/octet-stream"

MAX_RESULT_SECONDS = 3650 * 86400
"""The longest window a L{Result} may ask: 10 years (3650 days)."""
MAX_RESULT_TAGS = 64
"""
The most tags a L{Result} may give: with the job's (at most 128), within
L{refresherd.entry.MAX_TAGS}.
"""
MAX_RESULT_TAG_BYTES = 256
"""The longest tag a L{Result} may give, in bytes of UTF-8."""


def reactor_call(function: _F) -> _F:
    """
    Mark C{function} to be called in the reactor thread rather than in the
    job's thread pool: it may then return a L{Deferred} or a coroutine, and
    must not block.
    """
    setattr(function, _REACTOR_CALL, True)
    return function


def runs_in_reactor(function: Callable[..., Any]) -> bool:
    """True when C{function} is called in the reactor thread (see the module docstring)."""
    return inspect.iscoroutinefunction(function) or getattr(function, _REACTOR_CALL, False) is True


def resolve_callable(spec: str) -> Callable[..., Any]:
    """
    The object named by C{spec}, C{"package.module:name"} or
    C{"package.module:Name.attribute"}; L{ValueError} with one line when it
    cannot be imported, found or called.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute or ":" in attribute:
        raise ValueError(f"callable {spec!r} must be written 'package.module:function'")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as e:
        raise ValueError(
            one_line(f"callable {spec!r}: cannot import {module_name!r}: {_describe(e)}")
        ) from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"callable {spec!r}: {part!r} not found") from None
    if not callable(target):
        raise ValueError(f"callable {spec!r} is not callable")
    function: Callable[..., Any] = target
    return function


def make_threadpool(job: JobConfig) -> ThreadPool:
    """
    The thread pool of a python job: no idle threads, at most
    C{job.concurrency} daemon threads (so that a job stuck at exit cannot
    hold the process), named after the job.  Not started: the service starts
    and stops it.
    """
    pool = ThreadPool(minthreads=0, maxthreads=job.concurrency, name=f"refresherd-job-{job.name}")
    pool.threadFactory = functools.partial(threading.Thread, daemon=True)  # type: ignore[assignment]
    return pool


def _describe(error: BaseException) -> str:
    text = str(error)
    return one_line(f"{type(error).__name__}: {text}" if text.strip() else type(error).__name__)


def to_fetched(value: object, job: JobConfig) -> Fetched:
    """
    The stored form of a python job's result, a plain value or a L{Result}
    (see the module docstring); L{FetchError} with one line when it does not
    encode, is larger than C{job.max_value_bytes}, or a L{Result}'s field is
    wrong (naming the field).
    """
    if not isinstance(value, Result):
        return _encoded(value, None, job.max_value_bytes)
    lifetimes = _lifetimes(value, job)
    tags = _tags(value.tags)
    fetched = _encoded(value.value, _content_type(value.content_type), job.max_value_bytes)
    return attrs.evolve(fetched, lifetimes=lifetimes, tags=tags)


def _encoded(value: object, content_type: str | None, max_bytes: int) -> Fetched:
    """C{value} mapped by its type, with C{content_type} instead of the mapped one if given."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        fetched = Fetched(body=bytes(value), content_type=BYTES_TYPE)
    elif isinstance(value, str):
        try:
            fetched = Fetched(body=value.encode("utf-8"), content_type=TEXT_TYPE)
        except UnicodeEncodeError as e:
            raise FetchError(one_line(f"result is not valid text: {e}")) from None
    else:
        try:
            text = json.dumps(value, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError, RecursionError) as e:
            raise FetchError(one_line(f"result is not JSON-encodable: {e}")) from None
        fetched = Fetched(body=text.encode("utf-8"), content_type=JSON_TYPE)
    if len(fetched.body) > max_bytes:
        raise FetchError(f"result larger than {max_bytes} bytes")
    if content_type is None:
        return fetched
    if is_json_content_type(content_type) and fetched.content_type != JSON_TYPE:
        try:  # (what json.dumps made above is strict JSON already)
            check_json_body(fetched.body)
        except ValueError as e:  # UnicodeDecodeError is a ValueError
            raise FetchError(
                one_line(f"Result.content_type is JSON but the value is not valid JSON: {e}")
            ) from None
    return attrs.evolve(fetched, content_type=content_type)


def _lifetimes(result: Result, job: JobConfig) -> Lifetimes | None:
    """The windows of C{result}, the job's where it gives none; None when it gives none."""
    given = {"fresh": result.fresh, "stale": result.stale, "stale_if_error": result.stale_if_error}
    if all(seconds is None for seconds in given.values()):
        return None
    windows = {"fresh": job.fresh, "stale": job.stale, "stale_if_error": job.stale_if_error}
    why = dict.fromkeys(windows, "the job")
    for name, seconds in given.items():
        if seconds is not None:
            windows[name], why[name] = _seconds(name, seconds), "the job's Result"
    return Lifetimes(windows["fresh"], windows["stale"], windows["stale_if_error"], why)


def _seconds(name: str, value: object) -> float:
    """The seconds of the window C{name}: a finite number or L{timedelta}, 0 to 10 years."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
    else:
        raise FetchError(
            f"Result.{name} must be seconds (a number or a timedelta), not {type(value).__name__}"
        )
    if not 0 <= seconds <= MAX_RESULT_SECONDS:
        raise FetchError(
            f"Result.{name} must be from 0 to {MAX_RESULT_SECONDS} seconds (10 years),"
            f" not {seconds:g}"
        )
    return seconds


def _tags(tags: object) -> tuple[str, ...]:
    """The tags of a L{Result}, checked, in order, each once."""
    if isinstance(tags, (str, bytes, bytearray)) or not isinstance(tags, Iterable):
        raise FetchError(f"Result.tags must be an iterable of strings, not {type(tags).__name__}")
    kept: list[str] = []
    for tag in tags:
        if len(kept) == MAX_RESULT_TAGS:
            raise FetchError(f"Result.tags: more than {MAX_RESULT_TAGS} tags")
        if not isinstance(tag, str):
            raise FetchError(f"Result.tags: a tag must be a string, not {type(tag).__name__}")
        if not tag:
            raise FetchError("Result.tags: a tag is empty")
        try:
            size = len(tag.encode("utf-8"))
        except UnicodeEncodeError:
            raise FetchError(
                one_line(f"Result.tags: a tag is not valid text: {tag[:40]!r}")
            ) from None
        if size > MAX_RESULT_TAG_BYTES:
            raise FetchError(
                one_line(
                    f"Result.tags: a tag is over {MAX_RESULT_TAG_BYTES} bytes of UTF-8:"
                    f" {tag[:40]!r}..."
                )
            )
        kept.append(tag)
    return tuple(dict.fromkeys(kept))


def _content_type(content_type: object) -> str | None:
    """The content type a L{Result} asks for, checked; None when it asks for none."""
    if content_type is None:
        return None
    if not isinstance(content_type, str) or not content_type:
        shown = repr(content_type) if isinstance(content_type, str) else type(content_type).__name__
        raise FetchError(f"Result.content_type must be a non-empty string, not {shown}")
    why = content_type_problem(content_type)
    if why is not None:
        raise FetchError(f"Result.content_type cannot be stored: {why}")
    return content_type


@implementer(IFetcher)
@attrs.define
class PythonFetcher:
    """
    Fetches the values of one C{fetch = "python"} job.

    The thread pool is the job's own (L{make_threadpool}); its owner (the
    tap's service) starts and stops it, directly or with L{start} and L{stop}.

    @ivar job: The job.
    @ivar reactor: The reactor: results of threads are delivered through it,
        and whether it is the asyncio reactor decides how coroutines run.
    @ivar thread_pool: Where functions that are not run in the reactor run.
    @ivar function: The job's function, already resolved with
        L{resolve_callable}; when omitted, construction resolves
        C{job.callable} and raises L{ValueError} (one line) when it cannot.
    @ivar loop: The event loop of C{reactor} when it is Twisted's asyncio
        reactor (L{asyncio_loop}), where coroutines run as asyncio Tasks;
        C{None} under any other reactor.
    """

    job: JobConfig
    reactor: IReactorFromThreads
    thread_pool: ThreadPool
    function: Callable[..., Any] | None = None
    _target: Callable[..., Any] = attrs.field(init=False, repr=False)
    in_reactor: bool = attrs.field(init=False)
    loop: asyncio.AbstractEventLoop | None = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.function is None:
            if self.job.callable is None:
                raise ValueError(f"job {self.job.name!r} has no callable")
            self.function = resolve_callable(self.job.callable)
        self._target = self.function
        self.in_reactor = runs_in_reactor(self._target)
        self.loop = asyncio_loop(self.reactor)

    def fetch(self, args: Mapping[str, str]) -> Deferred[Fetched]:
        """
        Call the function with C{args} as keyword arguments.  Fires with the
        L{Fetched} result, fails with L{FetchError}; cancelling it fails it
        with L{CancelledError} at once.
        """
        call = partial(self._target, **args)
        if self.in_reactor:
            inner = maybeDeferred(_call_in_reactor, call, self.loop).addCallback(
                to_fetched, self.job
            )
        else:
            inner = deferToThreadPool(
                self.reactor,
                self.thread_pool,
                _call_in_thread,
                call,
                self.job,
            )
        # A thread cannot be stopped: its late result is dropped.
        return abandonable(inner, self._to_fetch_error, cancel_inner=self.in_reactor)

    def _to_fetch_error(self, reason: Failure) -> Exception:
        if isinstance(reason.value, _Raised):
            reason = reason.value.failure
        if isinstance(reason.value, FetchError):
            return reason.value
        assert reason.value is not None
        return FetchError(_describe(reason.value), detail=reason.getTraceback())


class _Raised(Exception):
    """What the function itself raised, as opposed to a conversion failure."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.getErrorMessage())
        self.failure = failure


def _call_in_reactor(
    call: Callable[[], Any], loop: asyncio.AbstractEventLoop | None
) -> Deferred[Any] | object:
    try:
        result = call()
    except BaseException:
        raise _Raised(Failure()) from None
    if inspect.iscoroutine(result):
        if loop is None:
            result = Deferred.fromCoroutine(_relay(result, on_asyncio=False))
        else:
            result = Deferred.fromFuture(as_task(result, loop))
    if isinstance(result, Deferred):
        return result.addErrback(lambda f: Failure(_Raised(f)))
    value: object = result
    return value


def asyncio_loop(reactor: object) -> asyncio.AbstractEventLoop | None:
    """
    The asyncio event loop C{reactor} runs on when it is Twisted's asyncio
    reactor, else C{None}.
    """
    if not isinstance(reactor, AsyncioSelectorReactor):
        return None
    # Twisted has no public accessor for it.  asyncio.get_event_loop() gives
    # the same loop only in the reactor's thread, and only when the reactor
    # made it the current loop (not when it was given a loop of its own).
    return reactor._asyncioEventloop


def as_task(coro: Coroutine[Any, Any, _T], loop: asyncio.AbstractEventLoop) -> asyncio.Task[_T]:
    """
    Run C{coro}, which may await L{Deferred}s and asyncio futures alike, as an
    asyncio Task on C{loop}; call it in C{loop}'s thread.  Cancelling the Task
    throws C{asyncio.CancelledError} into C{coro} and cancels the L{Deferred}
    it awaits, if any.
    """
    task = loop.create_task(_relay(coro, on_asyncio=True))
    # A Task cancelled before its first step never starts its coroutine, and
    # so neither C{coro}: close it rather than have it warn "never awaited".
    task.add_done_callback(lambda _: coro.close())
    return task


class _Yield:
    """Awaiting this yields C{value} to the driver, and returns what it sends back."""

    def __init__(self, value: object) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, Any, Any]:
        return (yield self.value)


async def _relay(coro: Coroutine[Any, Any, _T], on_asyncio: bool) -> _T:
    """
    Drive C{coro} one step at a time on behalf of this coroutine's own driver:
    an asyncio Task when C{on_asyncio}, else L{Deferred.fromCoroutine}.

    What C{coro} yields (the future it awaits; C{None} for a bare yield such
    as C{asyncio.sleep(0)}) goes up to the driver unchanged, and what the
    driver sends or throws back goes down to C{coro}, with two exceptions.  A
    Task cannot wait for a L{Deferred}: this waits for it instead, then
    resumes C{coro}, which reads the L{Deferred}'s result itself.  And
    L{Deferred.fromCoroutine} cannot wait for asyncio: that is a
    L{FetchError} saying so.
    """
    sent: Any = None
    error: BaseException | None = None
    while True:
        try:
            awaited = coro.send(sent) if error is None else coro.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        except RuntimeError as e:
            # What asyncio.get_running_loop() (asyncio.sleep...) raises outside a loop.
            if not on_asyncio and str(e) == "no running event loop":
                raise FetchError(NEEDS_ASYNCIO) from None
            raise
        if not on_asyncio and asyncio.isfuture(awaited):
            coro.close()
            raise FetchError(NEEDS_ASYNCIO)
        sent, error = None, None
        try:
            if on_asyncio and isinstance(awaited, Deferred):
                await _fired(awaited)
            else:
                sent = await _Yield(awaited)
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as e:  # Task cancellation, a failed Deferred...
            error = e


async def _fired(d: Deferred[Any]) -> None:
    """
    Wait in an asyncio Task until C{d} has fired, leaving its result in it
    for whoever awaited it.  When the wait is interrupted (the Task is
    cancelled), C{d} is cancelled and its outcome, now no one's, dropped.
    """
    woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake(result: object) -> object:
        if not woken.done():
            woken.set_result(None)
        return result

    d.addBoth(wake)
    try:
        await woken
    except BaseException:
        d.cancel()
        d.addErrback(lambda _: None)
        raise


def _call_in_thread(call: Callable[[], Any], job: JobConfig) -> Fetched:
    try:
        value = call()
    except BaseException:
        raise _Raised(Failure()) from None
    if isinstance(value, Deferred) or inspect.isawaitable(value):
        if inspect.iscoroutine(value):
            value.close()
        raise FetchError(
            "a function run in a thread returned a Deferred or a coroutine; "
            "make it a coroutine function or mark it with @reactor_call"
        )
    return to_fetched(value, job)

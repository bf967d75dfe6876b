"""
Python jobs whose coroutines use asyncio (docs/configuration.md, "Python jobs":
awaiting asyncio needs twistd's asyncio reactor).

Under Twisted's asyncio reactor a coroutine runs as a real asyncio Task
(L{as_task}) that may await Deferreds and asyncio futures alike.  These tests
run an asyncio loop of their own, by hand, with no reactor installed (its
timers are real: a few of 10 ms); C{twistd -r asyncio -n refresherd}, and
plain C{twistd -n refresherd} for the error that asks for it:
tests/e2e/test_fetch_python_asyncio.py.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from refresherd import Result
from refresherd.config import JobConfig
from refresherd.entry import Fetched
from refresherd.errors import FetchError
from refresherd.fetchers.python import (
    PythonFetcher,
    as_task,
    asyncio_loop,
    make_threadpool,
    reactor_call,
)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def logged() -> Iterator[EventLoggingObserver]:
    """Twisted's log events, such as "Unhandled error in Deferred"."""
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


def assert_quiet(logged: EventLoggingObserver) -> None:
    """Nothing was logged, even by Deferreds left holding a failure once collected."""
    gc.collect()
    assert [event.get("log_format") for event in logged] == []


def later(loop: asyncio.AbstractEventLoop, result: object) -> Deferred[Any]:
    """A Deferred the loop fires (with C{result}, or its failure) 10 ms from now."""
    d: Deferred[Any] = Deferred()
    if isinstance(result, BaseException):
        loop.call_later(0.01, d.errback, result)
    else:
        loop.call_later(0.01, d.callback, result)
    return d


def run(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> Any:
    return loop.run_until_complete(as_task(coro, loop))


# The shim: as_task on a loop of the test's own.


def test_a_task_awaits_deferreds_values(loop: asyncio.AbstractEventLoop) -> None:
    async def job() -> list[object]:
        return [await later(loop, "late"), await succeed("now")]

    assert run(loop, job()) == ["late", "now"]


def test_a_failed_deferred_raises_in_the_coroutine(
    loop: asyncio.AbstractEventLoop, logged: EventLoggingObserver
) -> None:
    async def job() -> str:
        try:
            await later(loop, KeyError("caught"))
        except KeyError as e:
            caught: str = e.args[0]
        await fail(ValueError("uncaught"))
        return caught

    with pytest.raises(ValueError, match="uncaught"):
        run(loop, job())
    assert_quiet(logged)


def test_a_task_awaits_asyncio_and_is_the_current_task(loop: asyncio.AbstractEventLoop) -> None:
    async def job() -> tuple[asyncio.Task[Any] | None, str]:
        await asyncio.sleep(0.01)
        await asyncio.sleep(0)
        value = await later(loop, "mixed")
        return asyncio.current_task(), value

    task = as_task(job(), loop)
    assert loop.run_until_complete(task) == (task, "mixed")


@pytest.mark.parametrize("awaiting", ["deferred", "future"])
def test_cancelling_the_task_throws_into_the_coroutine(
    loop: asyncio.AbstractEventLoop, logged: EventLoggingObserver, awaiting: str
) -> None:
    waiting: list[Deferred[None]] = [Deferred()]
    seen: list[str] = []

    async def job() -> None:
        try:
            if awaiting == "deferred":
                await waiting[0]
            else:
                await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        finally:
            seen.append("finally")

    task = as_task(job(), loop)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert seen == [] and not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(task)
    assert seen == ["cancelled", "finally"]
    assert waiting.pop().called == (awaiting == "deferred"), "the Deferred was not cancelled"
    assert_quiet(logged)


def test_a_task_cancelled_before_it_starts_closes_its_coroutine(
    loop: asyncio.AbstractEventLoop,
) -> None:
    async def job() -> None:
        raise AssertionError("never runs")

    coro = job()
    task = as_task(coro, loop)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(task)
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


# The fetcher under an asyncio reactor.


class LoopReactor(AsyncioSelectorReactor):
    """Passes for Twisted's asyncio reactor running C{loop}; nothing else of a reactor."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._asyncioEventloop = loop


def fetcher(loop: asyncio.AbstractEventLoop, function: Any) -> PythonFetcher:
    job = JobConfig(
        name="report", fresh=60.0, fetch="python", args=("name",), callable="tests:function"
    )
    return PythonFetcher(job, LoopReactor(loop), make_threadpool(job), function)


def test_the_fetcher_knows_the_reactors_loop(loop: asyncio.AbstractEventLoop) -> None:
    from twisted.internet import reactor

    assert asyncio_loop(LoopReactor(loop)) is loop
    assert asyncio_loop(reactor) is None


def test_a_fetch_runs_its_coroutine_as_a_task(loop: asyncio.AbstractEventLoop) -> None:
    async def job(name: str) -> dict[str, Any]:
        await asyncio.sleep(0.01)
        value = await later(loop, name)
        return {"value": value, "task": asyncio.current_task() is not None}

    @reactor_call
    def call(name: str) -> Any:
        return job(name)

    for function in (job, call):
        d = fetcher(loop, function).fetch({"name": "bob"})
        fetched = loop.run_until_complete(d.asFuture(loop))
        assert fetched == Fetched(b'{"value":"bob","task":true}', "application/json")


def test_a_task_may_return_a_result(loop: asyncio.AbstractEventLoop) -> None:
    async def job(name: str) -> Result:
        await asyncio.sleep(0.01)
        return Result(await later(loop, name), fresh=5, tags=("x",))

    d = fetcher(loop, job).fetch({"name": "bob"})
    fetched = loop.run_until_complete(d.asFuture(loop))
    assert (fetched.body, fetched.tags) == (b"bob", ("x",))
    assert fetched.lifetimes is not None and fetched.lifetimes.fresh == 5.0


def test_a_coroutine_that_raises_fails_the_fetch(
    loop: asyncio.AbstractEventLoop, logged: EventLoggingObserver
) -> None:
    async def job(name: str) -> None:
        await asyncio.sleep(0)
        raise KeyError(name)

    d = fetcher(loop, job).fetch({"name": "bob"})
    with pytest.raises(FetchError, match="^KeyError: 'bob'$") as raised:
        loop.run_until_complete(d.asFuture(loop))
    assert "in job" in (raised.value.detail or "")
    assert len(logged) == 0


def test_cancelling_a_fetch_cancels_its_task_quietly(
    loop: asyncio.AbstractEventLoop, logged: EventLoggingObserver
) -> None:
    waiting: list[Deferred[None]] = [Deferred()]
    seen: list[str] = []

    async def job(name: str) -> None:
        try:
            await asyncio.sleep(0)
            await waiting[0]
        finally:
            seen.append(name)

    d = fetcher(loop, job).fetch({"name": "bob"})
    loop.run_until_complete(asyncio.sleep(0.01))
    [task] = asyncio.all_tasks(loop)
    d.cancel()
    failures: list[Failure] = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(CancelledError), "the fetch did not fail at once"
    loop.run_until_complete(asyncio.wait([task]))
    assert task.cancelled() and waiting.pop().called and seen == ["bob"]
    assert_quiet(logged)

"""
The python fetcher (docs/configuration.md, "Python jobs"): where the job's
function runs (the job's thread pool, or the reactor thread for coroutine
functions and C{@reactor_call}), how its result is stored, how its failures read, and that
a cancelled fetch drops a late result quietly.

The jobs' functions are defined in this module and named as
C{tests.unit.test_fetch_python:<name>}.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import threading
from collections.abc import Iterator
from datetime import timedelta
from fractions import Fraction
from itertools import count
from typing import Any

import pytest
from twisted.internet import reactor as _reactor
from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.internet.threads import deferToThreadPool
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from refresherd import Result
from refresherd.config import JobConfig
from refresherd.core.jobs import Job
from refresherd.core.refresher import Refresher
from refresherd.entry import Entry, Fetched, Lifetimes
from refresherd.errors import FetchError
from refresherd.fetchers.python import (
    PythonFetcher,
    make_threadpool,
    reactor_call,
    resolve_callable,
    runs_in_reactor,
    to_fetched,
)
from refresherd.interfaces import IFetcher
from refresherd.metrics import metrics_for
from refresherd.stores.memory import MemoryStore
from tests.deferreds import as_deferred, result

global_reactor: Any = _reactor
HERE = "tests.unit.test_fetch_python"

# The jobs' functions.

PENDING: list[Deferred[Any]] = []
"""Deferreds that functions running in the reactor wait on, for the tests to fire."""

GATE = threading.Event()
"""What a blocked thread waits for."""

NOT_CALLABLE = 42


def where(name: str) -> dict[str, Any]:
    return {"name": name, "thread": threading.current_thread().name}


def awkward(f: str, reactor: str, threadpool: str, call: str) -> str:
    return f"{f} {reactor} {threadpool} {call}"


def returns(name: str) -> object:
    return {
        "bytes": b"\x00\xff",
        "str": "caf\u00e9",
        "list": [1, "two", None, True, 2.5],
        "none": None,
        "nan": math.nan,
        "set": {1, 2},
        "object": object(),
        "big": "x" * 11,
    }[name]


def raises(name: str) -> None:
    raise ValueError(name)


def raises_fetch_error(name: str) -> None:
    raise FetchError(name)


def returns_deferred_from_thread(name: str) -> Deferred[str]:
    return succeed(name)


async def returns_coroutine_value(name: str) -> str:
    return name


def returns_coroutine_from_thread(name: str) -> Any:
    return returns_coroutine_value(name)


def blocked(name: str) -> str:
    GATE.wait(10)
    raise RuntimeError(f"late failure for {name}")


async def awaits(name: str) -> dict[str, Any]:
    d: Deferred[str] = Deferred()
    PENDING.append(d)
    value = await d
    return {"name": name, "value": value, "thread": threading.current_thread().name}


async def awaits_then_raises(name: str) -> None:
    d: Deferred[None] = Deferred()
    PENDING.append(d)
    await d
    raise KeyError(name)


FUTURES: list[asyncio.Future[Any]] = []
"""asyncio futures that coroutines await, which only an asyncio reactor could wait for."""

FINISHED: list[str] = []
"""Names of coroutines whose C{finally} ran."""


async def awaits_asyncio_sleep(name: str) -> str:
    try:
        await asyncio.sleep(0.01)
        return name
    finally:
        FINISHED.append(name)


async def awaits_asyncio_future(name: str) -> str:
    try:
        await asyncio.sleep(0)  # A bare yield is fine under any reactor.
        await FUTURES[0]
        return name
    finally:
        FINISHED.append(name)


@reactor_call
def deferred(name: str) -> Deferred[str]:
    d: Deferred[str] = Deferred()
    PENDING.append(d)
    return d.addCallback(lambda value: f"{value} {name} {threading.current_thread().name}")


@reactor_call
def plain_in_reactor(name: str) -> list[str]:
    return [name, threading.current_thread().name]


@reactor_call
def coroutine_in_reactor(name: str) -> Any:
    return awaits(name)


@reactor_call
def raises_in_reactor(name: str) -> None:
    raise OSError(f"no {name}")


def returns_result(name: str) -> Result:
    return Result({"name": name}, fresh=5, tags=("x", f"user:{name}"))


def returns_bad_result(name: str) -> Result:
    return Result(name, fresh=-1)


async def awaits_result(name: str) -> Result:
    d: Deferred[str] = Deferred()
    PENDING.append(d)
    value = await d
    return Result(value, stale=timedelta(minutes=2), tags=[name])


@reactor_call
def deferred_result(name: str) -> Deferred[Result]:
    d: Deferred[str] = Deferred()
    PENDING.append(d)
    return d.addCallback(
        lambda value: Result(f"<p>{value}</p>", fresh=1.5, content_type="text/html")
    )


class Holder:
    @staticmethod
    def method(name: str) -> str:
        return f"held {name}"


# The tests.


def make_job(function: str, **overrides: Any) -> JobConfig:
    fields: dict[str, Any] = {
        "name": "report",
        "fresh": 60.0,
        "fetch": "python",
        "args": ("name",),
        "callable": f"{HERE}:{function}",
    }
    fields.update(overrides)
    return JobConfig(**fields)


def stored_as(value: object, max_bytes: int = 1000) -> Fetched:
    """What L{to_fetched} makes of C{value} for a job of C{max_value_bytes = max_bytes}."""
    return to_fetched(value, make_job("where", max_value_bytes=max_bytes))


@pytest.mark.parametrize(
    "value, body, content_type",
    [
        (b"\x00\xff", b"\x00\xff", "application/octet-stream"),
        (bytearray(b"ab"), b"ab", "application/octet-stream"),
        ("caf\u00e9", "caf\u00e9".encode(), "text/plain; charset=utf-8"),
        ("", b"", "text/plain; charset=utf-8"),
        ({"b": [1, 2.5], "a": None}, b'{"b":[1,2.5],"a":null}', "application/json"),
        ([], b"[]", "application/json"),
        (None, b"null", "application/json"),
        (True, b"true", "application/json"),
        (7, b"7", "application/json"),
        ("\u00e9", "\u00e9".encode(), "text/plain; charset=utf-8"),
        ({"s": "\u00e9"}, b'{"s":"\\u00e9"}', "application/json"),
    ],
)
def test_results_are_stored_by_type(value: object, body: bytes, content_type: str) -> None:
    assert stored_as(value) == Fetched(body=body, content_type=content_type)


@pytest.mark.parametrize(
    "value", [math.nan, math.inf, [1, -math.inf], {1, 2}, object(), {(1, 2): 3}, {"a": b"x"}]
)
def test_results_that_do_not_encode_are_failures(value: object) -> None:
    with pytest.raises(FetchError, match="^result is not JSON-encodable: "):
        stored_as(value)


def test_a_circular_result_is_a_failure() -> None:
    value: list[Any] = []
    value.append(value)
    with pytest.raises(FetchError, match="^result is not JSON-encodable: "):
        stored_as(value)


def test_a_str_that_is_not_text_is_a_failure() -> None:
    with pytest.raises(FetchError, match="^result is not valid text: "):
        stored_as("\ud800")


@pytest.mark.parametrize("value", [b"x" * 11, "x" * 11, ["x" * 7]])
def test_results_over_the_cap_are_failures(value: object) -> None:
    assert len(stored_as(value, 11).body) == 11
    with pytest.raises(FetchError, match="^result larger than 10 bytes$"):
        stored_as(value, 10)


# A Result: the value with its entry's own windows, tags and content type.

BY_RESULT = "the job's Result"


@pytest.mark.parametrize(
    "value", [b"\x00\xff", "caf\u00e9", {"b": [1, 2.5], "a": None}, None, [], "", 7]
)
def test_a_result_without_fields_is_stored_as_its_value(value: object) -> None:
    assert stored_as(Result(value)) == stored_as(value)
    assert stored_as(Result(value)).lifetimes is None


def test_a_results_fields_after_its_value_are_keywords() -> None:
    with pytest.raises(TypeError):
        Result(1, 5)  # type: ignore[call-arg]


def test_a_results_windows_are_its_own_and_the_jobs_where_it_gives_none() -> None:
    job = make_job("where", fresh=60.0, stale=100.0, stale_if_error=200.0)
    fetched = to_fetched(Result(b"x", fresh=5), job)
    assert fetched.lifetimes == Lifetimes(
        5.0, 100.0, 200.0, {"fresh": BY_RESULT, "stale": "the job", "stale_if_error": "the job"}
    )
    fetched = to_fetched(Result(b"x", stale=0, stale_if_error=timedelta(hours=1)), job)
    assert fetched.lifetimes == Lifetimes(
        60.0, 0.0, 3600.0, {"fresh": "the job", "stale": BY_RESULT, "stale_if_error": BY_RESULT}
    )
    assert (fetched.body, fetched.content_type) == (b"x", "application/octet-stream")


@pytest.mark.parametrize(
    "given, seconds",
    [
        (0, 0.0),
        (2.5, 2.5),
        (timedelta(milliseconds=250), 0.25),
        (timedelta(days=3650), 315_360_000.0),  # 10 years, far over the job's fresh: no cap
        (315_360_000, 315_360_000.0),
        (Fraction(1, 4), 0.25),
    ],
)
def test_a_results_windows_are_seconds_or_timedeltas_up_to_10_years(
    given: Any, seconds: float
) -> None:
    for name in ("fresh", "stale", "stale_if_error"):
        lifetimes = stored_as(Result("v", **{name: given})).lifetimes
        assert lifetimes is not None
        assert getattr(lifetimes, name) == seconds
        assert lifetimes.why[name] == BY_RESULT


def test_a_results_tags_are_kept_in_order_each_once() -> None:
    assert stored_as(Result(1, tags=("x", "y", "x"))).tags == ("x", "y")
    assert stored_as(Result(1, tags=iter(["b", "a"]))).tags == ("b", "a")
    assert stored_as(Result(1, tags=["t"] * 63 + ["\u00e9" * 128])).tags == ("t", "\u00e9" * 128)
    assert stored_as(Result(1, tags=("x",))).lifetimes is None  # tags alone: the job's windows


@pytest.mark.parametrize(
    "value, content_type, body",
    [
        (b"\x89PNG", "image/png", b"\x89PNG"),
        ('{"a": 1}', "application/json", b'{"a": 1}'),
        ({"a": 1}, "application/vnd.example+json", b'{"a":1}'),
        ({"a": 1}, "text/plain", b'{"a":1}'),
        ("<p>caf\u00e9</p>", "text/html; charset=utf-8", "<p>caf\u00e9</p>".encode()),
    ],
)
def test_a_results_content_type_replaces_the_mapped_one(
    value: object, content_type: str, body: bytes
) -> None:
    assert stored_as(Result(value, content_type=content_type)) == Fetched(body, content_type)


def _tags_forever() -> Iterator[str]:
    return (f"t{n}" for n in count())


SECONDS = "must be seconds (a number or a timedelta)"
RANGE = "must be from 0 to 315360000 seconds (10 years)"


@pytest.mark.parametrize(
    "bad, message",
    [
        (Result(1, fresh="5"), f"Result.fresh {SECONDS}, not str"),  # type: ignore[arg-type]
        (Result(1, fresh=True), f"Result.fresh {SECONDS}, not bool"),
        (Result(1, fresh=[1]), f"Result.fresh {SECONDS}, not list"),  # type: ignore[arg-type]
        (Result(1, stale=-1), f"Result.stale {RANGE}, not -1"),
        (Result(1, stale=timedelta(seconds=-1)), f"Result.stale {RANGE}, not -1"),
        (Result(1, stale_if_error=math.nan), f"Result.stale_if_error {RANGE}, not nan"),
        (Result(1, stale_if_error=math.inf), f"Result.stale_if_error {RANGE}, not inf"),
        (Result(1, fresh=10**400), f"Result.fresh {RANGE}, not inf"),
        (Result(1, fresh=315_360_001), f"Result.fresh {RANGE}, not 3.1536e+08"),
        (Result(1, fresh=timedelta(days=3651)), f"Result.fresh {RANGE}, not 3.15446e+08"),
        (Result(1, tags="x"), "Result.tags must be an iterable of strings, not str"),
        (Result(1, tags=b"x"), "Result.tags must be an iterable of strings, not bytes"),  # type: ignore[arg-type]
        (Result(1, tags=5), "Result.tags must be an iterable of strings, not int"),  # type: ignore[arg-type]
        (Result(1, tags=["x", 1]), "Result.tags: a tag must be a string, not int"),  # type: ignore[list-item]
        (Result(1, tags=["x", ""]), "Result.tags: a tag is empty"),
        (Result(1, tags=[str(n) for n in range(65)]), "Result.tags: more than 64 tags"),
        (Result(1, tags=_tags_forever()), "Result.tags: more than 64 tags"),
        (Result(1, tags=["\u00e9" * 129]), "Result.tags: a tag is over 256 bytes of UTF-8: '"),
        (Result(1, tags=["x" * 257]), "Result.tags: a tag is over 256 bytes of UTF-8: 'xxx"),
        (Result(1, tags=["\ud800"]), "Result.tags: a tag is not valid text: '\\ud800'"),
        (Result(1, content_type=5), "Result.content_type must be a non-empty string, not int"),  # type: ignore[arg-type]
        (Result(1, content_type=""), "Result.content_type must be a non-empty string, not ''"),
        (
            Result(1, content_type="text/plain\r\nX: 1"),
            "Result.content_type cannot be stored: the content type is not printable Latin-1",
        ),
        (
            Result(b"{", content_type="application/json"),
            "Result.content_type is JSON but the value is not valid JSON: ",
        ),
        (
            Result("NaN", content_type="application/problem+json"),
            "Result.content_type is JSON but the value is not valid JSON: NaN is not JSON",
        ),
        (
            Result(b"\xff", content_type="application/json; charset=utf-8"),
            "Result.content_type is JSON but the value is not valid JSON: 'utf-8' codec",
        ),
        (Result(math.nan), "result is not JSON-encodable: "),
        (Result(Result(1)), "result is not JSON-encodable: Object of type Result"),
        (Result("x" * 1001), "result larger than 1000 bytes"),
    ],
)
def test_a_result_with_a_wrong_field_is_a_failure_naming_it(bad: Result, message: str) -> None:
    with pytest.raises(FetchError) as raised:
        stored_as(bad)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value) and len(str(raised.value)) <= 300
    assert raised.value.detail is None  # nothing to log: the line says it all


def test_resolve_callable_finds_functions_and_dotted_attributes() -> None:
    assert resolve_callable(f"{HERE}:where") is where
    assert resolve_callable(f"{HERE}:Holder.method")("x") == "held x"
    assert resolve_callable("os.path:join") is os.path.join


@pytest.mark.parametrize(
    "spec, message",
    [
        ("tests.unit.test_fetch_python", "must be written 'package.module:function'"),
        (":where", "must be written 'package.module:function'"),
        (f"{HERE}:", "must be written 'package.module:function'"),
        (f"{HERE}:a:b", "must be written 'package.module:function'"),
        ("no_such_module_rfd:f", "cannot import 'no_such_module_rfd': ModuleNotFoundError"),
        (f"{HERE}:missing", "'missing' not found"),
        (f"{HERE}:Holder.missing", "'missing' not found"),
        (f"{HERE}:NOT_CALLABLE", "is not callable"),
    ],
)
def test_resolve_callable_says_what_is_wrong_in_one_line(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        resolve_callable(spec)
    assert message in str(raised.value)
    assert repr(spec) in str(raised.value)
    assert "\n" not in str(raised.value)


def test_where_functions_run() -> None:
    assert not runs_in_reactor(where)
    assert not runs_in_reactor(Holder.method)
    assert runs_in_reactor(awaits)
    assert runs_in_reactor(deferred)
    assert runs_in_reactor(plain_in_reactor)


def test_construction_resolves_the_callable_or_takes_it() -> None:
    job = make_job("missing")
    with pytest.raises(ValueError, match="'missing' not found"):
        PythonFetcher(job, global_reactor, make_threadpool(job))
    fetcher = PythonFetcher(job, global_reactor, make_threadpool(job), where)
    assert fetcher.function is where
    assert IFetcher.providedBy(fetcher)


def test_the_thread_pool_is_the_jobs_own() -> None:
    pool = make_threadpool(make_job("where", name="reports", concurrency=3))
    assert (pool.min, pool.max) == (0, 3)
    assert pool.name is not None and "reports" in pool.name
    assert not pool.started


class PythonFetcherTests(TestCase):
    """Fetches through a started thread pool and the real reactor."""

    def fetcher(self, function: str, **job: Any) -> PythonFetcher:
        config = make_job(function, **job)
        fetcher = PythonFetcher(config, global_reactor, make_threadpool(config))
        fetcher.thread_pool.start()
        self.addCleanup(fetcher.thread_pool.stop)
        PENDING.clear()
        self.addCleanup(PENDING.clear)
        self.logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        return fetcher

    async def test_plain_functions_run_in_the_jobs_threads(self) -> None:
        fetched = await self.fetcher("where").fetch({"name": "bob"})
        assert fetched.content_type == "application/json"
        value = json.loads(fetched.body)
        assert value["name"] == "bob"
        assert value["thread"] != threading.current_thread().name
        assert "refresherd-job-report" in value["thread"]

    async def test_arguments_are_keywords_whatever_their_names(self) -> None:
        fetcher = self.fetcher("awkward", args=("f", "reactor", "threadpool", "call"))
        fetched = await fetcher.fetch({"f": "1", "reactor": "2", "threadpool": "3", "call": "4"})
        assert fetched == Fetched(b"1 2 3 4", "text/plain; charset=utf-8")

    async def test_results_of_threads_are_converted(self) -> None:
        fetcher = self.fetcher("returns", max_value_bytes=10)
        assert await fetcher.fetch({"name": "bytes"}) == Fetched(
            b"\x00\xff", "application/octet-stream"
        )
        assert await fetcher.fetch({"name": "none"}) == Fetched(b"null", "application/json")
        for kind, message in [
            ("nan", "result is not JSON-encodable: Out of range float values"),
            ("set", "result is not JSON-encodable: Object of type set"),
            ("object", "result is not JSON-encodable: Object of type object"),
            ("big", "result larger than 10 bytes"),
        ]:
            with pytest.raises(FetchError) as raised:
                await fetcher.fetch({"name": kind})
            assert str(raised.value).startswith(message)
        assert len(self.logged) == 0

    async def test_an_exception_becomes_a_one_line_failure_with_its_traceback(self) -> None:
        fetcher = self.fetcher("raises")
        with pytest.raises(FetchError) as raised:
            await fetcher.fetch({"name": "bad\nthing\r\n" + "x" * 1000})
        message = str(raised.value)
        assert message.startswith("ValueError: bad thing xxx")
        assert "\n" not in message and len(message) <= 300
        detail = raised.value.detail
        assert detail is not None and "Traceback" in detail and "in raises" in detail
        assert len(self.logged) == 0  # the refresher logs it, once

    async def test_a_fetch_error_raised_by_the_function_is_kept_as_is(self) -> None:
        with pytest.raises(FetchError) as raised:
            await self.fetcher("raises_fetch_error").fetch({"name": "origin said no"})
        assert str(raised.value) == "origin said no"
        assert len(self.logged) == 0

    async def test_a_thread_that_returns_a_deferred_or_coroutine_is_a_failure(self) -> None:
        for function in ("returns_deferred_from_thread", "returns_coroutine_from_thread"):
            fetcher = self.fetcher(function)
            with pytest.raises(FetchError, match="make it a coroutine function or mark it"):
                await fetcher.fetch({"name": "x"})

    def test_coroutine_functions_run_in_the_reactor_and_await_deferreds(self) -> None:
        d = self.fetcher("awaits").fetch({"name": "bob"})
        assert not d.called
        [waiting] = PENDING
        waiting.callback("done")
        fetched = self.successResultOf(d)
        thread = threading.current_thread().name
        assert fetched.body == f'{{"name":"bob","value":"done","thread":"{thread}"}}'.encode()

    def test_a_coroutine_that_raises_fails_with_its_exception(self) -> None:
        d = self.fetcher("awaits_then_raises").fetch({"name": "bob"})
        PENDING[0].callback(None)
        failure = self.failureResultOf(d, FetchError)
        assert failure.getErrorMessage() == "KeyError: 'bob'"

    def test_a_coroutine_that_awaits_asyncio_asks_for_the_asyncio_reactor(self) -> None:
        loop = asyncio.new_event_loop()
        self.addCleanup(loop.close)
        FUTURES[:] = [loop.create_future()]
        self.addCleanup(FUTURES.clear)
        FINISHED.clear()
        for function in ("awaits_asyncio_sleep", "awaits_asyncio_future"):
            d = self.fetcher(function).fetch({"name": function})
            failure = self.failureResultOf(d, FetchError)
            assert failure.getErrorMessage() == (
                "the coroutine awaited asyncio, which needs twistd's asyncio reactor"
                " (twistd -r asyncio)"
            )
        assert FINISHED == ["awaits_asyncio_sleep", "awaits_asyncio_future"]
        assert len(self.logged) == 0

    def test_reactor_call_functions_may_return_a_deferred(self) -> None:
        d = self.fetcher("deferred").fetch({"name": "bob"})
        assert not d.called
        PENDING[0].callback("hello")
        thread = threading.current_thread().name
        assert self.successResultOf(d) == Fetched(
            f"hello bob {thread}".encode(), "text/plain; charset=utf-8"
        )

    def test_reactor_call_functions_may_return_a_value_or_a_coroutine(self) -> None:
        thread = threading.current_thread().name
        d = self.fetcher("plain_in_reactor").fetch({"name": "bob"})
        assert self.successResultOf(d).body == f'["bob","{thread}"]'.encode()
        d = self.fetcher("coroutine_in_reactor").fetch({"name": "bob"})
        PENDING[0].callback(1)
        assert self.successResultOf(d).body.startswith(b'{"name":"bob","value":1')

    def test_reactor_call_functions_that_raise_fail_with_their_exception(self) -> None:
        d = self.fetcher("raises_in_reactor").fetch({"name": "bob"})
        failure = self.failureResultOf(d, FetchError)
        assert failure.getErrorMessage() == "OSError: no bob"

    async def test_a_thread_may_return_a_result(self) -> None:
        fetched = await self.fetcher("returns_result").fetch({"name": "bob"})
        assert fetched == Fetched(
            b'{"name":"bob"}',
            "application/json",
            lifetimes=Lifetimes(
                5.0, 0.0, 0.0, {"fresh": BY_RESULT, "stale": "the job", "stale_if_error": "the job"}
            ),
            tags=("x", "user:bob"),
        )

    async def test_a_wrong_result_from_a_thread_fails_in_one_line_unlogged(self) -> None:
        with pytest.raises(FetchError) as raised:
            await self.fetcher("returns_bad_result").fetch({"name": "bob"})
        assert str(raised.value) == (
            "Result.fresh must be from 0 to 315360000 seconds (10 years), not -1"
        )
        assert raised.value.detail is None
        assert len(self.logged) == 0

    def test_a_coroutine_may_return_a_result(self) -> None:
        d = self.fetcher("awaits_result", fresh=30.0).fetch({"name": "bob"})
        PENDING[0].callback("done")
        fetched = self.successResultOf(d)
        assert (fetched.body, fetched.tags) == (b"done", ("bob",))
        assert fetched.lifetimes is not None
        assert (fetched.lifetimes.fresh, fetched.lifetimes.stale) == (30.0, 120.0)

    def test_a_deferred_may_fire_with_a_result(self) -> None:
        d = self.fetcher("deferred_result").fetch({"name": "bob"})
        PENDING[0].callback("hello")
        fetched = self.successResultOf(d)
        assert (fetched.body, fetched.content_type) == (b"<p>hello</p>", "text/html")
        assert fetched.lifetimes is not None and fetched.lifetimes.fresh == 1.5

    def test_cancelling_a_coroutine_cancels_what_it_awaits(self) -> None:
        d = self.fetcher("awaits").fetch({"name": "bob"})
        [waiting] = PENDING
        d.cancel()
        self.failureResultOf(d, CancelledError)
        assert waiting.called, "what the coroutine awaited was not cancelled"
        assert len(self.logged) == 0

    def test_cancelling_a_reactor_call_deferred_cancels_it(self) -> None:
        d = self.fetcher("deferred").fetch({"name": "bob"})
        d.cancel()
        self.failureResultOf(d, CancelledError)
        assert PENDING[0].called
        assert len(self.logged) == 0

    async def test_cancelling_a_thread_fails_at_once_and_drops_its_late_result(self) -> None:
        GATE.clear()
        self.addCleanup(GATE.set)
        fetcher = self.fetcher("blocked", concurrency=1)
        d = fetcher.fetch({"name": "bob"})
        await deferLater(global_reactor, 0)
        assert not d.called
        d.cancel()
        self.failureResultOf(d, CancelledError)
        GATE.set()
        # The job's one thread runs this after the late failure, whose result
        # then reaches the reactor first.
        await deferToThreadPool(global_reactor, fetcher.thread_pool, lambda: None)
        await deferLater(global_reactor, 0)
        gc.collect()
        await deferLater(global_reactor, 0)
        assert len(self.logged) == 0
        assert self.flushLoggedErrors() == []


# Through a Refresher: the entry a Result makes, on task.Clock.


class Served:
    """A python job C{report} on a Refresher and a memory store, at 1e6 s on a Clock."""

    def __init__(self, results: list[Result], **job: Any) -> None:
        self.results = results
        """What the job's function returns, one per call."""
        self.calls = 0
        self.clock = task.Clock()
        self.clock.advance(1_000_000)
        self.store = MemoryStore(self.clock)
        config = make_job("where", **job)

        @reactor_call
        def build(name: str) -> Result:
            self.calls += 1
            return self.results.pop(0)

        fetcher = PythonFetcher(config, global_reactor, make_threadpool(config), build)
        self.refresher = Refresher(
            self.store,
            {"report": Job(config, fetcher)},
            self.clock,
            "rfd",
            metrics_for(["report"]),
            random=lambda: 0.99,
        )
        self.target = self.refresher.target("report", {"name": "bob"})

    def status(self) -> str:
        return result(as_deferred(lambda: self.refresher.lookup(self.target))).status

    def entry(self) -> Entry:
        entry = result(self.store.get(self.target.key))
        assert entry is not None
        return entry

    def purge(self, tag: str, soft: bool = False) -> None:
        result(Deferred.fromCoroutine(self.refresher.purge([], [], [tag], soft)))


def test_a_results_windows_and_tags_make_the_entry_and_purges_by_its_tag_reach_it() -> None:
    served = Served(
        [Result(n, fresh=5, tags=("x",)) for n in range(4)],
        fresh=60.0,
        stale=100.0,
        tags=("report",),
    )
    assert served.status() == "miss"
    entry = served.entry()
    now = served.clock.seconds()
    assert (entry.fresh_until, entry.stale_until) == (now + 5, now + 105)
    assert entry.tags == ("report", "x")
    assert entry.lifetimes == {"fresh": BY_RESULT, "stale": "the job", "stale_if_error": "the job"}
    served.clock.advance(4.9)
    assert served.status() == "hit"
    served.clock.advance(0.2)
    assert served.status() == "stale"  # past the Result's 5 s, not the job's 60 s: refreshed
    assert served.calls == 2
    assert served.status() == "hit"
    served.purge("other")
    assert served.status() == "hit"
    served.purge("x", soft=True)
    assert served.status() == "stale"
    assert served.calls == 3
    served.purge("x")
    assert served.status() == "miss"  # gone: fetched again
    assert served.calls == 4


def test_a_results_windows_are_not_capped_but_min_refresh_floors_its_refreshes() -> None:
    ten_years = 3650 * 86400
    served = Served(
        [Result("a", fresh=0, stale=ten_years), Result("b", fresh=ten_years)],
        fresh=60.0,
        min_refresh=2.0,
    )
    assert served.status() == "miss"
    entry = served.entry()
    now = served.clock.seconds()
    assert (entry.fresh_until, entry.stale_until) == (now, now + ten_years)
    assert entry.retry_at == now + 2
    for _ in range(5):
        assert served.status() == "stale"
    assert served.calls == 1  # stale at once, but no refresh before min_refresh
    served.clock.advance(2)
    assert served.status() == "stale"
    assert served.calls == 2
    assert served.entry().fresh_until == served.clock.seconds() + ten_years
    served.clock.advance(ten_years - 1)
    assert served.status() == "hit"

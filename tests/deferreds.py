"""
What a Deferred that has fired fired with, for tests that are not trial
TestCases (those use C{self.successResultOf} and C{self.failureResultOf}).

    answer = result(lookup(refresher))          # fails the test if it failed
    error = failure(lookup(refresher), BadArgs)  # fails the test if it succeeded
    count = outcome(purge(...))                  # raises what it failed with

and, for what answers at once or later (a value or a Deferred of it), that
answer as a Deferred, as C{maybeDeferred} makes it:

    d = as_deferred(lambda: refresher.lookup(target))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

T = TypeVar("T")


def as_deferred(f: Callable[[], T | Deferred[T]]) -> Deferred[T]:
    """
    What C{f()} answers, as a Deferred: its value, the Deferred it returned,
    or the failure of what it raised (C{maybeDeferred}, typed for C{f}s that
    answer either at once or later).
    """
    try:
        answer = f()
    except BaseException:
        return fail()
    if isinstance(answer, Deferred):
        return answer
    return succeed(answer)


def _fired(d: Deferred[T]) -> T | Failure:
    """What C{d} fired with (a L{Failure} if it failed); the failure is handled."""
    out: list[T | Failure] = []
    d.addBoth(out.append)
    if not out:
        pytest.fail(f"{d!r} has not fired")
    return out[0]


def result(d: Deferred[T]) -> T:
    """The result of C{d}, which has fired and succeeded."""
    value = _fired(d)
    if isinstance(value, Failure):
        pytest.fail(f"{d!r} failed:\n{value.getTraceback()}")
    return value


def failure(d: Deferred[Any], *types: type[BaseException]) -> BaseException:
    """The exception C{d} has failed with, one of C{types} when given."""
    value = _fired(d)
    if not isinstance(value, Failure):
        pytest.fail(f"{d!r} did not fail: it fired with {value!r}")
    if types and not value.check(*types):
        pytest.fail(f"{d!r} failed with {value.value!r}, not {types}:\n{value.getTraceback()}")
    assert value.value is not None, "a Failure always holds its exception"
    return value.value


def outcome(d: Deferred[T]) -> T:
    """The result of C{d}, which has fired; if it failed, its exception is raised."""
    value = _fired(d)
    if isinstance(value, Failure):
        value.raiseException()
    return value

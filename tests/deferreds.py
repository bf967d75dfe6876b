"""
What a Deferred that has fired fired with, for tests that are not trial
TestCases (those use C{self.successResultOf} and C{self.failureResultOf}).

    answer = result(lookup(refresher))          # fails the test if it failed
    error = failure(lookup(refresher), BadArgs)  # fails the test if it succeeded
    count = outcome(purge(...))                  # raises what it failed with
"""

from __future__ import annotations

from typing import Any, TypeVar

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")


def _fired(d: Deferred[Any]) -> Any:
    """What C{d} fired with (a L{Failure} if it failed); the failure is handled."""
    out: list[Any] = []
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
    return value.value


def outcome(d: Deferred[T]) -> T:
    """The result of C{d}, which has fired; if it failed, its exception is raised."""
    value = _fired(d)
    if isinstance(value, Failure):
        value.raiseException()
    return value

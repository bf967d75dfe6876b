"""
A test's kind is its directory: tests/unit, tests/contract, tests/integration,
tests/e2e, tests/faults; each test gets the marker of its kind (a test anywhere
else under tests/ is an error), and the fast kinds run first.

    .venv/bin/python -m pytest -m "not e2e and not integration and not faults"

runs the unit and contract tests alone.  They may open no socket, start no
process and never sleep: for them, C{socket.socket.bind}, C{connect},
C{connect_ex}, starting a process and C{time.sleep} fail the test.

Every test fails if it logs an error (a failure or an unhandled error in a
Deferred) that it did not expect: errors must never pass unseen.

Real servers are fixtures of tests/integration/conftest.py, tests/e2e/conftest.py
and tests/faults/conftest.py only: a unit or contract test cannot ask for them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from zope.interface import provider

# Hypothesis checks properties, not speed: on a loaded machine (CI runs tests four at a time
# on two cores) its 200 ms per example deadline fails tests that are right.
settings.register_profile("refresherd", deadline=None)
settings.load_profile("refresherd")

TESTS = Path(__file__).parent
KINDS = ("unit", "contract", "integration", "e2e", "faults")
"""The kinds of tests, each a directory of tests/, in the order they run."""
FAST = ("unit", "contract")
"""The kinds that run alone in seconds: no socket, no process, no sleep."""


def kind_of(path: Path) -> str | None:
    """The kind of the tests in C{path}: the first directory under tests/."""
    try:
        first = path.relative_to(TESTS).parts[0]
    except (ValueError, IndexError):
        return None
    return first if first in KINDS else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """
    Marks every test with its kind, and runs the fast kinds first; a test
    elsewhere under tests/ is a usage error: it would run unmarked, unguarded.
    """
    strays = [i.nodeid for i in items if kind_of(i.path) is None and i.path.is_relative_to(TESTS)]
    if strays:
        raise pytest.UsageError(
            f"tests outside tests/{{{','.join(KINDS)}}}/, so of no kind: {', '.join(strays)}"
        )
    for item in items:
        kind = kind_of(item.path)
        if kind is not None:
            item.add_marker(kind)
    items.sort(key=lambda item: KINDS.index(kind_of(item.path) or KINDS[-1]))


FAILED = pytest.StashKey[bool]()
"""Whether the test has failed already (in its set-up or its call)."""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[FAILED] = True
    return report


REFUSED: tuple[tuple[object, str, str], ...] = (
    (socket.socket, "bind", "socket.socket.bind"),
    (socket.socket, "connect", "socket.socket.connect"),
    (socket.socket, "connect_ex", "socket.socket.connect_ex"),
    (subprocess.Popen, "__init__", "subprocess.Popen"),
    (os, "fork", "os.fork"),
    (os, "posix_spawn", "os.posix_spawn"),
    (os, "posix_spawnp", "os.posix_spawnp"),
    (time, "sleep", "time.sleep"),
)
"""What a unit or contract test may not call: (owner, attribute, name)."""


@pytest.fixture(autouse=True)
def no_socket_process_or_sleep(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """
    For a unit or contract test, opening a socket, starting a process or
    sleeping fails it, in whatever thread it happens (a call swallowed on the
    way, or made in another thread, fails the test when it ends).
    """
    kind = kind_of(request.path)
    if kind not in FAST:
        yield
        return
    called: list[str] = []

    def refuse(name: str) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            called.append(f"{name} (in thread {threading.current_thread().name})")
            pytest.fail(message(name))

        return refused

    def message(what: str) -> str:
        return (
            f"a unit test must not open a socket / start a process / sleep: this {kind} "
            f"test called {what}.  Fake it (MemoryReactor, StringTransport, StubTreq, "
            "task.Clock, a threading.Event), or move the test to tests/integration or tests/e2e."
        )

    for owner, attribute, name in REFUSED:
        if hasattr(owner, attribute):
            monkeypatch.setattr(owner, attribute, refuse(name))
    yield
    if called and not request.node.stash.get(FAILED, False):
        pytest.fail(message(", ".join(called)))


@pytest.fixture(autouse=True)
def no_logged_errors(request: pytest.FixtureRequest) -> Iterator[list[dict[str, Any]]]:
    """Collects error events; a test that expects some empties the list it gets."""
    errors: list[dict[str, Any]] = []

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None or event.get("log_level") in (
            LogLevel.error,
            LogLevel.critical,
        ):
            errors.append(event)

    globalLogPublisher.addObserver(observe)
    yield errors
    globalLogPublisher.removeObserver(observe)
    if errors:
        pytest.fail("errors were logged:\n" + "\n".join(formatEvent(e) for e in errors))

"""
Every test fails if it logs an error (a failure or an unhandled error in a
Deferred) that it did not expect: errors must never pass unseen.

A test that takes C{shared_store} runs once on a real redis-server and once on
a real memcached, each started for its module.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from tests.harness import Origin, start_origin
from tests.memcached_server import MemcachedServer
from tests.redis_server import RedisServer


@pytest.fixture(autouse=True)
def no_logged_errors(request: pytest.FixtureRequest) -> Iterator[list[dict[str, Any]]]:
    """Collects error events; a test that expects some empties the list it gets."""
    errors: list[dict[str, Any]] = []

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


@pytest.fixture(scope="module", params=["redis", "memcached"])
def shared_store(request: pytest.FixtureRequest) -> Iterator[RedisServer | MemcachedServer]:
    """A real server of each shared store in turn, on a free loopback port."""
    server = RedisServer() if request.param == "redis" else MemcachedServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def origin() -> Iterator[Origin]:
    """An origin HTTP server on a free loopback port, counting its requests per path."""
    origin = start_origin()
    yield origin
    origin.server.shutdown()

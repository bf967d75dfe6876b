"""
Real parts for the end-to-end tests: an origin HTTP server per test, and the
shared stores.

A test that takes C{shared_store} runs once on a real redis-server and once on
a real memcached, each started for its module.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import Origin, start_origin
from tests.memcached_server import MemcachedServer
from tests.redis_server import RedisServer


@pytest.fixture(scope="module", params=["redis", "memcached"])
def shared_store(request: pytest.FixtureRequest) -> Iterator[RedisServer | MemcachedServer]:
    """A real server of each shared store in turn, on a free loopback port."""
    server = RedisServer() if request.param == "redis" else MemcachedServer()
    with server:
        yield server


@pytest.fixture
def origin() -> Iterator[Origin]:
    """An origin HTTP server on a free loopback port, counting its requests per path."""
    origin = start_origin()
    yield origin
    origin.server.shutdown()

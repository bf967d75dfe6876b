"""
Real servers for the integration tests, each started once for a module, on a
free loopback port.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.memcached_server import MemcachedServer
from tests.redis_server import RedisServer


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the tests that neither stop it nor fill it."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def memcached_server() -> Iterator[MemcachedServer]:
    """One memcached for the tests that neither stop it nor fill it."""
    with MemcachedServer() as server:
        yield server

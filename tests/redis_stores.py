"""
Trial tests of Redis stores on a real C{redis-server}: L{RedisTestCase}
starts stores on the module's server (the C{redis_server} fixture of
tests/integration/conftest.py) or on a server of the test's own, and stops
them after the test.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from refresherd.keys import entry_key
from refresherd.stores.redis import RedisStore
from tests.redis_server import RedisServer

NAMESPACE = "rfdtest"
READY = 5.0
"""Seconds a store may take to connect and subscribe, after a start or a restart."""


def sleep(seconds: float) -> Deferred[None]:
    return task.deferLater(reactor, seconds)


class RedisTestCase(TestCase):
    """Starts stores on a real server, and stops them (and any own server) after the test."""

    server: RedisServer
    logged_errors: list[dict[str, Any]]

    @pytest.fixture(autouse=True)
    def _fixtures(self, redis_server: RedisServer, no_logged_errors: list[dict[str, Any]]) -> None:
        self.server = redis_server
        self.logged_errors = no_logged_errors

    def own_server(self, *args: str, password: str | None = None) -> RedisServer:
        """A server of this test's own, to stop, kill or fill."""
        server = RedisServer(args, password=password)
        self.addCleanup(server.cleanup)
        server.start()
        return server

    def new_store(self, server: RedisServer | None = None, **options: Any) -> RedisStore:
        """A started store, stopped after the test; it may still be connecting."""
        server = server or self.server
        options.setdefault("namespace", NAMESPACE)
        store = RedisStore(reactor, server.host, server.port, **options)
        return self.started(store)

    def started(self, store: RedisStore) -> RedisStore:
        store.startService()
        self.addCleanup(store.stopService)
        return store

    async def ready_store(self, server: RedisServer | None = None, **options: Any) -> RedisStore:
        """A started store, connected and listening for changes."""
        store = self.new_store(server, **options)
        await store.ready().addTimeout(READY, reactor)
        return store

    def unique_key(self, **args: str) -> str:
        return entry_key(f"{NAMESPACE}-{self.id().rsplit('.', 1)[-1][:40]}", "job", 1, args)

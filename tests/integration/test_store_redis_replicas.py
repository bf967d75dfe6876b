"""
Writes that callers and operators are told of (a PUT, a purge) wait for a replica to
acknowledge them when the primary has replicas (docs/redis.md, "Replicas and failover"),
on a real primary and replica.
"""

from __future__ import annotations

import time

from twisted.internet import reactor
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher

from refresherd.errors import StoreUnavailable
from refresherd.keys import generation_key
from refresherd.stores.redis import REPLICA_WAIT, RedisStore
from tests.redis_server import RedisServer
from tests.redis_stores import NAMESPACE, RedisTestCase, sleep
from tests.store_contract import LONG_TTL, sample_entry


def synced(replica: RedisServer) -> bool:
    info = replica.command("INFO", "replication")
    return isinstance(info, bytes) and b"master_link_status:up" in info


class ReplicaAcknowledgementTests(RedisTestCase):
    async def primary_and_replica(self) -> tuple[RedisServer, RedisServer, RedisStore]:
        primary = self.own_server()
        replica = self.own_server("--replicaof", primary.host, str(primary.port))
        deadline = time.monotonic() + 10
        while not synced(replica):
            assert time.monotonic() < deadline, "the replica did not sync"
            await sleep(0.05)
        store = await self.ready_store(primary)
        # The replica may see its link up before the primary lists it in ROLE.
        await store._ask_role()
        while store.replicas != 1:
            assert time.monotonic() < deadline, f"the primary lists {store.replicas} replicas"
            await sleep(0.05)
            await store._ask_role()
        return primary, replica, store

    async def test_a_purge_answered_is_on_the_replica(self) -> None:
        _, replica, store = await self.primary_and_replica()
        key = generation_key(NAMESPACE, "tag", "user:bob", hard=True)
        token = await store.new_purge_token(key, LONG_TTL)
        self.assertEqual(replica.command("GET", key), token.encode())
        entry_key = self.unique_key(id="1")
        await store.put(entry_key, sample_entry(), LONG_TTL)  # a PUT
        self.assertIsNotNone(replica.command("GET", entry_key))
        await store.delete(entry_key)  # a hard purge of a key
        self.assertIsNone(replica.command("GET", entry_key))

    async def test_a_purge_no_replica_acknowledges_is_an_error_not_a_silent_loss(self) -> None:
        _, replica, store = await self.primary_and_replica()
        replica.pause()
        try:
            key = generation_key(NAMESPACE, "tag", "user:ann", hard=True)
            start = time.monotonic()
            with self.assertRaises(StoreUnavailable) as raised:
                await store.new_purge_token(key, LONG_TTL)
            self.assertIn("no replica acknowledged", raised.exception.message)
            self.assertLess(time.monotonic() - start, REPLICA_WAIT + 1.0)
            # A fetch's fenced write does not wait: a lost one costs one fetch.
            entry_key = self.unique_key(id="2")
            lease = await store.acquire_lease(entry_key, LONG_TTL)
            self.assertTrue(await store.put(entry_key, sample_entry(), LONG_TTL, lease=lease))
        finally:
            replica.resume()

    async def test_with_no_replica_nothing_waits(self) -> None:
        store = RedisStore(reactor, self.server.host, self.server.port, namespace=NAMESPACE)
        store = self.started(store)
        await store.ready()
        await store._ask_role()
        self.assertEqual(store.replicas, 0)
        key = generation_key(NAMESPACE, "tag", "user:cy", hard=True)
        self.assertTrue(await store.new_purge_token(key, LONG_TTL))

    async def test_a_user_that_may_not_ask_role_is_warned_of(self) -> None:
        server = self.own_server()
        server.command("ACL", "SETUSER", "default", "-role")
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        store = await self.ready_store(server)
        await store._ask_role()
        await store._ask_role()
        warnings = [e for e in logged if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1)  # once, not every 5 s
        self.assertIn("NOPERM", warnings[0]["why"])


class DemotedPrimaryTests(RedisTestCase):
    async def test_a_readonly_reply_drops_the_connection_to_find_the_primary_again(self) -> None:
        """
        A primary demoted to a replica answers writes with READONLY: the store
        connects again at once (through its endpoint, which may find the new
        primary) instead of failing every write on the demoted server.
        """
        other = self.own_server()
        server = self.own_server()
        store = await self.ready_store(server)
        before = store._commands
        server.command("REPLICAOF", other.host, str(other.port))
        self.addCleanup(lambda: server.running and server.command("REPLICAOF", "NO", "ONE"))
        with self.assertRaises(StoreUnavailable) as raised:
            await store.put(self.unique_key(id="1"), sample_entry(), LONG_TTL)
        self.assertIn("READONLY", raised.exception.message)
        deadline = time.monotonic() + 5
        while store._commands is None or store._commands is before:
            assert time.monotonic() < deadline, "the store did not connect again"
            await sleep(0.02)
        server.command("REPLICAOF", "NO", "ONE")
        self.assertTrue(await store.put(self.unique_key(id="1"), sample_entry(), LONG_TTL))

"""
The memcached store against real C{memcached} processes that the tests
start: the store contract unchanged, then what is memcached's own (the layout
other programs read, values in chunks, keys that must never reach the wire,
item limits, expiry beyond 30 days, pools of servers, outages), then its URL.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest
from twisted.application.service import Service
from twisted.internet import defer, reactor, task
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.protocols.memcache import ServerError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from refresherd.entry import decode, encode
from refresherd.errors import StoreUnavailable
from refresherd.interfaces import IStore
from refresherd.keys import entry_key
from refresherd.stores.memcached.layout import (
    MIN_ITEM_LIMIT,
    check_key,
    chunk_key,
    chunk_size,
    exptime,
    lease_key,
    parse_manifest,
    split,
)
from refresherd.stores.memcached.ring import Ring, key_point
from refresherd.stores.memcached.store import (
    DEFAULT_ITEM_LIMIT,
    MemcachedStore,
    _Connection,
    _OutOfStep,
    memcached_store_from_url,
)
from tests.memcached_server import MemcachedServer
from tests.store_contract import LONG_TTL, StoreContract, sample_entry

NAMESPACE = "rfdtest"
MIB = 1024 * 1024
READY = 5.0
"""Seconds a store may take to connect, after a start or a restart."""


@pytest.fixture(scope="module")
def memcached_server() -> Iterator[MemcachedServer]:
    """One server for the tests that neither stop it nor fill it."""
    server = MemcachedServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


def sleep(seconds: float) -> Deferred[None]:
    return task.deferLater(reactor, seconds)


class MemcachedTestCase(TestCase):
    """Starts stores on real servers, and stops them (and any own server) after the test."""

    server: MemcachedServer
    logged_errors: list[dict[str, Any]]

    @pytest.fixture(autouse=True)
    def _fixtures(
        self, memcached_server: MemcachedServer, no_logged_errors: list[dict[str, Any]]
    ) -> None:
        self.server = memcached_server
        self.logged_errors = no_logged_errors

    def own_server(self, item_limit: str | None = None) -> MemcachedServer:
        """A server of this test's own, to stop, kill or fill."""
        server = MemcachedServer(item_limit)
        self.addCleanup(server.cleanup)
        server.start()
        return server

    def new_store(self, *servers: MemcachedServer, **options: Any) -> MemcachedStore:
        """A started store, stopped after the test; it may still be connecting."""
        addresses = tuple((s.host, s.port) for s in servers or (self.server,))
        options.setdefault("namespace", NAMESPACE)
        store = MemcachedStore(reactor, addresses, **options)
        store.startService()
        self.addCleanup(store.stopService)
        return store

    async def ready_store(self, *servers: MemcachedServer, **options: Any) -> MemcachedStore:
        """A started store, connected to every server."""
        store = self.new_store(*servers, **options)
        await store.ready().addTimeout(READY, reactor)
        return store

    def unique_key(self, **args: str) -> str:
        return entry_key(f"{NAMESPACE}-{self.id().rsplit('.', 1)[-1][:40]}", "job", 1, args)


class MemcachedStoreContractTests(StoreContract, MemcachedTestCase):
    """The store contract, unchanged, against a L{MemcachedStore} on a real server."""

    def make_store(self) -> Deferred[IStore]:
        return Deferred.fromCoroutine(self._contract_store())

    async def _contract_store(self) -> IStore:
        return await self.ready_store()

    def advance(self, seconds: float) -> Deferred[None]:
        return sleep(seconds)


class MemcachedLayoutTests(MemcachedTestCase):
    """What other programs find in memcached: docs/memcached.md."""

    async def test_small_entry_is_the_entry_format_byte_for_byte(self) -> None:
        store = await self.ready_store()
        key, entry = self.unique_key(id="1"), sample_entry(b"\x00body\r\n\xff")
        await store.put(key, entry, LONG_TTL)
        self.assertEqual(self.server.get(key.encode()), encode(entry))

    async def test_large_entry_is_a_manifest_naming_chunks_that_join_into_the_entry(self) -> None:
        store = await self.ready_store()
        key, entry = self.unique_key(id="1"), sample_entry(os.urandom(3 * MIB))
        await store.put(key, entry, LONG_TTL)
        raw = self.server.get(key.encode())
        assert raw is not None
        self.assertTrue(raw.startswith(b"manifest 1 "), raw[:40])
        self.assertTrue(raw.endswith(b"\n"))
        manifest = parse_manifest(raw)
        data = encode(entry)
        self.assertEqual(manifest.count, math.ceil(len(data) / chunk_size(DEFAULT_ITEM_LIMIT)))
        self.assertEqual(manifest.length, len(data))
        self.assertEqual(manifest.sha256, hashlib.sha256(data).hexdigest())
        namespace, _, rest = key.partition(":")
        chunks = []
        for i in range(manifest.count):
            chunk = f"{namespace}:chunk:{manifest.generation}:{i}:{rest}"
            value = self.server.get(chunk.encode())
            assert value is not None
            self.assertLessEqual(len(chunk) + len(value) + 1024, DEFAULT_ITEM_LIMIT)
            chunks.append(value)
        self.assertEqual(b"".join(chunks), data)

    async def test_chunks_expire_after_their_manifest(self) -> None:
        store = await self.ready_store()
        key = self.unique_key(id="1")
        await store.put(key, sample_entry(os.urandom(2 * MIB)), 100)
        expires = int(self.server.item(key)["exp"])
        manifest = parse_manifest(self.server.get(key.encode()) or b"")
        for chunk in manifest.chunk_keys(key):
            self.assertGreaterEqual(int(self.server.item(chunk)["exp"]), expires + 4)

    async def test_lease_is_a_key_with_lease_after_the_namespace(self) -> None:
        store = await self.ready_store()
        key = entry_key("rfdtest", "tweets", 1, {"username": "bob", "id": self.id()[-20:]})
        token = await store.acquire_lease(key, 30)
        assert token is not None
        where = lease_key(key)
        self.assertTrue(where.startswith("rfdtest:lease:tweets:v1:"))
        self.assertEqual(self.server.get(where.encode()), token.encode("ascii"))
        await store.release_lease(key, token)
        self.assertIsNone(self.server.get(where.encode()))

    async def test_expiry_is_the_ttl_rounded_up_plus_one_tick(self) -> None:
        store = await self.ready_store()
        key = self.unique_key(id="1")
        await store.put(key, sample_entry(), 99.2)
        left = int(self.server.item(key)["exp"]) - time.time()
        self.assertTrue(99 < left <= 102, left)

    async def test_expiry_beyond_30_days_is_an_absolute_time(self) -> None:
        store = await self.ready_store()
        key = self.unique_key(id="1")
        forty_days = 40 * 86_400
        await store.put(key, sample_entry(os.urandom(2 * MIB)), forty_days)
        token = await store.acquire_lease(key, forty_days)
        self.assertEqual(await store.get(key), sample_entry(self.server_body(key)))
        for item in (key, lease_key(key)):
            left = int(self.server.item(item)["exp"]) - time.time()
            self.assertTrue(forty_days < left <= forty_days + 3, (item, left))
        self.assertIsNone(await store.acquire_lease(key, 1))
        assert token is not None
        self.assertIs(await store.put(key, sample_entry(), forty_days, lease=token), True)

    def server_body(self, key: str) -> bytes:
        """The body of the entry under C{key}, read from the server without the store."""
        manifest = parse_manifest(self.server.get(key.encode()) or b"")
        data = b"".join(self.server.get(c.encode()) or b"" for c in manifest.chunk_keys(key))
        body = decode(data).body
        assert body is not None
        return body

    async def test_unreadable_bytes_read_as_absent_with_one_warning(self) -> None:
        store = await self.ready_store()
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        for i, raw in enumerate([b"007", b"manifest 1 nonsense\n", b"manifest 2 " + b"0" * 40]):
            key = self.unique_key(id=str(i))
            self.server.set(key.encode(), raw)
            self.assertIsNone(await store.get(key))
            self.assertIsNone(await store.get(key))
            warnings = [e for e in logged if e["log_level"] == LogLevel.warn and e["key"] == key]
            self.assertEqual(len(warnings), 1)


class MemcachedChunkTests(MemcachedTestCase):
    """Values of any size, never torn, never sent over the item limit."""

    async def assertRoundTrips(self, store: MemcachedStore, key: str, size: int) -> None:
        entry = sample_entry(os.urandom(size))
        self.assertIs(await store.put(key, entry, LONG_TTL), True)
        got = await store.get(key)
        assert got is not None and got.body is not None and entry.body is not None
        self.assertEqual(hashlib.sha256(got.body).digest(), hashlib.sha256(entry.body).digest())
        self.assertEqual(got, entry)

    async def test_5_mib_value_round_trips_byte_exact_with_the_default_limit(self) -> None:
        await self.assertRoundTrips(await self.ready_store(), self.unique_key(id="1"), 5 * MIB)

    async def test_5_mib_value_round_trips_byte_exact_with_a_2_mib_limit(self) -> None:
        server = self.own_server("2m")
        store = memcached_store_from_url(server.url(item_limit=2 * MIB), NAMESPACE, reactor)
        store.startService()
        self.addCleanup(store.stopService)
        await store.ready().addTimeout(READY, reactor)
        key, entry = self.unique_key(id="1"), sample_entry(os.urandom(5 * MIB))
        await store.put(key, entry, LONG_TTL)
        self.assertEqual(parse_manifest(server.get(key.encode()) or b"").count, 3)
        self.assertEqual(await store.get(key), entry)

    async def test_values_around_every_threshold_round_trip(self) -> None:
        store = await self.ready_store()
        key = self.unique_key(id="1")
        meta = len(encode(sample_entry(b"")))
        inline = DEFAULT_ITEM_LIMIT - 1024 - len(key)
        chunk = chunk_size(DEFAULT_ITEM_LIMIT)
        for length, first in [
            (inline, b"{"),
            (inline + 1, b"m"),
            (2 * chunk, b"m"),
            (2 * chunk + 1, b"m"),
        ]:
            await self.assertRoundTrips(store, key, length - meta)
            self.assertEqual((self.server.get(key.encode()) or b"")[:1], first, length)

    async def test_hundreds_of_chunks_are_read_in_batches(self) -> None:
        store = await self.ready_store(item_limit=MIN_ITEM_LIMIT)
        key = self.unique_key(id="1")
        await self.assertRoundTrips(store, key, MIB)
        self.assertGreater(parse_manifest(self.server.get(key.encode()) or b"").count, 300)

    async def test_a_lower_limit_of_the_server_is_learnt_and_never_exceeded(self) -> None:
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        server = self.own_server()
        store = await self.ready_store(server, item_limit=4 * MIB)
        self.assertEqual(store.effective_item_limit, DEFAULT_ITEM_LIMIT)
        self.assertTrue(any("-I" in formatEvent(e) for e in logged))
        key = self.unique_key(id="1")
        for size in (MIB // 2, 3 * MIB // 2, 3 * MIB, MIB - 2000):
            await store.put(key, sample_entry(b"previous"), LONG_TTL)
            await store.put(key, sample_entry(os.urandom(size)), LONG_TTL)
            got = await store.get(key)
            assert got is not None and got.body is not None
            self.assertEqual(len(got.body), size)
        items = server.metadump()
        self.assertGreater(len(items), 3)
        for name, item in items.items():
            # The size memcached counts: item header, key and value.
            self.assertLessEqual(int(item["size"]), DEFAULT_ITEM_LIMIT - 900, name)

    async def test_an_item_over_the_limit_is_never_sent_and_the_previous_value_stays(
        self,
    ) -> None:
        server = self.own_server()
        store = await self.ready_store(server)
        key = self.unique_key(id="1")
        await store.put(key, sample_entry(b"previous"), LONG_TTL)
        sets = server.stats()["cmd_set"]
        with self.assertRaises(StoreUnavailable) as raised:
            await store._store(key, b"x" * DEFAULT_ITEM_LIMIT, 0, time.time() + 1)
        self.assertIn("not sent", raised.exception.message)
        self.assertEqual(server.stats()["cmd_set"], sets)
        self.assertEqual(await store.get(key), sample_entry(b"previous"))

    async def test_a_deleted_chunk_reads_as_absent(self) -> None:
        store = await self.ready_store()
        key = self.unique_key(id="1")
        await store.put(key, sample_entry(os.urandom(3 * MIB)), LONG_TTL)
        manifest = parse_manifest(self.server.get(key.encode()) or b"")
        self.assertEqual(self.server.delete(manifest.chunk_keys(key)[1].encode()), b"DELETED")
        self.assertIsNone(await store.get(key))

    async def test_chunks_of_two_generations_never_mix(self) -> None:
        store = await self.ready_store()
        key = self.unique_key(id="1")
        one, two = sample_entry(os.urandom(3 * MIB)), sample_entry(os.urandom(3 * MIB))
        (m1, c1), (m2, c2) = (
            split(encode(one), DEFAULT_ITEM_LIMIT),
            split(encode(two), DEFAULT_ITEM_LIMIT),
        )
        # Two writers, their chunk writes interleaved by hand.
        for k1, v1, k2, v2 in zip(m1.chunk_keys(key), c1, m2.chunk_keys(key), c2, strict=True):
            self.server.set(k1.encode(), v1)
            self.server.set(k2.encode(), v2)
        self.server.set(key.encode(), m1.to_bytes())
        self.assertEqual(await store.get(key), one)
        self.server.set(key.encode(), m2.to_bytes())
        self.assertEqual(await store.get(key), two)
        # A chunk of the other generation where one of this one should be: absent.
        self.server.set(m2.chunk_keys(key)[1].encode(), c1[1])
        self.assertIsNone(await store.get(key))
        # The same with a manifest that lies about the length.
        self.server.set(key.encode(), attrs.evolve(m1, length=m1.length - 1).to_bytes())
        self.assertIsNone(await store.get(key))

    async def test_racing_writers_and_a_reader_never_see_a_mixed_value(self) -> None:
        here, there = await self.ready_store(), await self.ready_store()
        key = self.unique_key(id="1")
        one, two = sample_entry(os.urandom(2 * MIB)), sample_entry(os.urandom(2 * MIB))
        for _ in range(8):
            writes: list[Deferred[Any]] = [
                here.put(key, one, LONG_TTL),
                there.put(key, two, LONG_TTL),
            ]
            reads = [here.get(key) for _ in range(4)]
            results = await defer.gatherResults(writes + reads)
            self.assertEqual(results[:2], [True, True])
            for got in results[2:]:
                self.assertIn(got, (None, one, two))
            self.assertIn(await there.get(key), (one, two))

    async def test_racing_fenced_writers_detect_each_other(self) -> None:
        store = await self.ready_store()
        key = self.unique_key(id="1")
        token = await store.acquire_lease(key, LONG_TTL)
        await store.put(key, sample_entry(b"first"), LONG_TTL, lease=token)
        results = await defer.gatherResults(
            [
                store.put(key, sample_entry(os.urandom(2 * MIB)), LONG_TTL, lease=token),
                store.put(key, sample_entry(b"user"), LONG_TTL),
            ]
        )
        self.assertEqual(results[1], True)
        got = await store.get(key)
        # The unfenced write broke the lease: the fenced one lost, or came first.
        self.assertEqual(got, sample_entry(b"user"))


BAD_KEYS = [
    "rfdtest:job:v1:id=1\r\nflush_all",
    "rfdtest:job:v1:id=1\r\nset canary 0 0 3\r\nbad",
    "rfdtest:job:v1:id=1\n",
    "rfdtest:job:v1:id=1\r",
    "rfdtest:job:v1:id=1 2",
    "rfdtest:job:v1:id=\t1",
    "rfdtest:job:v1:id=\x001",
    "rfdtest:job:v1:id=\x7f",
    "rfdtest:job:v1:id=caf\u00e9",
    "rfdtest:job:v1:id=" + "x" * 233,
    "",
]


class MemcachedKeyTests(MemcachedTestCase):
    """Keys that could inject commands or desynchronise a connection never reach the wire."""

    async def test_unsafe_keys_are_refused_and_never_sent(self) -> None:
        server = self.own_server()
        store = await self.ready_store(server)
        self.assertEqual(server.set(b"canary", b"alive"), b"STORED")
        before = server.stats()
        calls: list[Callable[[str], Deferred[Any]]] = [
            lambda key: store.get(key),
            lambda key: store.put(key, sample_entry(), LONG_TTL),
            lambda key: store.put(key, sample_entry(os.urandom(2 * MIB)), LONG_TTL),
            lambda key: store.put(key, sample_entry(), LONG_TTL, lease="0" * 32),
            lambda key: store.put(key, sample_entry(), 0),
            lambda key: store.delete(key),
            lambda key: store.acquire_lease(key, LONG_TTL),
            lambda key: store.release_lease(key, "0" * 32),
        ]
        for key in BAD_KEYS:
            for call in calls:
                with self.assertRaises(ValueError):
                    await call(key)
        after = server.stats()
        for stat in (
            "cmd_flush",
            "cmd_set",
            "cmd_get",
            "cmd_touch",
            "delete_hits",
            "delete_misses",
        ):
            self.assertEqual(after[stat], before[stat], stat)
        self.assertEqual(after["cmd_flush"], "0")
        self.assertEqual(server.get(b"canary"), b"alive")
        key = self.unique_key(id="1")
        await store.put(key, sample_entry(), LONG_TTL)
        self.assertEqual(await store.get(key), sample_entry())

    async def test_longest_memcached_key_works_with_hashed_lease_and_chunk_keys(self) -> None:
        store = await self.ready_store()
        key = f"{NAMESPACE}:job:v1:id=" + "x" * (250 - len(NAMESPACE) - 11)
        self.assertEqual(len(key), 250)
        token = await store.acquire_lease(key, LONG_TTL)
        self.assertIn(":lease:#", lease_key(key))
        entry = sample_entry(os.urandom(2 * MIB))
        self.assertIs(await store.put(key, entry, LONG_TTL, lease=token), True)
        self.assertEqual(await store.get(key), entry)
        self.assertIs(await store.delete(key), True)


class MemcachedPoolTests(MemcachedTestCase):
    """Several servers: keys spread by consistent hashing, dead servers skipped."""

    async def eventually(self, call: Callable[[], Deferred[Any]], within: float = READY) -> None:
        """Retry C{call} while it fails with StoreUnavailable, for at most C{within} seconds."""
        deadline = time.monotonic() + within
        while True:
            try:
                await call()
                return
            except StoreUnavailable:
                if time.monotonic() > deadline:
                    raise
                await sleep(0.05)

    def holder(self, servers: list[MemcachedServer], key: str) -> MemcachedServer:
        """The one server that holds C{key}, read without the store."""
        holders = [s for s in servers if s.running and s.get(key.encode()) is not None]
        self.assertEqual(len(holders), 1, key)
        return holders[0]

    async def test_keys_spread_over_every_server_as_the_ring_says(self) -> None:
        servers = [self.own_server() for _ in range(3)]
        store = await self.ready_store(*servers)
        ring = Ring([(s.address, s) for s in servers])
        for i in range(30):
            key = self.unique_key(id=str(i))
            await store.put(key, sample_entry(), LONG_TTL)
            self.assertIs(self.holder(servers, key), ring.server(key.encode()))
        for server in servers:
            self.assertGreater(int(server.stats()["curr_items"]), 3)

    async def test_a_killed_server_is_skipped_and_every_call_answers_in_time(self) -> None:
        servers = [self.own_server() for _ in range(3)]
        store = await self.ready_store(*servers, timeout=1.0)
        keys = [self.unique_key(id=str(i)) for i in range(24)]
        big = sample_entry(os.urandom(2 * MIB))
        written: dict[str, Any] = {}
        for i in range(96):
            if i == 30:
                servers[1].kill()
            key = keys[i % len(keys)]
            entry = big if i % 8 == 0 else sample_entry(str(i).encode())
            start = time.monotonic()
            self.assertIs(await store.put(key, entry, LONG_TTL), True)
            written[key] = entry
            got = await store.get(keys[(i * 7) % len(keys)])
            self.assertLess(time.monotonic() - start, 2 * 1.0 + 0.3)
            self.assertIn(got, (None, written.get(keys[(i * 7) % len(keys)])))
        # Since the kill, every key has been written again, to live servers only.
        for key in keys:
            self.assertEqual(await store.get(key), written[key])
        await store.ping()

    async def test_a_call_whose_server_dies_under_it_goes_to_the_next_server(self) -> None:
        servers = [self.own_server() for _ in range(2)]
        store = await self.ready_store(*servers)
        ring = Ring([(s.address, s) for s in servers])
        keys = (self.unique_key(id=str(i)) for i in range(100))
        key = next(k for k in keys if ring.server(k.encode()) is servers[0])
        await store.put(key, sample_entry(), LONG_TTL)
        servers[0].kill()  # the store has not heard of it yet: the get goes there first
        self.assertIsNone(await store.get(key))
        self.assertIs(await store.put(key, sample_entry(), LONG_TTL), True)
        self.assertEqual(servers[1].get(key.encode()), encode(sample_entry()))
        self.assertEqual(await store.get(key), sample_entry())

    async def test_a_hung_server_costs_one_timeout_then_is_skipped(self) -> None:
        servers = [self.own_server() for _ in range(2)]
        store = await self.ready_store(*servers, timeout=0.5)
        ring = Ring([(s.address, s) for s in servers])
        key = next(
            k
            for k in (self.unique_key(id=str(i)) for i in range(100))
            if ring.server(k.encode()) is servers[0]
        )
        servers[0].pause()
        start = time.monotonic()
        with self.assertRaises(StoreUnavailable):
            await store.get(key)
        self.assertLess(time.monotonic() - start, 0.5 + 0.3)
        self.assertIs(await store.put(key, sample_entry(), LONG_TTL), True)
        self.assertEqual(await store.get(key), sample_entry())
        self.assertEqual(servers[1].get(key.encode()), encode(sample_entry()))
        servers[0].resume()

    async def test_a_restarted_server_is_used_again_after_its_dead_period(self) -> None:
        servers = [self.own_server() for _ in range(2)]
        store = await self.ready_store(*servers, dead_min=1.0)
        ring = Ring([(s.address, s) for s in servers])
        keys = [self.unique_key(id=str(i)) for i in range(100)]
        key = next(k for k in keys if ring.server(k.encode()) is servers[0])
        servers[0].restart()
        await store.ready().addTimeout(READY, reactor)
        await store.put(key, sample_entry(b"while dead"), LONG_TTL)
        self.assertIs(self.holder(servers, key), servers[1])
        await sleep(1.0)
        await store.put(key, sample_entry(b"back"), LONG_TTL)
        self.assertEqual(servers[0].get(key.encode()), encode(sample_entry(b"back")))

    async def test_restarted_server_serves_again_through_the_same_store(self) -> None:
        server = self.own_server()
        store = await self.ready_store(server)
        key = self.unique_key(id="1")
        await store.put(key, sample_entry(), LONG_TTL)
        server.restart()
        start = time.monotonic()
        await self.eventually(store.ping)
        self.assertLess(time.monotonic() - start, 3.0)
        await self.eventually(lambda: store.put(key, sample_entry(b"again"), LONG_TTL))
        self.assertEqual(await store.get(key), sample_entry(b"again"))

    async def test_hung_server_fails_every_call_within_the_deadline(self) -> None:
        server = self.own_server()
        store = await self.ready_store(server, timeout=0.5)
        key = self.unique_key(id="1")
        server.pause()
        waiter = store.wait_for_change(key, 0.3)
        calls: list[Callable[[], Deferred[Any]]] = [
            lambda: store.ping(),
            lambda: store.get(key),
            lambda: store.put(key, sample_entry(), LONG_TTL),
            lambda: store.put(key, sample_entry(os.urandom(2 * MIB)), LONG_TTL),
            lambda: store.put(key, sample_entry(), LONG_TTL, lease="0" * 32),
            lambda: store.delete(key),
            lambda: store.acquire_lease(key, LONG_TTL),
            lambda: store.release_lease(key, "0" * 32),
        ]
        for call in calls:
            start = time.monotonic()
            with self.assertRaises(StoreUnavailable) as raised:
                await call()
            self.assertLess(time.monotonic() - start, 0.5 + 0.3)
            self.assertNotIn("\n", raised.exception.message)
        self.assertIsNone(self.successResultOf(waiter))
        server.resume()
        await self.eventually(store.ping)

    async def test_ping_answers_while_one_server_does(self) -> None:
        servers = [self.own_server() for _ in range(2)]
        store = await self.ready_store(*servers)
        servers[0].kill()
        await self.eventually(store.ping)
        servers[1].kill()
        await sleep(0.2)
        with self.assertRaises(StoreUnavailable):
            await store.ping()

    async def test_calls_before_start_fail_at_once(self) -> None:
        store = MemcachedStore(reactor, ((self.server.host, self.server.port),))
        with self.assertRaises(StoreUnavailable):
            await store.ping()
        with self.assertRaises(StoreUnavailable):
            await store.get(self.unique_key(id="1"))

    async def test_stop_fires_waiters_and_leaves_no_delayed_call(self) -> None:
        await sleep(0)  # trial's own timeout is scheduled by now
        before = set(reactor.getDelayedCalls())
        servers = [self.own_server() for _ in range(2)]
        store = await self.ready_store(self.server, *servers)
        servers[1].kill()  # one server being retried
        key = self.unique_key(id="1")
        timed_out = store.wait_for_change(key, 0.01)
        cancelled = store.wait_for_change(key, LONG_TTL)
        cancelled.cancel()
        woken = store.wait_for_change(key, LONG_TTL)
        await store.put(key, sample_entry(os.urandom(2 * MIB)), LONG_TTL)
        pending = store.wait_for_change(key, LONG_TTL)
        await store.get(key)
        await sleep(0.3)
        await store.stopService()
        self.assertIsNone(self.successResultOf(timed_out))
        self.assertIsNone(self.successResultOf(woken))
        self.assertIsNone(self.successResultOf(pending))
        self.failureResultOf(cancelled, CancelledError)
        self.assertEqual(set(reactor.getDelayedCalls()) - before, set())
        self.assertEqual(store._waiters.keys(), set())


class ConnectionTests(SynchronousTestCase):
    """Replies out of step with the requests drop the connection (no server needed)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemcachedStore(self.clock, (("127.0.0.1", 11211),))
        Service.startService(self.store)  # running, without connecting
        self.server = self.store._pool[0]
        self.transport = StringTransport()
        self.connection = _Connection(self.store, self.server)
        self.connection.makeConnection(self.transport)
        self.assertEqual(self.transport.value(), b"stats settings\r\n")
        self.connection.dataReceived(b"STAT item_size_max 2097152\r\nSTAT other x\r\nEND\r\n")
        self.assertIs(self.server.connection, self.connection)
        self.assertEqual(self.server.item_size_max, 2 * MIB)
        self.transport.clear()

    def assertDropped(self, *ds: Deferred[Any]) -> None:
        for d in ds:
            self.failureResultOf(d, _OutOfStep)
        self.assertTrue(self.transport.disconnected)
        self.assertTrue(self.connection.broken)

    def test_client_error_fails_every_pending_request_and_drops_the_connection(self) -> None:
        first, second = self.connection.get(b"a"), self.connection.get(b"b")
        self.connection.dataReceived(b"CLIENT_ERROR bad command line format\r\n")
        self.assertDropped(first, second)
        # What comes after is never paired with anything.
        self.connection.dataReceived(b"VALUE b 0 1\r\nx\r\nEND\r\n")
        self.assertEqual(self.transport.value(), b"get a\r\nget b\r\n")

    def test_error_drops_the_connection(self) -> None:
        d = self.connection.set(b"a", b"x")
        self.connection.dataReceived(b"ERROR\r\n")
        self.assertDropped(d)

    def test_a_reply_of_another_command_drops_the_connection(self) -> None:
        d = self.connection.get(b"a")
        self.connection.dataReceived(b"STORED\r\n")
        self.assertDropped(d)

    def test_a_value_of_another_key_drops_the_connection(self) -> None:
        d = self.connection.get(b"a")
        self.connection.dataReceived(b"VALUE z 0 1\r\nx\r\nEND\r\n")
        self.assertDropped(d)

    def test_a_number_drops_the_connection(self) -> None:
        d = self.connection.delete(b"a")
        self.connection.dataReceived(b"42\r\n")
        self.assertDropped(d)

    def test_a_reply_to_nothing_drops_the_connection(self) -> None:
        self.connection.dataReceived(b"END\r\n")
        self.assertTrue(self.transport.disconnected)

    def test_server_error_to_a_set_fails_that_set_only(self) -> None:
        stored, got = self.connection.set(b"a", b"x"), self.connection.get(b"a")
        self.connection.dataReceived(b"SERVER_ERROR out of memory storing object\r\nEND\r\n")
        self.failureResultOf(stored, ServerError)
        self.assertEqual(self.successResultOf(got), (0, None))
        self.assertFalse(self.transport.disconnected)

    def test_server_error_to_a_get_drops_the_connection(self) -> None:
        d = self.connection.get(b"a")
        self.connection.dataReceived(b"SERVER_ERROR out of memory writing get response\r\n")
        self.assertDropped(d)


class LayoutFunctionTests(SynchronousTestCase):
    """The pure functions of memcached_layout."""

    def test_check_key_takes_printable_ascii_up_to_250_bytes(self) -> None:
        self.assertEqual(check_key("rfd:a:v1:x=%20"), b"rfd:a:v1:x=%20")
        self.assertEqual(len(check_key("k" * 250)), 250)
        for key in BAD_KEYS:
            with self.assertRaises(ValueError) as raised:
                check_key(key)
            self.assertNotIn("\n", str(raised.exception))

    def test_derived_keys_insert_their_kind_after_the_namespace(self) -> None:
        key = "rfd:tweets:v1:username=bob"
        self.assertEqual(lease_key(key), "rfd:lease:tweets:v1:username=bob")
        self.assertEqual(
            chunk_key(key, "ab" * 16, 3), f"rfd:chunk:{'ab' * 16}:3:tweets:v1:username=bob"
        )

    def test_derived_keys_over_250_bytes_hash_the_rest(self) -> None:
        key = "rfd:" + "x" * 246
        rest = "x" * 246
        digest = hashlib.sha256(rest.encode()).hexdigest()
        self.assertEqual(lease_key(key), f"rfd:lease:#{digest}")
        self.assertEqual(chunk_key(key, "0" * 32, 12), f"rfd:chunk:{'0' * 32}:12:#{digest}")
        longest = entry_key("n" * 64, "j" * 64, 10**9, {"q": "x" * 300})
        for derived in (lease_key(longest), chunk_key(longest, "f" * 32, 99_999)):
            self.assertLessEqual(len(check_key(derived)), 250)

    def test_exptime_rounds_up_adds_a_tick_and_goes_absolute_after_30_days(self) -> None:
        now = 1_700_000_000.5
        self.assertEqual(exptime(1.0, now), 2)
        self.assertEqual(exptime(0.001, now), 2)
        self.assertEqual(exptime(59.5, now), 61)
        self.assertEqual(exptime(2_591_999, now), 2_592_000)
        self.assertEqual(exptime(2_592_000, now), 1_700_000_001 + 2_592_001)
        self.assertEqual(exptime(40 * 86_400.5, now), 1_700_000_001 + 3_456_021)

    def test_manifest_round_trips_and_refuses_anything_else(self) -> None:
        manifest, chunks = split(b"x" * 10_000, MIN_ITEM_LIMIT)
        self.assertEqual(len(chunks), 4)
        self.assertEqual(b"".join(chunks), b"x" * 10_000)
        self.assertEqual(parse_manifest(manifest.to_bytes()), manifest)
        self.assertIsNone(manifest.check(b"x" * 10_000))
        self.assertIsNotNone(manifest.check(b"x" * 9_999 + b"y"))
        self.assertIsNotNone(manifest.check(b"x" * 9_999))
        for bad in [
            manifest.to_bytes()[:-1],
            manifest.to_bytes().replace(b"manifest 1", b"manifest 2"),
            manifest.to_bytes().upper(),
            manifest.to_bytes() + b"x",
            b"manifest 1 x 1 1 x\n",
        ]:
            with self.assertRaises(ValueError):
                parse_manifest(bad)


class RingTests(SynchronousTestCase):
    """Ketama: keys spread evenly, and a new server takes about its share only."""

    KEYS = [f"rfd:job:v1:id={i}".encode() for i in range(20_000)]

    def owners(self, names: list[str]) -> list[str]:
        ring = Ring([(name, name) for name in names])
        return [ring.server(key) for key in self.KEYS]

    def test_keys_spread_roughly_evenly(self) -> None:
        names = [f"10.0.0.{i}:11211" for i in range(1, 5)]
        owners = self.owners(names)
        for name in names:
            share = owners.count(name) / len(owners)
            self.assertTrue(0.18 < share < 0.32, (name, share))

    def test_adding_a_server_moves_about_one_in_n_plus_one_keys_all_to_it(self) -> None:
        names = [f"10.0.0.{i}:11211" for i in range(1, 4)]
        before, after = self.owners(names), self.owners([*names, "10.0.0.9:11211"])
        moved = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
        self.assertTrue(0.17 < len(moved) / len(self.KEYS) < 0.33, len(moved))
        self.assertTrue(all(b == "10.0.0.9:11211" for _, b in moved))

    def test_walk_gives_every_server_once_starting_with_the_owner(self) -> None:
        ring = Ring([(f"h{i}:1", i) for i in range(5)])
        for key in self.KEYS[:100]:
            order = list(ring.walk(key))
            self.assertEqual(sorted(order), list(range(5)))
            self.assertEqual(order[0], ring.server(key))

    def test_the_ring_is_the_one_docs_memcached_md_describes(self) -> None:
        """The worked example of docs/memcached.md, and its reference code, agree with Ring."""
        names = ["10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211"]
        self.assertEqual(key_point(b"rfd:tweets:v1:username=bob"), 471098131)
        self.assertEqual(
            Ring([(n, n) for n in names]).server(b"rfd:tweets:v1:username=bob"), names[1]
        )

        # The reference implementation of docs/memcached.md, as printed there.
        points = sorted(
            (int.from_bytes(digest[j : j + 4], "little"), name)
            for name in names
            for i in range(40)
            for digest in [hashlib.md5(f"{name}-{i}".encode()).digest()]
            for j in range(0, 16, 4)
        )

        def server_of(key: bytes) -> str:
            point = int.from_bytes(hashlib.md5(key).digest()[:4], "little")
            return points[bisect.bisect_left(points, (point, "")) % len(points)][1]

        self.assertEqual([server_of(key) for key in self.KEYS], self.owners(names))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("memcached://127.0.0.1:11211", ((("127.0.0.1", 11211),), DEFAULT_ITEM_LIMIT)),
        ("memcached://cache", ((("cache", 11211),), DEFAULT_ITEM_LIMIT)),
        ("memcached://cache/", ((("cache", 11211),), DEFAULT_ITEM_LIMIT)),
        ("MEMCACHED://Cache.Example:1", ((("cache.example", 1),), DEFAULT_ITEM_LIMIT)),
        (
            "memcached://a:11211,b:11212,[::1]:11213?item_limit=2097152",
            ((("a", 11211), ("b", 11212), ("::1", 11213)), 2 * MIB),
        ),
        ("memcached://a:1?item_limit=4096", ((("a", 1),), 4096)),
    ],
)
def test_memcached_store_from_url(
    url: str, expected: tuple[tuple[tuple[str, int], ...], int]
) -> None:
    store = memcached_store_from_url(url, "ns", reactor)
    assert (store.servers, store.item_limit) == expected
    assert store.namespace == "ns"
    assert store.reactor is reactor
    assert not store.running


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://host:6379/0", "must start with memcached://"),
        ("memcached://", "names no server"),
        ("memcached://?item_limit=4096", "names no server"),
        ("memcached://a:1,,b:2", "has an empty server in its list"),
        ("memcached://a:1,", "has an empty server in its list"),
        ("memcached://a:port", "needs a port from 1 to 65535"),
        ("memcached://a:0", "needs a port from 1 to 65535"),
        ("memcached://a:65536", "needs a port from 1 to 65535"),
        ("memcached://a:", "needs a port from 1 to 65535"),
        ("memcached://a:-1", "needs a port from 1 to 65535"),
        ("memcached://::1:11211", "is not a host name or address"),
        ("memcached://[::1", "is not [IPv6 address]:port"),
        ("memcached://[::1]x", "is not [IPv6 address]:port"),
        ("memcached://a b:1", "is not a host name or address"),
        ("memcached://user:pw@a:1", "takes no user name or password"),
        ("memcached://a:1/0", "takes no path"),
        ("memcached://a:1#x", "takes no fragment"),
        ("memcached://a:1,a:1", "names a:1 twice"),
        ("memcached://a:1?timeout=1", "unknown parameter 'timeout'"),
        ("memcached://a:1?item_limit=1", "item_limit must be a number of bytes from 4096"),
        ("memcached://a:1?item_limit=2m", "item_limit must be a number of bytes"),
        ("memcached://a:1?item_limit=", "item_limit must be a number of bytes"),
        ("memcached://a:1?item_limit=1073741825", "item_limit must be a number of bytes"),
        ("memcached://a:1?item_limit=4096&item_limit=4096", "item_limit is given twice"),
    ],
)
def test_memcached_store_from_url_refuses(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        memcached_store_from_url(url, "ns", reactor)
    assert "\n" not in str(raised.value)
    assert raised.value.__cause__ is None
